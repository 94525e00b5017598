"""``lipschitz``: Khalid & Paaßen's penalty on Lipschitz violations towards Gaussian (or power-iteration) neighbours."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd import forward_ad

from robustproto import RegularizedModel, Regularizer, StepContext
from robustproto.errors import UsageError
from robustproto.utils import eval_mode

BN_STATS = ("clean", "joint")
NEIGHBOURS = ("gaussian", "power")
SCALES = ("none", "prototypes", "normalized")
PLAIN_BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
# Floor of the squared reference length δ² or ρ²: two prototypes of different classes on top of each other, or
# all-zero embeddings, would divide by 0. The floor keeps the penalty finite (large, which is the right signal for
# a head without a margin) instead of NaN; above it the reference and its gradient are exact.
REFERENCE_FLOOR = 1e-12


def labelled_prototypes(head: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """The head's ``prototypes`` ``(P, D)`` and their classes ``(P,)`` (``prototype_labels``, or one prototype per
    class in class order); a :class:`UsageError` for a head ``scale='prototypes'`` cannot use."""
    prototypes = getattr(head, "prototypes", None)
    if not isinstance(prototypes, torch.Tensor) or prototypes.ndim != 2:
        raise UsageError(f"lipschitz: scale='prototypes' needs a prototype head (a `prototypes` tensor (P, D)), "
                         f"{type(head).__name__} has none; use scale='normalized' or 'none'")
    labels = getattr(head, "prototype_labels", None)
    if labels is None:
        if len(prototypes) != head.num_classes:
            raise UsageError("lipschitz: scale='prototypes': the head's prototypes carry no `prototype_labels` and "
                             "are not one per class; use scale='normalized'")
        labels = torch.arange(len(prototypes), device=prototypes.device)
    return prototypes, labels


def squared_prototype_separation(head: nn.Module) -> torch.Tensor:
    """δ², the smallest squared Euclidean distance between two prototypes of different classes, in float32.

    Differentiable in the prototypes (the gradient of a minimum: through the closest pair). The pair is found
    without a gradient by direct differences (no ‖a‖² + ‖b‖² − 2a·b cancellation for close prototypes), then its
    distance is recomputed on the graph; no host sync, no P × P × D tensor.
    """
    prototypes, labels = labelled_prototypes(head)
    w = prototypes.float()
    with torch.no_grad():
        gaps = torch.cdist(w, w, compute_mode="donot_use_mm_for_euclid_dist")
        gaps.masked_fill_(labels[:, None] == labels[None, :], float("inf"))
        closest = gaps.flatten().argmin()
    return (w[closest // len(w)] - w[closest % len(w)]).pow(2).sum()


class GaussianNeighbourLipschitz(Regularizer):
    """``weight · mean ReLU(D(φ(x), φ(y)) − L·d(x, y))`` with ``y = x + N(0, σ²)`` drawn afresh every step.

    Khalid & Paaßen 2025, "Adversarial robustness by combining prototype models with Lipschitz
    training", Eq. 1: one Gaussian neighbour per training point, violations of the local Lipschitz
    condition ``D(φ(x), φ(y)) ≤ L·d(x, y)`` punished, with ``D`` and ``d`` squared Euclidean, ``L = 1``,
    weight 10 and σ = 0.1 on MNIST (0.03 on CIFAR-10). ``φ`` is the embedding fed to the head;
    ``d`` is measured on the images in [0, 1] (pixel units, before the model's normalisation). The
    neighbour is not clipped to [0, 1]: Lipschitz continuity is a property of the function on all of
    the input space, and clipping would make ``d`` smaller than the noise drawn.

    The defaults are the paper's. Two options make the condition bind where the paper's does not: on its MNIST
    GLVQ model at init ``‖φ(x) − φ(y)‖² ≈ 0.03`` against ``‖y − x‖² ≈ 7.85``, so no pair violates it from the
    first step; GLVQ's loss is invariant to scaling φ and the prototypes together, so an absolute ``L`` means
    nothing to such a head (``scale``); and a Gaussian neighbour measures the Frobenius norm of the Jacobian J
    of φ (``E[D]/E[d] = ‖J‖²_F / n``) while an attack sees its spectral norm ``‖J‖₂``, there about 180 times
    larger (``neighbours``).

    Options:
        weight: factor of the penalty (10).
        L: the Lipschitz constant asked for (1), in the units ``scale`` gives ``D``.
        sigma: standard deviation of the noise, in pixel units (0.1).
        squared: ``D`` and ``d`` squared Euclidean (``True``, the paper's choice) or Euclidean.
        fraction: share of the batch (its first ``ceil(fraction·B)`` samples, a random subset as the
            loader shuffles) that gets a neighbour (1).
        bn_stats: ``clean`` or ``joint``, see below.
        neighbours: ``gaussian`` (the paper): ``y = x + ξ``, ``ξ ~ N(0, σ²)``. ``power``: one power-iteration
            step on the Jacobian from ξ, as virtual adversarial training does (Miyato et al. 2018): ``y = x +
            ‖ξ‖·g/‖g‖`` with ``g = JᵀJξ`` per sample, the neighbour as far as the Gaussian one in the direction
            φ stretches most after one step (``‖Jg‖/‖g‖ ≥ ‖Jξ‖/‖ξ‖``), so ``D/d`` estimates ``‖J‖₂`` from below
            instead of ``‖J‖_F/√n``. ``Jξ`` is a forward-mode derivative carried along the one forward pass of
            ``model.embed`` whose backward gives ``Jᵀ(Jξ)``: per step one more forward (carrying the tangent) and one
            more backward, about three forward passes' worth of compute. The
            search runs on the model ``attach`` was given, in EVAL mode, every module's own training flag
            restored afterwards (as ``pgd-at`` runs its attack): BatchNorm neither updates its running
            statistics from the search's forward nor couples the samples (each direction is that of the sample's
            own Jacobian), and dropout does not pick a random sub-network to search on. The search takes input
            gradients only (no parameter gets one, autocast off) and its result is a sample, detached, not a
            function of the weights; ``y`` is then embedded with the batch like a Gaussian neighbour (so
            ``bn_stats`` applies). A zero ``g`` (φ flat at x) keeps ξ.
        scale: what ``D`` is measured against. ``none`` (the paper): absolute. ``prototypes``: ``D/δ²``
            (``D/δ`` when not ``squared``), δ the smallest Euclidean distance between two prototypes of different
            classes of the head (``head.prototypes`` with ``head.prototype_labels``, or one prototype per class in
            class order), whatever distance the head compares with; a head without prototypes is refused at
            ``attach``. ``normalized``: ``D`` between the embeddings divided by their RMS norm ``ρ = sqrt(mean
            ‖φ(x)‖²)`` over the clean rows of the batch, i.e. ``D/ρ²`` (``D/ρ``). δ and ρ are computed in float32,
            on the graph: moving the prototypes apart or spreading the embeddings are legitimate ways to meet a
            condition relative to them. Both are invariant under ``φ → cφ``, ``w → cw`` (any ``c > 0``), GLVQ's
            symmetry: ``D``, δ² and ρ² all scale by ``c²`` (``D``, δ, ρ by ``c`` when not squared) and ``d`` does
            not involve φ, so the ratios, hence the penalty, are unchanged. ``L`` is then relative: at init on the
            MNIST GLVQ model (σ = 0.1, ``d ≈ 7.85``) we measured ``D/δ² ≈ 1.3–2.2`` for Gaussian and ``≈ 8–12`` for
            power neighbours, ``D/ρ²`` 20 times smaller: only ``power`` with ``prototypes`` binds at ``L = 1``.

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
                 fraction: float = 1.0, bn_stats: str = "clean", neighbours: str = "gaussian",
                 scale: str = "none"):
        super().__init__()
        if bn_stats not in BN_STATS:
            raise UsageError(f"lipschitz: bn_stats must be one of {', '.join(BN_STATS)}, got {bn_stats!r}")
        if neighbours not in NEIGHBOURS:
            raise UsageError(f"lipschitz: neighbours must be one of {', '.join(NEIGHBOURS)}, got {neighbours!r}")
        if scale not in SCALES:
            raise UsageError(f"lipschitz: scale must be one of {', '.join(SCALES)}, got {scale!r}")
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
        self.bn_stats, self.neighbours, self.scale = bn_stats, neighbours, scale
        # the model the power search embeds with, in a tuple so that it is no submodule of this regularizer (not
        # in its state_dict, not moved by its .to())
        self._searched_model: tuple[RegularizedModel, ...] = ()
        self._noise: torch.Tensor | None = None  # this step's y − x, between extra_inputs and penalty
        self._clean_rows = 0  # > 0 while this regularizer's batch is in the forward pass
        self._saved_stats: dict[nn.Module, tuple[torch.Tensor, torch.Tensor]] = {}
        self._violations = self._pairs = 0

    def attach(self, model: RegularizedModel) -> None:
        if self.scale == "prototypes" and len(labelled_prototypes(model.head)[1].unique()) < 2:
            raise UsageError("lipschitz: scale='prototypes' needs prototypes of at least two classes; "
                             "use scale='normalized'")
        if self.neighbours == "power":
            self._searched_model = (model,)
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
        count = math.ceil(self.fraction * len(x))
        self._noise = self.sigma * torch.randn_like(x[:count], dtype=torch.float32)
        if self.neighbours == "power":
            self._noise = self._power_step(x[:count].detach(), self._noise)
        self._clean_rows = len(x)
        return x[:count].detach() + self._noise.to(x.dtype)  # a sample, not a function of x

    def _power_step(self, x: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """``‖ξ‖·g/‖g‖`` per sample, ``g = JᵀJξ`` with J the Jacobian of the eval-mode embedding at ``x``."""
        if not self._searched_model:
            raise RuntimeError("lipschitz: neighbours='power' needs the model: call attach(model) first")
        model = self._searched_model[0]
        with eval_mode(model), torch.enable_grad(), torch.autocast(x.device.type, enabled=False), \
                forward_ad.dual_level():
            x = x.float().requires_grad_(True)
            z, jvp = forward_ad.unpack_dual(model.embed(forward_ad.make_dual(x, noise)))
            (g,) = torch.autograd.grad(z, x, jvp.detach())
        g, noise_rows = g.flatten(1), noise.flatten(1)
        g_norm, noise_norm = g.norm(dim=1, keepdim=True), noise_rows.norm(dim=1, keepdim=True)
        direction = torch.where(g_norm > 0, g / g_norm, noise_rows / noise_norm)  # no graph: a NaN branch is inert
        return (noise_norm * direction).view_as(noise)

    def penalty(self, ctx: StepContext) -> torch.Tensor:
        if ctx.extra_z is None or self._noise is None or len(self._noise) != len(ctx.extra_z):
            raise RuntimeError("lipschitz: penalty() needs the embeddings of this step's extra_inputs(x) in "
                               "ctx.extra_z; the training loop must call extra_inputs before the forward")
        with torch.autocast(ctx.x.device.type, enabled=False):
            count = len(ctx.extra_z)
            big_d = (ctx.z[:count].float() - ctx.extra_z.float()).pow(2).sum(1)
            if self.scale == "prototypes":
                big_d = big_d / squared_prototype_separation(ctx.model.head).clamp_min(REFERENCE_FLOOR)
            elif self.scale == "normalized":
                big_d = big_d / ctx.z.float().pow(2).sum(1).mean().clamp_min(REFERENCE_FLOOR)
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
