"""A certified Lipschitz bound of a model's embedding over its torch.fx graph (:func:`lipschitz_upper_bound`).

It needs numbers that are never too small, so every factor is an exact norm or an upper bound: the SVD of a
linear layer's matrix, :func:`robustproto.operators.conv2d_norm_bound` for a convolution (power iteration
only approaches σ from below), folded BatchNorm, pooling, activations and residual sums.
"""

from __future__ import annotations

import math
import operator
from typing import Sequence

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn
from torch.fx.passes.shape_prop import ShapeProp

from .errors import UsageError
from .operators import (LayerOperator, adopt_saved_shapes, computes_like, conv2d_norm_bound, power_iteration_step,
                        rayleigh_sigma)

__all__ = ["LipschitzEstimate", "lipschitz_upper_bound"]

# relative margin on the product of float64 norms: their rounding error is ~1e-13, so this only guards
# against the accumulated float error of ~20 factors, with room to spare
SAFETY = 1.0 + 1e-6


def _matrix_norm(weight: torch.Tensor) -> float:
    return float(torch.linalg.matrix_norm(weight.detach().double().flatten(1), ord=2))


def _batchnorm_scale(bn: nn.modules.batchnorm._BatchNorm, dtype: torch.dtype) -> torch.Tensor:
    """The per-channel factor ``γ / sqrt(running_var + eps)`` of a BatchNorm in eval mode, in ``dtype``
    (differentiable in ``γ``; the running variance is a statistic, not a weight)."""
    if bn.running_var is None:
        raise NotImplementedError(f"{bn} keeps no running statistics (track_running_stats=False): its eval-mode "
                                  "output depends on the batch, so it has no Lipschitz constant per sample")
    scale = 1.0 / torch.sqrt(bn.running_var.detach().to(dtype) + bn.eps)
    return scale * bn.weight.to(dtype) if bn.weight is not None else scale


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
    uses: list = []
    fx.node.map_arg((node.args, node.kwargs), uses.append)
    return uses


def _root(value):
    """``sqrt`` of a Python number or of a tensor (the walk runs on both)."""
    return value ** 0.5


class _ExactNorms:
    """The norms :func:`lipschitz_upper_bound` multiplies: never below the truth, float64, not differentiable."""

    dtype = torch.float64

    def linear(self, key: str, module: nn.Module, weight: torch.Tensor) -> float:
        return _matrix_norm(weight)

    def conv(self, key: str, module: nn.Conv2d, input_hw: Sequence[int], weight: torch.Tensor) -> float:
        return conv2d_norm_bound(module, input_hw, weight)


class _TracedGraph:
    """A module traced once with ``torch.fx`` at one input shape: the graph every bound of it walks.

    :meth:`bound` composes a bound ``L(node)`` on each node's Lipschitz constant as a function of the module
    input, from its operands counted once per use (``h + h`` and ``torch.cat([h, h])`` use ``h`` twice):

    - ``Lip(op) · L(input)`` for a one-input op; a product or quotient with a Python number ``c`` scales
      by ``|c|`` or ``1/|c|``, a negation by 1;
    - ``Σ L(operand)`` for a sum or difference (a residual block: ``‖I + F‖ ≤ 1 + Lip(F)``), where an
      operand that broadcasting repeats ``k`` times counts ``sqrt(k) · L(operand)``;
    - ``sqrt(Σ L(operand)²)`` for a concatenation or stack, along any dimension;
    - nothing for what does not depend on the input.

    A convolution or linear layer whose only consumer is a BatchNorm is folded into it (the BatchNorm
    scales its output channels), which is tighter than the product of both norms. Any other op
    that reads the input more than once (``h * h``) raises ``NotImplementedError``. The norms of linear and
    convolutional layers come from a ``norms`` object (exact ones for a certificate, power-iteration estimates
    differentiable in the weights for training); every other factor depends on shapes only and is computed once.
    """

    def __init__(self, module: nn.Module, input_shape: Sequence[int]):
        try:  # inside a Sequential, a torch.nn module given alone stays a leaf (call_module) in the graph
            self.graph = fx.symbolic_trace(nn.Sequential(module))
        except Exception as exc:
            raise NotImplementedError(f"lipschitz_upper_bound cannot trace {type(module).__name__} with torch.fx "
                                      f"({type(exc).__name__}: {exc})") from None
        param = next(module.parameters(), None)
        example = torch.zeros(1, *input_shape, dtype=param.dtype if param is not None else torch.float32,
                              device=param.device if param is not None else None)
        modes = {m: m.training for m in module.modules()}
        module.eval()  # the shape pass must not touch BatchNorm statistics
        try:
            with torch.no_grad():
                ShapeProp(self.graph).propagate(example)
        finally:
            for m, training in modes.items():
                m.training = training
        self.modules = dict(self.graph.named_modules())
        self._constants: dict = {}  # node -> its factor, for the factors that depend on shapes only

    def output_shape(self) -> torch.Size:
        return _tensor_meta(self._output()).shape

    def _output(self):
        """The node the traced module returns; a module returning anything but one tensor is refused."""
        (out,) = next(n for n in self.graph.graph.nodes if n.op == "output").args
        if not isinstance(out, fx.Node):
            raise NotImplementedError(f"lipschitz_upper_bound: the traced module returns {type(out).__name__}, "
                                      "not one tensor")
        return out

    def bound(self, norms):
        """The bound of the whole module: a float with exact norms, a tensor with differentiable ones."""
        bound: dict = {}  # only the nodes that move with the input
        for node in self.graph.graph.nodes:
            operands = [a for a in _uses(node) if a in bound]
            if node.op == "placeholder":
                bound[node] = 1.0
            elif node.op == "output":
                return bound[self._output()]
            elif _tensor_meta(node) is None or not operands:
                continue  # shapes, sizes, constants: they do not move with the input
            elif node.op != "call_module" and node.target in _SUMS:
                if node.kwargs.get("alpha", 1) != 1:
                    raise NotImplementedError(f"lipschitz_upper_bound: add/sub with alpha in {node.format_node()}")
                # broadcasting repeats each entry of an operand size/numel times: its differences grow by the root
                size = _tensor_meta(node).shape.numel()
                bound[node] = sum(bound[a] * math.sqrt(size / _tensor_meta(a).shape.numel()) for a in operands)
            elif node.op == "call_function" and node.target in _CONCATENATIONS:
                bound[node] = _root(sum(bound[a] ** 2 for a in operands))
            elif len(operands) != 1:
                raise NotImplementedError(f"lipschitz_upper_bound does not support {node.format_node()}: "
                                          "an op that reads the image-dependent input more than once")
            else:
                (arg,) = operands
                bound[node] = bound[arg] * self._factor(node, arg, norms)
        raise RuntimeError("traced graph has no output")  # pragma: no cover - fx graphs always have one

    def _factor(self, node, arg, norms):
        if node in self._constants:
            return self._constants[node]
        in_shape = _tensor_meta(arg).shape
        if node.op == "call_module":
            if self._folded_batchnorm(node) is not None:
                return 1.0  # counted in the BatchNorm below, with the BatchNorm's scale folded in
            module = self.modules[node.target]
            if _is_batchnorm(module) and self._folded_batchnorm(arg) is module:
                producer = self.modules[arg.target]
                scale = _batchnorm_scale(module, norms.dtype).to(producer.weight.device)
                folded = producer.weight.to(norms.dtype) * scale.view(-1, *([1] * (producer.weight.ndim - 1)))
                if isinstance(producer, nn.Linear):
                    return norms.linear(arg.target, producer, folded)
                (producer_input,) = arg.args  # a convolution module is called on its input alone
                return norms.conv(arg.target, producer, _tensor_meta(producer_input).shape[2:], folded)
            if computes_like(module, nn.Linear):
                return norms.linear(node.target, module, module.weight.to(norms.dtype))
            if isinstance(module, nn.Conv2d):
                return norms.conv(node.target, module, in_shape[2:], module.weight.to(norms.dtype))
            if _is_batchnorm(module):
                return _batchnorm_scale(module, norms.dtype).abs().max()
            factor = _module_factor(module, node, in_shape)
        else:
            factor = _function_factor(node, arg, in_shape)
        self._constants[node] = factor
        return factor

    def _folded_batchnorm(self, node) -> nn.Module | None:
        """The eval-mode BatchNorm that is the only consumer of this linear/conv node, if any."""
        if node.op != "call_module" or len(node.users) != 1:
            return None
        producer, (user,) = self.modules[node.target], node.users
        if not (computes_like(producer, nn.Linear) or isinstance(producer, nn.Conv2d)) or user.op != "call_module":
            return None
        bn = self.modules[user.target]
        return bn if _is_batchnorm(bn) else None


class _LayerCollector:
    """Every layer norm 1, and each layer a walk asks a norm of recorded in walk order, with its input size
    (``None`` for a linear layer): a walk with it raises, naming the op, on what the bound cannot follow."""

    dtype = torch.float32

    def __init__(self):
        self.layers: dict[str, tuple[nn.Module, tuple[int, ...] | None]] = {}

    def linear(self, key, module, weight) -> float:
        self.layers.setdefault(key, (module, None))
        return 1.0

    def conv(self, key, module, input_hw, weight) -> float:
        if not computes_like(module, nn.Conv2d) or module.padding_mode != "zeros" or isinstance(module.padding, str):
            conv2d_norm_bound(module, input_hw)  # raises, naming what is not supported
        self.layers.setdefault(key, (module, tuple(input_hw)))
        return 1.0


def _function_factor(node, arg, in_shape: torch.Size) -> float:
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


def lipschitz_upper_bound(model: nn.Module, input_size: Sequence[int]) -> float:
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

    ``model`` is a :class:`robustproto.ProtoModel`, or any module with ``normalize``, ``backbone`` and
    ``neck``; the normalisation gives its own constant through ``normalize.lipschitz_constant()``
    (:class:`robustproto.Normalize`: ``1 / min std``), and one without that method is refused.
    """
    with torch.no_grad():
        backbone, neck = _trace_embedding(model, input_size)
        return float(model.normalize.lipschitz_constant()) * backbone.bound(_ExactNorms()) * neck.bound(_ExactNorms()) \
            * SAFETY


def _trace_embedding(model: nn.Module, input_size: Sequence[int]) -> tuple[_TracedGraph, _TracedGraph]:
    input_size = tuple(int(s) for s in input_size)
    if len(input_size) != 3:
        raise UsageError(f"input_size must be (C, H, W), got {input_size}")
    if not callable(getattr(model.normalize, "lipschitz_constant", None)):
        raise NotImplementedError(f"lipschitz_upper_bound knows no bound for the normalisation "
                                  f"{type(model.normalize).__name__}: it has no lipschitz_constant() method")
    backbone = _TracedGraph(model.backbone, input_size)
    return backbone, _TracedGraph(model.neck, backbone.output_shape()[1:])


class LipschitzEstimate(nn.Module):
    """The bound of :func:`lipschitz_upper_bound`, differentiable in the weights and cheap enough for every step.

    The same graph, walked with the same rules (normalisation, residual sums, concatenations, pooling,
    BatchNorm folded into the layer before it), but each linear or convolutional layer contributes a
    power-iteration estimate of its spectral norm instead of the exact one: per call, one step
    ``v ← Aᵀu/‖·‖``, ``u ← Av/‖·‖`` under ``no_grad`` from the vector kept since the previous call, then
    ``σ = uᵀAv``, whose gradient in ``W`` is that of the true norm at convergence (Miyato et al.'s spectral
    normalisation; GloRo, Leino et al. 2021, keeps its vectors across steps the same way). A convolution is
    the operator it applies at its input size (zero padding and stride included), not the reshaped kernel.
    Power iteration approaches each norm from below, so the estimate is at most the certificate's bound once
    converged (the certificate bounds a convolution by its circulant embedding, 2–8 % above the operator's
    norm for 3×3 kernels on 8–12 px maps): train against this, certify with :func:`lipschitz_upper_bound`.

    The vectors are buffers (``u0, u1, ...`` in the order the walk meets the layers, float32), so they travel
    with ``state_dict``; they start from a fixed seed, so every process of a distributed run holds the same ones,
    and a saved vector of another shape (another input size) is taken on load and restarted at the next call.
    ``model`` (a :class:`robustproto.ProtoModel`) is not registered as a submodule: the estimate owns only its
    vectors. ``forward()`` returns the float32 scalar ``L`` for images of ``input_size`` (C, H, W), differentiable
    in the weights, and advances the vectors ``iterations`` steps.
    """

    def __init__(self, model: nn.Module, input_size: Sequence[int], iterations: int = 1):
        super().__init__()
        if int(iterations) < 1:
            raise UsageError(f"iterations must be at least 1, got {iterations}")
        self.iterations = int(iterations)
        self.input_size = tuple(int(n) for n in input_size)
        self._graphs = _trace_embedding(model, input_size)
        self._normalize = float(model.normalize.lipschitz_constant())
        self._device_type = next(iter([*model.parameters(), *model.buffers()])).device.type
        generator = torch.Generator().manual_seed(0)
        self._operators: dict[str, LayerOperator] = {}  # per layer (``part.name``) its operator
        self._vectors: dict[str, str] = {}  # and the name of its vector's buffer
        for part, graph in zip(("backbone", "neck"), self._graphs):
            found = _LayerCollector()
            graph.bound(found)  # raises now, naming the op, on what the bound cannot follow
            for name, (module, hw) in found.layers.items():
                key = f"{part}.{name}"
                op = LayerOperator(module, "reshape" if hw is None else "operator", hw)
                u = torch.randn(op.u_shape, generator=generator)
                self._operators[key], self._vectors[key] = op, f"u{len(self._operators)}"
                self.register_buffer(self._vectors[key], (u / u.norm()).to(module.weight.device))

    def forward(self) -> torch.Tensor:
        norms = _PowerIterationNorms(self)
        with torch.autocast(self._device_type, enabled=False):
            value = self._normalize * self._graphs[0].bound(norms.part("backbone")) \
                * self._graphs[1].bound(norms.part("neck"))
        return torch.as_tensor(value, dtype=torch.float32)  # a float where no layer has weights

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        adopt_saved_shapes(self, state_dict, prefix)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class _PowerIterationNorms:
    """Differentiable layer norms for :class:`LipschitzEstimate`: power iteration from its kept vectors."""

    dtype = torch.float32

    def __init__(self, estimate: LipschitzEstimate, prefix: str = ""):
        self.estimate, self.prefix = estimate, prefix

    def part(self, name: str) -> "_PowerIterationNorms":
        return _PowerIterationNorms(self.estimate, name)

    def linear(self, key: str, module: nn.Module, weight: torch.Tensor) -> torch.Tensor:
        return self._sigma(key, weight)

    def conv(self, key: str, module: nn.Conv2d, input_hw: Sequence[int], weight: torch.Tensor) -> torch.Tensor:
        return self._sigma(key, weight)

    def _sigma(self, key: str, weight: torch.Tensor) -> torch.Tensor:
        key = f"{self.prefix}.{key}"
        op, name = self.estimate._operators[key], self.estimate._vectors[key]
        u = getattr(self.estimate, name)
        if tuple(u.shape) != tuple(op.u_shape):  # loaded from another input size: restart
            u = torch.randn(op.u_shape, generator=torch.Generator().manual_seed(0)).to(weight.device)
        for _ in range(self.estimate.iterations):
            stepped, v = power_iteration_step(op, weight.detach(), u)
            # a zero layer (a zero-initialised last BatchNorm of a residual branch) maps every vector to 0: keep the
            # old direction, or the vector would stay 0 after the layer comes alive
            u = torch.where(stepped.norm() > 0, stepped, u)
        setattr(self.estimate, name, u)
        return rayleigh_sigma(op, weight, u, v)
