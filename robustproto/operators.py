"""Layers as linear operators: the power iteration the ``spectral-norm`` regularizer runs on them, and an upper
bound of a convolution's spectral norm that never falls below the truth.

- ``spectral-norm`` runs one step of :func:`power_iteration_step` per training step on a :class:`LayerOperator`
  (the kernel as a matrix, or the convolution as the operator it is at its input size) and penalises the
  differentiable estimate :func:`rayleigh_sigma`;
- :func:`robustproto.lipschitz_upper_bound` needs numbers that are never too small, so it uses exact norms
  instead of power iteration, which only ever approaches σ from below: the SVD of a linear layer's matrix, and
  for a convolution :func:`conv2d_norm_bound`, the norm of the circular convolution its zero-padded operator is
  a block of.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .errors import UsageError

__all__ = ["MODES", "LayerOperator", "adopt_saved_shapes", "computes_like", "conv2d_norm_bound", "power_iteration_step",
           "rayleigh_sigma"]

MODES = ("reshape", "operator")


def computes_like(module: nn.Module, base: type) -> bool:
    """True when ``module`` computes exactly what ``base`` computes (subclasses such as timm's
    ``Conv2dSame`` or ``StdConv2d`` change the forward, so their weight is not the operator)."""
    return isinstance(module, base) and type(module).forward is base.forward


class LayerOperator:
    """A linear or convolutional layer, bias dropped, as a linear map ``A`` for power iteration.

    ``mode="reshape"`` sees a convolution kernel ``(out, in, kh, kw)`` as the matrix ``(out, in·kh·kw)``
    (Yoshida & Miyato's choice); ``mode="operator"`` sees it as the map it applies to an input of
    ``input_hw`` pixels (zero padding, stride, dilation and groups included), whose adjoint is the
    transposed convolution. A linear layer is its weight matrix in both modes. ``u_shape`` and
    ``v_shape`` are the shapes of the left and right singular vectors.
    """

    def __init__(self, module: nn.Module, mode: str = "reshape", input_hw: Sequence[int] | None = None):
        if mode not in MODES:
            raise UsageError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        problem = self.unsupported(module, mode)
        if problem:
            raise NotImplementedError(problem)
        self.module = module
        if isinstance(module, nn.Linear) or mode == "reshape":
            self.kind = "matrix"
            self.v_shape, self.u_shape = (module.weight[0].numel(),), (module.weight.shape[0],)
        else:
            if input_hw is None:
                raise UsageError("operator mode needs the layer's input size (input_hw)")
            self.kind = "conv2d"
            h, w = (int(s) for s in input_hw)
            self.v_shape, self.u_shape = (1, module.in_channels, h, w), (1, *self._out_shape(h, w))

    @staticmethod
    def unsupported(module: nn.Module, mode: str) -> str | None:
        """Why ``module`` has no ``mode`` operator, or ``None`` when it has one."""
        if isinstance(module, nn.Linear) or (mode == "reshape" and isinstance(module, nn.modules.conv._ConvNd)):
            return None
        if mode == "operator" and computes_like(module, nn.Conv2d):
            if module.padding_mode == "zeros" and not isinstance(module.padding, str):
                return None
            return (f"operator mode supports zero padding given as integers, not padding={module.padding!r} "
                    f"padding_mode={module.padding_mode!r}; use mode=reshape")
        return (f"no {mode}-mode operator for {type(module).__name__}: supported are nn.Linear and "
                f"{'any convolution' if mode == 'reshape' else 'nn.Conv2d (not subclasses that change its forward)'}")

    def _out_shape(self, h: int, w: int) -> tuple[int, int, int]:
        m = self.module
        size = [(n + 2 * p - d * (k - 1) - 1) // s + 1
                for n, p, d, k, s in zip((h, w), m.padding, m.dilation, m.kernel_size, m.stride)]
        if min(size) < 1:
            raise UsageError(f"input {h}×{w} is too small for {m}")
        return (m.out_channels, *size)

    def apply(self, v: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """``A v`` for the layer with weight ``weight``."""
        if self.kind == "matrix":
            return weight.flatten(1) @ v
        m = self.module
        return F.conv2d(v, weight, None, m.stride, m.padding, m.dilation, m.groups)

    def adjoint(self, u: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """``Aᵀ u``: for a convolution, the transposed convolution back to the input size."""
        if self.kind == "matrix":
            return weight.flatten(1).t() @ u
        m = self.module
        expected = self.v_shape[2:]
        natural = [(n - 1) * s - 2 * p + d * (k - 1) + 1
                   for n, s, p, d, k in zip(u.shape[2:], m.stride, m.padding, m.dilation, m.kernel_size)]
        output_padding = tuple(e - n for e, n in zip(expected, natural))  # rows a stride skipped
        return F.conv_transpose2d(u, weight, None, m.stride, m.padding, output_padding, m.groups, m.dilation)


def adopt_saved_shapes(module: nn.Module, state_dict: dict, prefix: str) -> None:
    """Give ``module``'s buffers the shapes they have in ``state_dict``, before ``load_state_dict`` copies them in.

    Power-iteration vectors of a convolution are sized by the input the layer sees, which a checkpoint may have
    seen at another size than the module now holds; taking the saved shape lets the load succeed, and the vector is
    restarted at its next use if the input size differs then. Call it first in ``_load_from_state_dict``.
    """
    for name, buf in list(module._buffers.items()):
        saved = state_dict.get(prefix + name)
        if saved is not None and buf is not None and saved.shape != buf.shape:
            module._buffers[name] = torch.empty_like(saved, device=buf.device)


def _normalized(t: torch.Tensor) -> torch.Tensor:
    return t / t.norm().clamp_min(1e-12)


@torch.no_grad()
def power_iteration_step(op: LayerOperator, weight: torch.Tensor,
                         u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One power-iteration step on ``AᵀA`` from the left vector ``u``: ``v = Aᵀu/‖·‖``, ``u' = Av/‖·‖``;
    returns ``(u', v)``."""
    v = _normalized(op.adjoint(u, weight))
    return _normalized(op.apply(v, weight)), v


def rayleigh_sigma(op: LayerOperator, weight: torch.Tensor, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``σ ≈ uᵀ A v`` for unit ``u``, ``v``: a lower estimate of the spectral norm, differentiable in ``weight``."""
    return (u * op.apply(v, weight)).sum()


def _kernel_as_dense(conv: nn.Conv2d, weight: torch.Tensor) -> torch.Tensor:
    """The kernel ``(out, in, kh', kw')`` with groups expanded to zero blocks and dilation to zero taps."""
    out_ch, per_group, kh, kw = weight.shape
    dh, dw = conv.dilation
    dense = weight.new_zeros(out_ch, conv.in_channels, dh * (kh - 1) + 1, dw * (kw - 1) + 1)
    group_out = out_ch // conv.groups
    for g in range(conv.groups):
        rows = slice(g * group_out, (g + 1) * group_out)
        dense[rows, g * per_group:(g + 1) * per_group, ::dh, ::dw] = weight[rows]
    return dense


def _polyphase(kernel: torch.Tensor, stride: Sequence[int], padded_hw: Sequence[int]
               ) -> tuple[torch.Tensor, list[int]]:
    """A stride-s convolution as a stride-1 one on the polyphase components of its padded input.

    ``y[i] = Σ_u w[u]·x[s·i + u]``; with ``u = s·a + b`` (``0 ≤ b < s``) this is ``Σ_b Σ_a w[s·a + b]·X_b[i + a]``,
    ``X_b[j] = x[s·j + b]``: a stride-1 correlation of the ``s²·in`` polyphase channels, which only permute the
    (zero-padded) input's entries, with a kernel of ``ceil(k/s)`` taps. Returns that kernel and the polyphase
    input's size, ``ceil(n/s)`` per dimension (the padded input filled up with zeros to a multiple of ``s``).
    """
    sh, sw = stride
    kh, kw = kernel.shape[2:]
    kernel = F.pad(kernel, (0, -kw % sw, 0, -kh % sh))  # zero taps up to a multiple of the stride
    out, cin, kh, kw = kernel.shape
    kernel = kernel.view(out, cin, kh // sh, sh, kw // sw, sw).permute(0, 1, 3, 5, 2, 4)
    return kernel.reshape(out, cin * sh * sw, kh // sh, kw // sw), [-(-n // st) for n, st in zip(padded_hw, stride)]


@torch.no_grad()
def conv2d_norm_bound(conv: nn.Conv2d, input_hw: Sequence[int], weight: torch.Tensor | None = None) -> float:
    """An upper bound of the spectral norm of ``conv`` (bias dropped) on inputs of ``input_hw`` pixels.

    Embed the input in an ``N₁ × N₂`` grid with ``Nᵢ ≥ nᵢ + 2·padᵢ + kernelᵢ``: no tap wraps around, so
    the zero-padded, possibly strided convolution is a block (a subset of rows and columns) of the
    circular convolution on that grid, and a block's norm is at most the whole matrix's. The circular
    convolution is block-diagonalised by the 2-D DFT (Sedghi, Gupta & Long 2019), so its norm is the
    largest singular value of the ``out × in`` matrices ``Ŵ(ω)`` over the grid's frequencies, computed
    in float64 (the largest eigenvalue of the smaller Gram matrix). A strided convolution is first rewritten
    as a stride-1 one on the polyphase components of its input (:func:`_polyphase`, a permutation of the
    input's entries), so the stride is in the bound. The bound is tight up to boundary effects (2–3 % above
    the norm on 12×12 maps, 4–8 % on 8×8).
    """
    if not computes_like(conv, nn.Conv2d) or conv.padding_mode != "zeros" or isinstance(conv.padding, str):
        raise NotImplementedError(
            f"no norm bound for {type(conv).__name__} with padding={conv.padding!r} "
            f"padding_mode={getattr(conv, 'padding_mode', '?')!r}: supported is nn.Conv2d with integer zero padding")
    kernel = _kernel_as_dense(conv, (conv.weight if weight is None else weight).detach().double())
    padded = [n + 2 * p for n, p in zip(input_hw, conv.padding)]
    if tuple(conv.stride) != (1, 1):
        kernel, padded = _polyphase(kernel, conv.stride, padded)
    grid = [n + k for n, k in zip(padded, kernel.shape[2:])]
    # a real kernel has Ŵ(−ω) = conj Ŵ(ω), with the same singular values: half the spectrum suffices
    spectrum = torch.fft.rfft2(kernel, s=grid).permute(2, 3, 0, 1)  # (N1, N2//2 + 1, out, in)
    gram = spectrum @ spectrum.mH if spectrum.shape[-2] <= spectrum.shape[-1] else spectrum.mH @ spectrum
    return math.sqrt(float(torch.linalg.eigvalsh(gram)[..., -1].max().clamp_min(0)))
