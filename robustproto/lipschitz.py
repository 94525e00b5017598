"""Layers as linear operators: power iteration for their spectral norms, and a certified Lipschitz bound.

Two consumers share this module:

- the ``spectral-norm`` regularizer runs one step of :func:`power_iteration_step` per training step on a
  :class:`LayerOperator` (the kernel as a matrix, or the convolution as the operator it is at its input
  size) and penalises the differentiable estimate :func:`rayleigh_sigma`;
- :func:`lipschitz_upper_bound` (used by ``certify``) needs numbers that are never too small, so it uses
  exact norms instead of power iteration, which only ever approaches σ from below: the SVD of a linear
  layer's matrix, and for a convolution the norm of the circular convolution its zero-padded operator is
  a block of (:func:`conv2d_norm_bound`).
"""

from __future__ import annotations

import math
import operator
from typing import TYPE_CHECKING, Sequence

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    from .model import ProtoModel

__all__ = ["LayerOperator", "conv2d_norm_bound", "lipschitz_upper_bound", "power_iteration_step", "rayleigh_sigma"]

MODES = ("reshape", "operator")
# relative margin on the product of float64 norms: their rounding error is ~1e-13, so this only guards
# against the accumulated float error of ~20 factors, with room to spare
SAFETY = 1.0 + 1e-6


def _plain(module: nn.Module, base: type) -> bool:
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
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        problem = self.unsupported(module, mode)
        if problem:
            raise NotImplementedError(problem)
        self.module = module
        if isinstance(module, nn.Linear) or mode == "reshape":
            self.kind = "matrix"
            self.v_shape, self.u_shape = (module.weight[0].numel(),), (module.weight.shape[0],)
        else:
            if input_hw is None:
                raise ValueError("operator mode needs the layer's input size (input_hw)")
            self.kind = "conv2d"
            h, w = (int(s) for s in input_hw)
            self.v_shape, self.u_shape = (1, module.in_channels, h, w), (1, *self._out_shape(h, w))

    @staticmethod
    def unsupported(module: nn.Module, mode: str) -> str | None:
        """Why ``module`` has no ``mode`` operator, or ``None`` when it has one."""
        if isinstance(module, nn.Linear) or (mode == "reshape" and isinstance(module, nn.modules.conv._ConvNd)):
            return None
        if mode == "operator" and _plain(module, nn.Conv2d):
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
            raise ValueError(f"input {h}×{w} is too small for {m}")
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


@torch.no_grad()
def conv2d_norm_bound(conv: nn.Conv2d, input_hw: Sequence[int], weight: torch.Tensor | None = None) -> float:
    """An upper bound of the spectral norm of ``conv`` (bias dropped) on inputs of ``input_hw`` pixels.

    Embed the input in an ``N₁ × N₂`` grid with ``Nᵢ ≥ nᵢ + 2·padᵢ + kernelᵢ``: no tap wraps around, so
    the zero-padded, possibly strided convolution is a block (a subset of rows and columns) of the
    circular convolution on that grid, and a block's norm is at most the whole matrix's. The circular
    convolution is block-diagonalised by the 2-D DFT (Sedghi, Gupta & Long 2019), so its norm is the
    largest singular value of the ``out × in`` matrices ``Ŵ(ω)`` over the grid's frequencies, computed
    in float64 (the largest eigenvalue of the smaller Gram matrix). For stride 1 the bound is tight up to
    boundary effects (2–3 % above the norm on 12×12 maps, 4–8 % on 8×8); a stride keeps only some of the
    rows, which the bound does not see (3×3 kernels with stride 2: 1.3–1.6× the norm).
    """
    if not _plain(conv, nn.Conv2d) or conv.padding_mode != "zeros" or isinstance(conv.padding, str):
        raise NotImplementedError(
            f"no norm bound for {type(conv).__name__} with padding={conv.padding!r} "
            f"padding_mode={getattr(conv, 'padding_mode', '?')!r}: supported is nn.Conv2d with integer zero padding")
    kernel = _kernel_as_dense(conv, (conv.weight if weight is None else weight).detach().double())
    grid = [n + 2 * p + k for n, p, k in zip(input_hw, conv.padding, kernel.shape[2:])]
    # a real kernel has Ŵ(−ω) = conj Ŵ(ω), with the same singular values: half the spectrum suffices
    spectrum = torch.fft.rfft2(kernel, s=grid).permute(2, 3, 0, 1)  # (N1, N2//2 + 1, out, in)
    gram = spectrum @ spectrum.mH if spectrum.shape[-2] <= spectrum.shape[-1] else spectrum.mH @ spectrum
    return math.sqrt(float(torch.linalg.eigvalsh(gram)[..., -1].max().clamp_min(0)))


def _matrix_norm(weight: torch.Tensor) -> float:
    return float(torch.linalg.matrix_norm(weight.detach().double().flatten(1), ord=2))


def _batchnorm_scale(bn: nn.modules.batchnorm._BatchNorm) -> torch.Tensor:
    """The per-channel factor ``γ / sqrt(running_var + eps)`` of a BatchNorm in eval mode."""
    if bn.running_var is None:
        raise NotImplementedError(f"{bn} keeps no running statistics (track_running_stats=False): its eval-mode "
                                  "output depends on the batch, so it has no Lipschitz constant per sample")
    scale = 1.0 / torch.sqrt(bn.running_var.double() + bn.eps)
    return scale * bn.weight.detach().double() if bn.weight is not None else scale


@torch.no_grad()
def _pool_schur_bound(pool: nn.Module, input_hw: Sequence[int]) -> float:
    """Schur's test ``‖A‖₂ ≤ sqrt(max row sum · max column sum)`` for an averaging pool (entries ≥ 0)."""
    with torch.enable_grad():
        ones = torch.ones(1, 1, *input_hw, dtype=torch.float64, requires_grad=True)
        rows = pool(ones)
        (columns,) = torch.autograd.grad(rows.sum(), ones)
    return math.sqrt(float(rows.max()) * float(columns.max()))


def _max_windows_per_pixel(kernel: Sequence[int], stride: Sequence[int]) -> int:
    return math.prod(math.ceil(k / s) for k, s in zip(kernel, stride))


def _adaptive_windows_per_pixel(input_hw: Sequence[int], output_hw: Sequence[int]) -> int:
    count = 1
    for n, o in zip(input_hw, output_hw):
        hits = [0] * n
        for i in range(o):  # PyTorch's adaptive windows: [floor(i·n/o), ceil((i+1)·n/o))
            for j in range(math.floor(i * n / o), math.ceil((i + 1) * n / o)):
                hits[j] += 1
        count *= max(hits)
    return count


# the sup of |f'| of 1-input activations (SiLU: 1.0998 at x ≈ 2.4; GELU: 1.1289 at x ≈ 1.41), rounded up
_ACTIVATION_LIPSCHITZ = {nn.ReLU: 1.0, nn.ReLU6: 1.0, nn.Softplus: 1.0, nn.Tanh: 1.0, nn.Hardtanh: 1.0,
                         nn.Sigmoid: 0.25, nn.SiLU: 1.1, nn.GELU: 1.13}
_SHAPE_METHODS = {"flatten", "view", "reshape", "contiguous", "permute", "transpose", "squeeze", "unsqueeze"}
# targets of call_function nodes (functions) and call_method nodes (method names), never of call_module nodes
_SUMS = {operator.add, operator.iadd, torch.add, "add", "add_", operator.sub, torch.sub, "sub"}
_CONCATENATIONS = {torch.cat, torch.concat, torch.concatenate, torch.stack}
_PRODUCTS = {operator.mul, torch.mul, "mul"}
_QUOTIENTS = {operator.truediv, torch.div, "div"}
_NEGATIONS = {operator.neg, torch.neg, "neg"}
_RELU = {torch.relu, F.relu, "relu", "relu_"}


def _is_batchnorm(module: nn.Module) -> bool:
    return type(module) in (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


def _tensor_meta(node):
    return node.meta.get("tensor_meta") if hasattr(node, "meta") else None


def _module_factor(module: nn.Module, node, input_shape: torch.Size) -> float:
    """The Lipschitz constant (L2 → L2) of one eval-mode leaf module at its input shape."""
    for cls, value in _ACTIVATION_LIPSCHITZ.items():
        if type(module) is cls:
            return value
    if type(module) is nn.LeakyReLU:
        return max(1.0, abs(module.negative_slope))
    if type(module) is nn.ELU:
        return max(1.0, module.alpha)
    if type(module) in (nn.Identity, nn.Flatten) or isinstance(module, nn.modules.dropout._DropoutNd):
        return 1.0  # dropout is the identity in eval mode
    if _plain(module, nn.Linear):
        return _matrix_norm(module.weight)
    if isinstance(module, nn.Conv2d):
        return conv2d_norm_bound(module, input_shape[2:])
    if _is_batchnorm(module):
        return float(_batchnorm_scale(module).abs().max())
    if type(module) is nn.MaxPool2d:
        # |max a − max b| ≤ ‖a − b‖ per window; a pixel in m windows counts m times: L = sqrt(m)
        if module.dilation not in (1, (1, 1)):
            raise NotImplementedError(f"no Lipschitz bound for a dilated {module}")
        kernel, stride = nn.modules.utils._pair(module.kernel_size), nn.modules.utils._pair(module.stride)
        return math.sqrt(_max_windows_per_pixel(kernel, stride))
    if type(module) is nn.AdaptiveMaxPool2d:
        return math.sqrt(_adaptive_windows_per_pixel(input_shape[2:], _tensor_meta(node).shape[2:]))
    if type(module) in (nn.AvgPool2d, nn.AdaptiveAvgPool2d):
        return _pool_schur_bound(module, input_shape[2:])
    raise NotImplementedError(
        f"lipschitz_upper_bound does not support {type(module).__module__}.{type(module).__name__} ({node.target}); "
        "supported: Linear, Conv2d, BatchNorm (eval), ReLU-type activations, max/avg pooling, flatten, dropout, "
        "sums, differences, concatenations, products with a number")


def _uses(node) -> list:
    """The nodes ``node`` reads, once per appearance in its (nested) arguments: ``h + h`` reads ``h`` twice
    and ``torch.cat([a, b, a])`` reads ``a`` twice, where ``node.all_input_nodes`` lists each node once."""
    import torch.fx as fx

    uses: list = []
    fx.node.map_arg((node.args, node.kwargs), uses.append)
    return uses


def _graph_bound(module: nn.Module, input_shape: Sequence[int]) -> tuple[float, torch.Size]:
    """Lipschitz bound of an eval-mode module traced with ``torch.fx``, and its output shape.

    Each node gets a bound ``L(node)`` on its Lipschitz constant as a function of the module input, from
    its operands counted once per use (``h + h`` and ``torch.cat([h, h])`` use ``h`` twice):

    - ``Lip(op) · L(input)`` for a one-input op; a product or quotient with a Python number ``c`` scales
      by ``|c|`` or ``1/|c|``, a negation by 1;
    - ``Σ L(operand)`` for a sum or difference (a residual block: ``‖I + F‖ ≤ 1 + Lip(F)``), where an
      operand that broadcasting repeats ``k`` times counts ``sqrt(k) · L(operand)``;
    - ``sqrt(Σ L(operand)²)`` for a concatenation or stack, along any dimension;
    - 0 for what does not depend on the input.

    A convolution or linear layer whose only consumer is a BatchNorm is folded into it (the BatchNorm
    scales its output channels), which is tighter than the product of both norms. Any other op
    that reads the input more than once (``h * h``) raises ``NotImplementedError``.
    """
    import torch.fx as fx
    from torch.fx.passes.shape_prop import ShapeProp

    try:  # inside a Sequential, a torch.nn module given alone stays a leaf (call_module) in the graph
        graph = fx.symbolic_trace(nn.Sequential(module))
    except Exception as exc:
        raise NotImplementedError(f"lipschitz_upper_bound cannot trace {type(module).__name__} with torch.fx "
                                  f"({type(exc).__name__}: {exc})") from None
    param = next(module.parameters(), None)
    example = torch.zeros(1, *input_shape, dtype=param.dtype if param is not None else torch.float32,
                          device=param.device if param is not None else None)
    ShapeProp(graph).propagate(example)
    modules = dict(graph.named_modules())
    bound: dict = {}
    for node in graph.graph.nodes:
        operands = [a for a in _uses(node) if bound.get(a, 0.0) > 0]  # the uses that move with the input
        if node.op == "placeholder":
            bound[node] = 1.0
        elif node.op == "output":
            (out,) = node.args
            if not isinstance(out, fx.Node):
                raise NotImplementedError(f"lipschitz_upper_bound: {type(module).__name__} returns "
                                          f"{type(out).__name__}, not one tensor")
            return bound[out], _tensor_meta(out).shape
        elif _tensor_meta(node) is None or not operands:
            bound[node] = 0.0  # shapes, sizes, constants: they do not move with the input
        elif node.op != "call_module" and node.target in _SUMS:
            if node.kwargs.get("alpha", 1) != 1:
                raise NotImplementedError(f"lipschitz_upper_bound: add/sub with alpha in {node.format_node()}")
            # broadcasting repeats each entry of an operand size/numel times: its differences grow by the root
            size = _tensor_meta(node).shape.numel()
            bound[node] = sum(bound[a] * math.sqrt(size / _tensor_meta(a).shape.numel()) for a in operands)
        elif node.op == "call_function" and node.target in _CONCATENATIONS:
            bound[node] = math.sqrt(sum(bound[a] ** 2 for a in operands))
        elif len(operands) != 1:
            raise NotImplementedError(f"lipschitz_upper_bound does not support {node.format_node()}: "
                                      "an op that reads the image-dependent input more than once")
        else:
            (arg,) = operands
            bound[node] = bound[arg] * _node_factor(node, arg, modules)
    raise RuntimeError("traced graph has no output")  # pragma: no cover - fx graphs always have one


def _folded_batchnorm(node, modules: dict) -> nn.Module | None:
    """The eval-mode BatchNorm that is the only consumer of this linear/conv node, if any."""
    if node.op != "call_module" or len(node.users) != 1:
        return None
    producer, (user,) = modules[node.target], node.users
    if not (_plain(producer, nn.Linear) or isinstance(producer, nn.Conv2d)) or user.op != "call_module":
        return None
    bn = modules[user.target]
    return bn if _is_batchnorm(bn) else None


def _node_factor(node, arg, modules: dict) -> float:
    in_shape = _tensor_meta(arg).shape
    if node.op == "call_module":
        if _folded_batchnorm(node, modules) is not None:
            return 1.0  # counted in the BatchNorm below, with the BatchNorm's scale folded in
        module = modules[node.target]
        if _is_batchnorm(module) and _folded_batchnorm(arg, modules) is module:
            producer = modules[arg.target]
            scale = _batchnorm_scale(module).to(producer.weight.device)
            folded = producer.weight.detach().double() * scale.view(-1, *([1] * (producer.weight.ndim - 1)))
            if isinstance(producer, nn.Linear):
                return _matrix_norm(folded)
            (producer_input,) = arg.args  # a convolution module is called on its input alone
            return conv2d_norm_bound(producer, _tensor_meta(producer_input).shape[2:], folded)
        return _module_factor(module, node, in_shape)
    name = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", str(node.target))
    if node.target in _RELU or name in _SHAPE_METHODS or node.target in _NEGATIONS:
        return 1.0
    if node.target in _PRODUCTS or node.target in _QUOTIENTS:
        return _number_factor(node, arg)
    if name == "mean":  # a mean over n values: 1/sqrt(n) per disjoint group
        return 1.0 / math.sqrt(in_shape.numel() / _tensor_meta(node).shape.numel())
    raise NotImplementedError(f"lipschitz_upper_bound does not support the operation {node.format_node()}")


def _number_factor(node, arg) -> float:
    """``|c|`` for ``arg · c`` or ``c · arg`` and ``1/|c|`` for ``arg / c``, with ``c`` a finite Python number
    (nonzero when it divides); a tensor ``c`` (its values are not known here), an ``arg`` in the divisor or a
    rounding division raises."""
    quotient = node.target in _QUOTIENTS
    number = None
    if len(node.args) == 2 and node.args[0] is arg:
        number = node.args[1]
    elif len(node.args) == 2 and node.args[1] is arg and not quotient:
        number = node.args[0]
    if (not isinstance(number, (int, float)) or not math.isfinite(number) or (quotient and number == 0)
            or node.kwargs.get("rounding_mode") is not None or set(node.kwargs) - {"rounding_mode"}):
        raise NotImplementedError(f"lipschitz_upper_bound does not support {node.format_node()}: it bounds "
                                  "products and quotients of the input with a finite Python number only")
    return 1.0 / abs(number) if quotient else abs(number)


def lipschitz_upper_bound(model: "ProtoModel", input_size: Sequence[int]) -> float:
    """A certified ``L`` with ``‖model.embed(x) − model.embed(x')‖₂ ≤ L·‖x − x'‖₂`` for all images
    ``x, x'`` of shape ``input_size = (C, H, W)`` (pixel units: the normalisation, ``1/min std``, is in it).

    It bounds the eval-mode embedding (BatchNorm with its running statistics, folded into the
    convolution before it; dropout off), whatever mode ``model`` is in, and leaves the model untouched.
    The bound is the composition rule ``Lip(f∘g) ≤ Lip(f)·Lip(g)`` over the backbone's ``torch.fx``
    graph and the neck, with ``Lip(a ± b) ≤ Lip(a) + Lip(b)`` at sums and differences (residual additions)
    and ``Lip(cat(a, b)) ≤ sqrt(Lip(a)² + Lip(b)²)`` at concatenations and stacks; an operand counts once
    per use (``h + h`` is ``2·Lip(h)``, ``cat([h, h])`` is ``sqrt(2)·Lip(h)``), and ``sqrt(k)`` times
    where broadcasting repeats it ``k`` times. Products and quotients with a Python number scale by it.
    Linear layers contribute their exact spectral norm (float64 SVD), convolutions the circulant bound of
    :func:`conv2d_norm_bound` at their input size (never below the true norm, unlike power iteration),
    ReLU/softplus/tanh 1, max-pooling ``sqrt(windows per pixel)``, average pooling Schur's test. The
    product carries a relative margin of 1e-6 against float rounding. A module type or operation without
    a known bound (``h * h``, a product with a tensor) raises ``NotImplementedError`` naming it, rather
    than returning a number that could be too small. The graph assumes that no tensor is read after an
    in-place change made through another name (``y = h; h += g; y + h``, or ``g = h.add_(h); h + g``):
    ``torch.fx`` records ``h += g`` as ``h + g``, so such a backbone is outside this contract.

    Only the embedding is bounded: a head's certified radius in embedding space (``head.margin``)
    divided by ``L`` is a certified radius in pixel space.
    """
    from .model import Normalize

    input_size = tuple(int(s) for s in input_size)
    if len(input_size) != 3:
        raise ValueError(f"input_size must be (C, H, W), got {input_size}")
    if not isinstance(model.normalize, Normalize):
        raise NotImplementedError(f"lipschitz_upper_bound knows no bound for the normalisation "
                                  f"{type(model.normalize).__name__}")
    modes = {m: m.training for m in model.modules()}
    model.eval()  # the shape pass must not touch BatchNorm statistics, and the bound is of eval mode
    try:
        with torch.no_grad():
            normalize = 1.0 / float(model.normalize.std.min())
            backbone, features = _graph_bound(model.backbone, input_size)
            neck, _ = _graph_bound(model.neck, features[1:])
    finally:
        for m, training in modes.items():
            m.training = training
    return normalize * backbone * neck * SAFETY
