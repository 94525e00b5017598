"""``spectral-norm``: Yoshida & Miyato's penalty on the squared spectral norms of the embedding's layers."""

from __future__ import annotations

import torch
from torch import nn

from robustproto import RegularizedModel, Regularizer, StepContext
from robustproto.errors import UsageError
from robustproto.operators import MODES, LayerOperator, adopt_saved_shapes, power_iteration_step, rayleigh_sigma


class SpectralNormPenalty(Regularizer):
    """``weight/2 · Σ_layers σ(W)²`` over the linear and convolutional layers of the embedding.

    Yoshida & Miyato 2017, "Spectral norm regularization for improving the generalizability of deep
    learning": the squared spectral norm of each layer is added to the loss, σ estimated by power
    iteration whose vectors persist between steps, so one iteration per step suffices once they
    have converged (the weights move little per step). Here: under ``no_grad`` one step
    ``v ← Aᵀu/‖·‖``, ``u ← Av/‖·‖`` updates the buffers, then ``σ = uᵀAv`` is differentiable in ``W``
    (its gradient ``u vᵀ`` is that of the true σ at convergence).

    Layers: every ``nn.Linear`` and convolution of ``model.backbone`` and ``model.neck`` (the
    embedding that :func:`robustproto.lipschitz_upper_bound` bounds); the head is left to itself.

    Options:
        weight: λ (0.01). Yoshida & Miyato use λ of this order; at initialisation a convolution's
            σ² is O(1)–O(10) in reshape mode, so for ~20 layers the penalty starts at a few tenths,
            the order of the classification loss: felt, but not dominating.
        mode: ``reshape`` (default, as the paper: the kernel ``(out, in, kh, kw)`` as the matrix
            ``(out, in·kh·kw)``) or ``operator`` (the true operator norm of the convolution at the
            input size it sees in training, power iteration with conv2d / conv_transpose2d; an input
            size is learnt from a forward pre-hook, and the vectors are restarted if it changes).

    The vectors are buffers (``u0, v0, u1, ...``, in layer order) created by ``attach``, so they
    travel in ``state_dict`` and the core's checkpoints. ``metrics()``: ``sigma_max`` and ``sigma_mean``
    of the last step.
    """

    def __init__(self, weight: float = 0.01, mode: str = "reshape"):
        super().__init__()
        if mode not in MODES:
            raise UsageError(f"spectral-norm: mode must be one of {', '.join(MODES)}, got {mode!r}")
        if weight < 0:
            raise UsageError(f"spectral-norm: weight must be >= 0, got {weight}")
        self.weight, self.mode = float(weight), mode
        self._layers: list[tuple[str, nn.Module]] = []
        self._input_hw: dict[int, tuple[int, int]] = {}  # per layer, from the latest forward
        self._operators: dict[int, LayerOperator] = {}
        self._sigmas: list[float] = []

    def attach(self, model: RegularizedModel) -> None:
        named = [*model.backbone.named_modules(prefix="backbone"), *model.neck.named_modules(prefix="neck")]
        self._layers = [(name, m) for name, m in named if isinstance(m, (nn.Linear, nn.modules.conv._ConvNd))]
        if not self._layers:
            raise UsageError("spectral-norm: the embedding has no linear or convolutional layer to regularize")
        for i, (name, module) in enumerate(self._layers):
            problem = LayerOperator.unsupported(module, self.mode)
            if problem:
                raise NotImplementedError(f"spectral-norm: layer {name}: {problem}")
            if self.mode == "operator" and not isinstance(module, nn.Linear):
                module.register_forward_pre_hook(self._size_recorder(i))
                shape = (0,)  # sized at the first step, when the input size is known
                u = v = torch.zeros(shape, device=module.weight.device)
            else:
                op = self._operators[i] = LayerOperator(module, self.mode)
                u, v = (nn.functional.normalize(torch.randn(s, device=module.weight.device), dim=0)
                        for s in (op.u_shape, op.v_shape))
            self.register_buffer(f"u{i}", u)
            self.register_buffer(f"v{i}", v)

    def _size_recorder(self, index: int):
        def record(module: nn.Module, args: tuple) -> None:
            self._input_hw[index] = tuple(args[0].shape[-2:])
        return record

    def _operator(self, index: int, module: nn.Module) -> LayerOperator:
        if self.mode == "reshape" or isinstance(module, nn.Linear):
            return self._operators[index]
        hw = self._input_hw.get(index)
        if hw is None:
            raise RuntimeError(f"spectral-norm: layer {self._layers[index][0]} has not seen an input yet; "
                               "penalty() must follow the step's forward pass")
        op = self._operators.get(index)
        if op is None or op.v_shape[2:] != hw:
            op = self._operators[index] = LayerOperator(module, "operator", hw)
        return op

    def penalty(self, ctx: StepContext) -> torch.Tensor:
        if not self._layers:
            raise RuntimeError("spectral-norm: attach(model) was not called before training")
        total = ctx.z.new_zeros((), dtype=torch.float32)
        sigmas = []
        with torch.autocast(ctx.z.device.type, enabled=False):
            for i, (_, module) in enumerate(self._layers):
                op = self._operator(i, module)
                weight = module.weight.float()
                u = getattr(self, f"u{i}")
                if tuple(u.shape) != tuple(op.u_shape):  # first step, or a new input size: restart
                    u = torch.randn(op.u_shape, device=weight.device)
                u, v = power_iteration_step(op, weight, u)
                setattr(self, f"u{i}", u)
                setattr(self, f"v{i}", v)
                sigma = rayleigh_sigma(op, weight, u, v)
                sigmas.append(float(sigma.detach()))
                total = total + sigma.pow(2)
        self._sigmas = sigmas
        return 0.5 * self.weight * total

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        adopt_saved_shapes(self, state_dict, prefix)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def metrics(self) -> dict[str, float]:
        if not self._sigmas:
            return {}
        return {"sigma_max": max(self._sigmas), "sigma_mean": sum(self._sigmas) / len(self._sigmas)}
