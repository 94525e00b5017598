"""The attacks torchattacks lacks, and the loss they ascend.

:func:`attack_loss` (``ce`` or ``margin``), the loss-aware :class:`GradientAttack` (FGSM, FGM, BIM, MIM, PGD and
PGD-L2 in one class; :func:`gradient_attack` builds it, ``loss="ce+margin"`` included) and the
:class:`GaussianNoise` floor. Both classes subclass ``torchattacks.Attack`` and are made on first access (module
``__getattr__``), so importing this module does not import torchattacks.
"""

from __future__ import annotations

import functools
import math
from typing import Callable

import torch
from torch import nn

from ..config import NORMS
from ..errors import UsageError

__all__ = ["LOSSES", "GaussianNoise", "GradientAttack", "attack_loss", "gradient_attack", "perturbation_norms",
           "project"]

Attack = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

LOSSES = ("ce", "margin")


def attack_loss(scores: torch.Tensor, y: torch.Tensor, loss: str | Callable[[torch.Tensor, torch.Tensor],
                                                                           torch.Tensor]) -> torch.Tensor:
    """The quantity a gradient attack ascends, summed over the batch, in float32.

    ``loss`` may also be a callable ``loss(scores, y) -> scalar``, called on the float32 scores (e.g. the KL
    divergence TRADES ascends, :mod:`plugins.regularizers.adversarial`).

    ``"ce"``: softmax cross-entropy (mean, as torchattacks computes it). ``"margin"``: the best other
    score minus the true one, ``max_{j≠y} s_j − s_y`` (Carlini & Wagner's margin without κ). Prototype
    scores are negative squared distances with no natural scale: cross-entropy saturates as the scale
    grows (its input gradients vanish), while the sign or direction of the margin's gradient does not
    change when the scores are multiplied by a constant, so a margin attack measures robustness, not scale.
    """
    scores = scores.float()
    if callable(loss):
        return loss(scores, y)
    if loss == "ce":
        return nn.functional.cross_entropy(scores, y)
    if loss == "margin":
        true = scores.gather(1, y[:, None]).squeeze(1)
        other = scores.masked_fill(nn.functional.one_hot(y, scores.shape[1]).bool(), -math.inf).amax(1)
        return (other - true).sum()
    raise UsageError(f"loss: '{loss}' is not one of {', '.join(LOSSES)}")


def project(images: torch.Tensor, adv: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    """``adv`` moved onto the ε-ball around ``images`` (L∞: clipped per pixel; L2: scaled down where it is longer
    than ε) and then into the [0, 1] box, detached; the box is convex and holds ``images``, so the result stays in
    the ball. The projection of every step of :class:`GradientAttack` (as torchattacks' PGD and PGDL2 project)."""
    delta = adv - images
    if norm == "Linf":
        delta = delta.clamp(-eps, eps)
    else:
        norms = delta.flatten(1).norm(dim=1)
        delta = delta * torch.clamp(eps / norms, max=1.0).view(-1, *([1] * (delta.ndim - 1)))
    return (images + delta).clamp(0, 1).detach()


def perturbation_norms(delta: torch.Tensor, norm: str) -> torch.Tensor:
    """Per sample the L∞ or L2 size of ``delta`` (B, ...), in float64."""
    flat = delta.flatten(1).double()
    return flat.abs().amax(1) if norm == "Linf" else flat.norm(dim=1)


@functools.lru_cache(maxsize=None)
def _torchattacks_classes() -> dict[str, type]:
    """The torchattacks subclasses for what torchattacks lacks, made on first use (torchattacks imported here)."""
    from torchattacks.attack import Attack as Base

    class GradientAttack(Base):
        """Projected gradient ascent on :func:`attack_loss` in L∞ or L2: one class for FGSM, FGM, BIM, MIM,
        PGD and PGD-L2, with the loss an option (torchattacks' versions hard-code cross-entropy).

        L∞ steps are ``alpha·sign(g)``, L2 steps ``alpha·g/‖g‖₂``; with ``decay > 0`` the gradient, divided
        by its mean absolute value, accumulates as MI-FGSM's momentum. Every step is projected onto the
        ε-ball around the clean image and the [0, 1] box; a random start draws uniformly in the L∞ ball, or
        a random direction with a uniform radius in the L2 ball. With ``loss="ce"`` each step is exactly
        that of torchattacks' FGSM/BIM/MIFGSM/PGD/PGDL2 (the tests compare them).
        """

        def __init__(self, model, eps, norm="Linf", alpha=None, steps=1, random_start=False, decay=0.0,
                     loss="ce"):
            super().__init__("GradientAttack", model)
            if norm not in NORMS:
                raise UsageError(f"norm: '{norm}' is not one of {', '.join(NORMS)}")
            if not callable(loss):
                attack_loss(torch.zeros(1, 2), torch.zeros(1, dtype=torch.long), loss)  # reject a bad loss now
            self.eps, self.norm, self.steps, self.random_start = float(eps), norm, int(steps), bool(random_start)
            self.alpha = float(eps if alpha is None else alpha)
            self.decay, self.loss = float(decay), loss
            self.supported_mode = ["default"]

        def forward(self, images, labels):
            images = images.clone().detach().to(self.device)
            labels = labels.clone().detach().to(self.device)
            adv = images.clone()
            if self.random_start:
                if self.norm == "Linf":
                    adv = (adv + torch.empty_like(adv).uniform_(-self.eps, self.eps)).clamp(0, 1)
                else:
                    delta = torch.empty_like(adv).normal_()
                    size = delta.flatten(1).norm(dim=1).view(-1, *([1] * (adv.ndim - 1)))
                    radius = torch.zeros_like(size).uniform_(0, 1)
                    adv = (adv + delta * radius / size * self.eps).clamp(0, 1)
            momentum = torch.zeros_like(images)
            for _ in range(self.steps):
                adv.requires_grad_(True)
                cost = attack_loss(self.get_logits(adv), labels, self.loss)
                (grad,) = torch.autograd.grad(cost, adv)
                if self.decay:
                    grad = grad / grad.abs().mean(dim=tuple(range(1, grad.ndim)), keepdim=True)
                    grad = momentum = grad + momentum * self.decay
                if self.norm == "Linf":
                    step = grad.sign()
                else:
                    step = grad / (grad.flatten(1).norm(dim=1) + 1e-10).view(-1, *([1] * (grad.ndim - 1)))
                adv = project(images, adv.detach() + self.alpha * step, self.eps, self.norm)
            return adv

    class GaussianNoise(Base):
        """A sanity floor, not an attack: Gaussian noise rescaled to norm exactly ε (L2 or L∞), clipped to
        [0, 1]. Any real attack should break at least as many points at the same ε."""

        def __init__(self, model, eps=0.1, norm="L2", seed=0):
            super().__init__("GaussianNoise", model)
            self.eps, self.norm, self.seed = eps, norm, seed
            self.supported_mode = ["default"]

        def forward(self, images, labels=None):
            images = images.clone().detach().to(self.device)
            g = torch.Generator().manual_seed(int(self.seed))
            noise = torch.randn(images.shape, generator=g).to(images)
            flat = noise.flatten(1)
            size = flat.norm(dim=1) if self.norm == "L2" else flat.abs().amax(1)
            noise = noise / size.clamp_min(1e-12).view(-1, *([1] * (noise.ndim - 1)))
            return (images + self.eps * noise).clamp(0, 1).detach()

    classes = {"GradientAttack": GradientAttack, "GaussianNoise": GaussianNoise}
    for name, cls in classes.items():  # importable names in reprs and pickles: robustproto.attacks.extra.<name>
        cls.__qualname__ = name
    return classes


def __getattr__(name: str):
    """``GradientAttack`` and ``GaussianNoise`` are made (and torchattacks imported) on first access."""
    if name in ("GradientAttack", "GaussianNoise"):
        return _torchattacks_classes()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def gradient_attack(model: nn.Module, eps: float, norm: str = "Linf", loss: str | Callable = "ce",
                    **settings) -> Attack:
    """The loss-aware :class:`GradientAttack` (``settings``: ``alpha``, ``steps``, ``random_start``, ``decay``);
    ``loss="ce+margin"`` runs both, margin first, and keeps per point whichever fools the model (the CE run only
    on the points the margin run left); a callable ``loss(scores, y)`` is ascended as it is."""
    losses = [loss] if callable(loss) else loss.split("+")
    runs = [_torchattacks_classes()["GradientAttack"](model, eps, norm=norm, loss=part, **settings)
            for part in reversed(losses)]
    return runs[0] if len(runs) == 1 else _FirstSuccess(model, runs)


class _FirstSuccess:
    """Run fixed-budget attacks in turn, each on the points the previous ones did not fool; per point keep the
    first adversarial that fools ``model`` (every one is within the same budget, so any will do)."""

    def __init__(self, model: nn.Module, attacks: list):
        self.model, self.attacks = model, attacks

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        best = x.clone()
        left = torch.ones(len(y), dtype=torch.bool, device=x.device)
        for attack in self.attacks:
            idx = left.nonzero().squeeze(1)
            if not len(idx):
                break
            adv = attack(x[idx], y[idx]).detach()
            with torch.no_grad():
                fooled = self.model(adv).argmax(1) != y[idx]
            best[idx[fooled]] = adv[fooled]
            left[idx[fooled]] = False
        return best
