"""``lipschitz``: Khalid & Paaßen's penalty on Lipschitz violations towards Gaussian neighbours."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from robustproto import RegularizedModel, Regularizer, StepContext
from robustproto.errors import UsageError

BN_STATS = ("clean", "joint")
PLAIN_BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


class GaussianNeighbourLipschitz(Regularizer):
    """``weight · mean ReLU(D(φ(x), φ(y)) − L·d(x, y))`` with ``y = x + N(0, σ²)`` drawn afresh every step.

    Khalid & Paaßen 2025, "Adversarial robustness by combining prototype models with Lipschitz
    training", Eq. 1: one Gaussian neighbour per training point, violations of the local Lipschitz
    condition ``D(φ(x), φ(y)) ≤ L·d(x, y)`` punished, with ``D`` and ``d`` squared Euclidean, ``L = 1``,
    weight 10 and σ = 0.1 on MNIST (0.03 on CIFAR-10). ``φ`` is the embedding fed to the head;
    ``d`` is measured on the images in [0, 1] (pixel units, before the model's normalisation). The
    neighbour is not clipped to [0, 1]: Lipschitz continuity is a property of the function on all of
    the input space, and clipping would make ``d`` smaller than the noise drawn.

    Options:
        weight: factor of the penalty (10).
        L: the Lipschitz constant asked for (1).
        sigma: standard deviation of the noise, in pixel units (0.1).
        squared: ``D`` and ``d`` squared Euclidean (``True``, the paper's choice) or Euclidean.
        fraction: share of the batch (its first ``ceil(fraction·B)`` samples, a random subset as the
            loader shuffles) that gets a neighbour (1).
        bn_stats: ``clean`` or ``joint``, see below.

    The noise comes from the global torch RNG, so seeds and ``--resume`` reproduce it. The neighbours
    are embedded in the same backbone call as the batch (``extra_inputs``), so in training mode a
    BatchNorm would normalise ``[x; y]`` together and its running statistics would follow the joint
    batch; on MNIST the noise lights up the all-zero background, and on a random-init CNN that moves
    single channels' variances by 30 % and more. ``bn_stats`` decides:

    - ``clean`` (default): ``attach`` hooks every BatchNorm of the model so that, during this
      regularizer's forward pass, the statistics of the clean rows ``x`` normalise the whole batch
      and alone update the running statistics. The clean samples' forward pass and the running
      statistics (hence eval mode) are then exactly those of a step without the regularizer, and
      ``y`` goes through the same affine map as ``x``, so ``D(φ(x), φ(y))`` compares one function at
      two points. Only plain ``nn.BatchNorm1d/2d/3d`` can be hooked; a subclass that changes the
      forward (timm's ``BatchNormAct2d``) is rejected naming the layer.
    - ``joint``: leave BatchNorm alone (statistics of ``[x; y]``).

    ``metrics()``: ``violations``, the share of neighbours that broke the condition since the last call.
    """

    def __init__(self, weight: float = 10.0, L: float = 1.0, sigma: float = 0.1, squared: bool = True,
                 fraction: float = 1.0, bn_stats: str = "clean"):
        super().__init__()
        if bn_stats not in BN_STATS:
            raise UsageError(f"lipschitz: bn_stats must be one of {', '.join(BN_STATS)}, got {bn_stats!r}")
        if weight < 0 or L < 0:
            raise UsageError(f"lipschitz: weight and L must be >= 0, got weight={weight}, L={L}")
        if sigma <= 0:
            raise UsageError(f"lipschitz: sigma must be > 0, got {sigma}")
        if not 0 < fraction <= 1:
            raise UsageError(f"lipschitz: fraction must be in (0, 1], got {fraction}")
        if not isinstance(squared, bool):
            raise UsageError(f"lipschitz: squared must be true or false, got {squared!r}")
        self.weight, self.L, self.sigma, self.squared, self.fraction = float(weight), float(L), float(sigma), \
            squared, float(fraction)
        self.bn_stats = bn_stats
        self._noise: torch.Tensor | None = None  # this step's y − x, between extra_inputs and penalty
        self._clean_rows = 0  # > 0 while this regularizer's batch is in the forward pass
        self._saved_stats: dict[nn.Module, tuple[torch.Tensor, torch.Tensor]] = {}
        self._violations = self._pairs = 0

    def attach(self, model: RegularizedModel) -> None:
        if self.bn_stats == "joint":
            return
        for name, module in model.named_modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                if type(module) not in PLAIN_BATCHNORMS:
                    raise NotImplementedError(
                        f"lipschitz: cannot give {name} ({type(module).__name__}) clean-batch statistics, only "
                        "nn.BatchNorm1d/2d/3d; use --reg lipschitz:bn_stats='joint' to normalise x and its "
                        "neighbours together")
                module.register_forward_pre_hook(self._save_running_stats)
                module.register_forward_hook(self._normalise_with_clean_rows)

    def _save_running_stats(self, bn: nn.Module, args: tuple) -> None:
        if self._clean_rows and bn.training and bn.track_running_stats:
            self._saved_stats[bn] = (bn.running_mean.clone(), bn.running_var.clone())

    def _normalise_with_clean_rows(self, bn: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor | None:
        x = args[0]
        if not (self._clean_rows and bn.training) or len(x) <= self._clean_rows:
            return None
        dims = [d for d in range(x.ndim) if d != 1]
        clean = x[:self._clean_rows].float()
        mean, var = clean.mean(dims), clean.var(dims, unbiased=False)
        if bn in self._saved_stats:  # redo the running-statistics update with the clean rows only
            running_mean, running_var = self._saved_stats.pop(bn)
            count = clean.numel() // clean.shape[1]
            factor = bn.momentum if bn.momentum is not None else 1.0 / float(bn.num_batches_tracked)
            with torch.no_grad():
                bn.running_mean.copy_((1 - factor) * running_mean + factor * mean)
                bn.running_var.copy_((1 - factor) * running_var + factor * var * count / max(count - 1, 1))
        shape = [1, -1] + [1] * (x.ndim - 2)
        out = (x.float() - mean.view(shape)) * torch.rsqrt(var.view(shape) + bn.eps)
        if bn.affine:
            out = out * bn.weight.view(shape) + bn.bias.view(shape)
        return out.to(x.dtype)

    def extra_inputs(self, x: torch.Tensor) -> torch.Tensor:
        self._clean_rows = len(x)
        count = math.ceil(self.fraction * len(x))
        self._noise = self.sigma * torch.randn_like(x[:count], dtype=torch.float32)
        return x[:count].detach() + self._noise.to(x.dtype)  # a sample, not a function of x

    def penalty(self, ctx: StepContext) -> torch.Tensor:
        if ctx.extra_z is None or self._noise is None or len(self._noise) != len(ctx.extra_z):
            raise RuntimeError("lipschitz: penalty() needs the embeddings of this step's extra_inputs(x) in "
                               "ctx.extra_z; the training loop must call extra_inputs before the forward")
        with torch.autocast(ctx.x.device.type, enabled=False):
            count = len(ctx.extra_z)
            big_d = (ctx.z[:count].float() - ctx.extra_z.float()).pow(2).sum(1)
            small_d = self._noise.flatten(1).pow(2).sum(1)
            if not self.squared:  # sqrt has an infinite gradient at 0: clamp first
                big_d, small_d = big_d.clamp_min(1e-12).sqrt(), small_d.sqrt()
            excess = F.relu(big_d - self.L * small_d)
        self._clean_rows = 0
        self._violations += int((excess > 0).sum())
        self._pairs += count
        self._noise = None
        return self.weight * excess.mean()

    def metrics(self) -> dict[str, float]:
        share = self._violations / max(self._pairs, 1)
        self._violations = self._pairs = 0
        return {"violations": share}
