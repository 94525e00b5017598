"""Adversarial training as regularizers: ``pgd-at`` (Madry et al.), ``fgsm-rs`` (Wong et al.), ``trades``
(Zhang et al.).

Each one runs its inner maximisation in ``prepare_batch`` with the loss-aware gradient attack of
:mod:`robustproto.attacks` (:func:`~robustproto.attacks.gradient_attack`, the attack ``robustproto eval`` runs, so
training and evaluation ascend the same loss with the same steps and projections), then either replaces the batch
by the adversarial examples (``replaces_inputs``) or embeds them as extra inputs in the same backbone call.

The inner attack runs on the unwrapped model in EVAL mode (:func:`robustproto.utils.eval_mode`):

- BatchNorm normalises with its running statistics and does not update them, so the attack's K forward passes
  on perturbed images cannot corrupt the running statistics (in training mode each of them would move the
  running mean/var towards adversarial batch statistics, K times per step), and each example's attack does not
  depend on the rest of the batch (as in the reference implementations of PGD-AT and TRADES, which call
  ``model.eval()`` for the attack);
- dropout is off, so the attack ascends the loss of one function, not of a fresh random sub-network per step.

Every module gets back its own training flag afterwards (a frozen backbone stays frozen). The attack takes input
gradients only (``torch.autograd.grad`` with respect to the images): no parameter gets a gradient and no DDP hook
fires (the model is not the DDP-wrapped one). The training forward then embeds the adversarial examples in
training mode, like the clean batch.

ε is in pixel units (images in [0, 1], before the model's normalisation); ``eps`` may be given as a number or a
string fraction (``eps='8/255'``). Random starts draw from the global torch RNG, i.e. per process under DDP: a
2-process run then draws other starts than a 1-process run on the same global batch (its gradients are equal only
with ``random_start=False``, ``pgd-at``'s option, or when the processes' generators are arranged to continue one
stream, as the DDP test does).

With a regularizer that replaces the batch (``pgd-at`` with ``clean_weight=0``, ``fgsm-rs``), the logged
``train_loss`` and ``train_acc`` are those of the adversarial examples; the penalty logged as ``reg/<name>`` is 0.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from robustproto import RegularizedModel, Regularizer, StepContext
from robustproto.attacks import gradient_attack
from robustproto.config import NORMS
from robustproto.errors import UsageError
from robustproto.recipe import parse_eps as recipe_parse_eps
from robustproto.regularizer import BatchContext
from robustproto.utils import eval_mode

LOSS_OPTIONS = ("auto", "ce", "margin")


def parse_eps(name: str, eps: Any) -> float:
    """ε as a float ≥ 0: a number, or a string such as ``"8/255"`` or ``"0.03"`` (read as ``--eps`` reads it)."""
    values = recipe_parse_eps([eps], option=f"{name}: eps") if isinstance(eps, (str, int, float)) else None
    if not values or len(values) != 1 or isinstance(eps, bool) or not (math.isfinite(values[0]) and values[0] >= 0):
        raise UsageError(f"{name}: eps must be one number >= 0 or a fraction such as '8/255', got {eps!r}")
    return values[0]


def resolve_loss(loss: str, model: RegularizedModel) -> str:
    """``"auto"``: ``"ce"`` for a head whose scores are softmax logits (``scores_are_logits``), else ``"margin"``
    (cross-entropy on prototype scores measures their scale, see :func:`robustproto.attacks.attack_loss`)."""
    if loss != "auto":
        return loss
    return "ce" if getattr(model.head, "scores_are_logits", False) else "margin"


class _AdversarialBase(Regularizer):
    """What the three share: options, the ε warm-up, the inner attack in eval mode, the fooled share."""

    name = "adversarial"

    def __init__(self, eps: Any = "8/255", norm: str = "Linf", steps: int = 10, alpha: float | None = None,
                 random_start: bool = True, loss: str = "auto", warmup_epochs: float = 0.0):
        super().__init__()
        self.eps = parse_eps(self.name, eps)
        if norm not in NORMS:
            raise UsageError(f"{self.name}: norm must be one of {', '.join(NORMS)}, got {norm!r}")
        if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
            raise UsageError(f"{self.name}: steps must be an integer >= 1, got {steps!r}")
        if alpha is not None and not (isinstance(alpha, (int, float)) and alpha > 0):
            raise UsageError(f"{self.name}: alpha must be > 0 (pixel units), got {alpha!r}")
        if not isinstance(random_start, bool):
            raise UsageError(f"{self.name}: random_start must be true or false, got {random_start!r}")
        if loss not in LOSS_OPTIONS:
            raise UsageError(f"{self.name}: loss must be one of {', '.join(LOSS_OPTIONS)}, got {loss!r}")
        if not (isinstance(warmup_epochs, (int, float)) and warmup_epochs >= 0):
            raise UsageError(f"{self.name}: warmup_epochs must be >= 0, got {warmup_epochs!r}")
        self.norm, self.steps, self.random_start, self.loss = norm, steps, random_start, loss
        self.alpha_option = None if alpha is None else float(alpha)
        self.warmup_epochs = float(warmup_epochs)
        self.current_eps = self.eps
        self._adv: torch.Tensor | None = None  # this step's adversarial examples, between prepare_batch and penalty
        self._fooled = self._attacked = 0

    def eps_at(self, epoch: float) -> float:
        """ε after ``epoch`` epochs: a linear ramp from 0 to ``eps`` over ``warmup_epochs``, then ``eps``."""
        if self.warmup_epochs <= 0:
            return self.eps
        return self.eps * min(1.0, max(0.0, float(epoch)) / self.warmup_epochs)

    def default_alpha(self, eps: float) -> float:  # pragma: no cover - each subclass says
        raise NotImplementedError

    def attack_settings(self, eps: float) -> dict[str, Any]:
        alpha = self.alpha_option if self.alpha_option is not None else self.default_alpha(self.eps)
        if eps < self.eps:  # during the warm-up the step size shrinks with ε
            alpha *= eps / self.eps
        return {"alpha": alpha, "steps": self.steps, "random_start": self.random_start}

    def attack_loss(self, batch: BatchContext):
        return resolve_loss(self.loss, batch.model)

    def adversarial(self, batch: BatchContext) -> torch.Tensor:
        """The inner maximisation on the unwrapped model in eval mode; detached images within ε and [0, 1]."""
        eps = self.current_eps = self.eps_at(batch.epoch)
        x, y = batch.x.detach(), batch.y
        if eps == 0:
            adv = x.clone()
        else:
            with eval_mode(batch.model), torch.enable_grad():
                attack = gradient_attack(batch.model, eps, norm=self.norm, loss=self.attack_loss(batch),
                                         **self.attack_settings(eps))
                adv = attack(x, y).detach().to(x.dtype)
        return adv

    def count_fooled(self, scores: torch.Tensor, y: torch.Tensor) -> None:
        """Count the adversarial examples the training forward misclassifies (no extra forward pass)."""
        self._fooled += int((scores.detach().argmax(1) != y).sum())
        self._attacked += len(y)

    def metrics(self) -> dict[str, float]:
        share = self._fooled / max(self._attacked, 1)
        self._fooled = self._attacked = 0
        return {"eps": self.current_eps, "fooled": share}


class PGDAdversarialTraining(_AdversarialBase):
    """``pgd-at``: Madry et al. 2018, "Towards deep learning models resistant to adversarial attacks".

    Minimise the head's loss on the worst point of the ε-ball found by K steps of projected gradient ascent
    (:class:`robustproto.attacks.GradientAttack`, uniform random start).

    Options:
        eps: the budget, pixel units (``8/255``; a string fraction is read as such).
        norm: ``Linf`` or ``L2``.
        steps: K (10).
        alpha: the step size (``2.5·eps/steps``).
        random_start: start from a uniform point of the ball (True).
        loss: what the attack ascends: ``auto`` (``ce`` for a head whose scores are logits, else ``margin``),
            ``ce`` or ``margin``.
        clean_weight: 0 (Madry's objective): the adversarial examples replace the batch, so the clean batch is
            not even embedded; > 0: they are extra inputs, the penalty is the head's loss on them and the
            head's loss on the clean batch is weighted by ``clean_weight``.
        warmup_epochs: ε ramps linearly from 0 to ``eps`` over that many epochs (0: none).

    ``metrics()``: ``eps`` (the current ε) and ``fooled`` (the share of adversarial examples the training forward
    misclassified, since the last call; counted from the step's own scores, no extra forward pass).

    A GLVQ head whose adversarial examples are mostly misclassified (``μ > 0``) can lower its mean ``μ`` by moving
    every embedding far from all prototypes, where every ``μ`` tends to 0. Under Madry's objective at MNIST
    ε = 0.3 it did (REPRODUCTION.md, ``adv_mnist_cpu.sh``: 66 % clean, two prototypes merged); with
    ``clean_weight=1`` the clean term, whose ``μ`` is mostly negative, holds the embeddings near their prototypes.
    """

    name = "pgd-at"

    def __init__(self, eps: Any = "8/255", norm: str = "Linf", steps: int = 10, alpha: float | None = None,
                 random_start: bool = True, loss: str = "auto", clean_weight: float = 0.0,
                 warmup_epochs: float = 0.0):
        super().__init__(eps=eps, norm=norm, steps=steps, alpha=alpha, random_start=random_start, loss=loss,
                         warmup_epochs=warmup_epochs)
        if not (isinstance(clean_weight, (int, float)) and clean_weight >= 0):
            raise UsageError(f"pgd-at: clean_weight must be >= 0, got {clean_weight!r}")
        self.replaces_inputs = clean_weight == 0
        self.clean_weight = 1.0 if self.replaces_inputs else float(clean_weight)  # the core's weight of its loss

    def default_alpha(self, eps: float) -> float:
        return 2.5 * eps / self.steps

    def prepare_batch(self, batch: BatchContext) -> torch.Tensor | None:
        adv = self.adversarial(batch)
        if self.replaces_inputs:
            return adv
        self._adv = adv
        return None

    def extra_inputs(self, x: torch.Tensor) -> torch.Tensor | None:
        return None if self.replaces_inputs else self._adv

    def penalty(self, ctx: StepContext) -> torch.Tensor:
        if self.replaces_inputs:  # the head's loss on the replaced batch is the objective
            self.count_fooled(ctx.scores, ctx.y)
            return ctx.scores.new_zeros((), dtype=torch.float32)
        if ctx.extra_z is None:
            raise RuntimeError("pgd-at: penalty() needs the embeddings of this step's adversarial examples "
                               "(prepare_batch, then extra_inputs) in ctx.extra_z")
        self._adv = None
        z_adv = ctx.extra_z
        adv_scores = ctx.model.head(z_adv)
        self.count_fooled(adv_scores, ctx.y)
        return ctx.model.head.loss(z_adv, adv_scores, ctx.y).float()


class FastAdversarialTraining(_AdversarialBase):
    """``fgsm-rs``: Wong, Rice & Kolter 2020, "Fast is better than free: revisiting adversarial training".

    One signed-gradient step of size ``alpha`` from a uniform random point of the L∞ ε-ball, projected back onto
    the ball and [0, 1]; the result replaces the batch (the clean batch is not embedded).

    Options: ``eps`` (``8/255``), ``alpha`` (``1.25·eps``), ``norm`` (``Linf`` only), ``loss`` (as ``pgd-at``),
    ``warmup_epochs`` (0). ``metrics()`` as ``pgd-at``.
    """

    name = "fgsm-rs"
    replaces_inputs = True

    def __init__(self, eps: Any = "8/255", alpha: float | None = None, norm: str = "Linf", loss: str = "auto",
                 warmup_epochs: float = 0.0):
        if norm != "Linf":
            raise UsageError(f"fgsm-rs: norm must be Linf (FGSM with a random start is an L∞ method), got {norm!r}")
        super().__init__(eps=eps, norm=norm, steps=1, alpha=alpha, random_start=True, loss=loss,
                         warmup_epochs=warmup_epochs)

    def default_alpha(self, eps: float) -> float:
        return 1.25 * eps

    def prepare_batch(self, batch: BatchContext) -> torch.Tensor:
        return self.adversarial(batch)

    def penalty(self, ctx: StepContext) -> torch.Tensor:
        self.count_fooled(ctx.scores, ctx.y)
        return ctx.scores.new_zeros((), dtype=torch.float32)  # the head's loss on the replaced batch is it


def _kl(clean_scores: torch.Tensor, adv_scores: torch.Tensor) -> torch.Tensor:
    """Per sample KL(p(x) ‖ p(x_adv)) of the softmax of the scores, in float32."""
    log_p = F.log_softmax(clean_scores.float(), dim=1)
    log_q = F.log_softmax(adv_scores.float(), dim=1)
    return (log_p.exp() * (log_p - log_q)).sum(1)


class TRADES(_AdversarialBase):
    """``trades``: Zhang et al. 2019, "Theoretically principled trade-off between robustness and accuracy".

    Objective: the head's loss on the clean batch (the reference's cross-entropy for a ``linear`` head) +
    ``beta``·mean KL(p(x) ‖ p(x_adv)), p the softmax of the head's scores, with ``x_adv`` maximising that KL in the ε-ball (the gradient attack ascending a callable loss) and
    embedded as an extra input in the same backbone call as the batch. The attack's p(x) is computed once per
    step, in eval mode, and held fixed. It starts from a uniform random point of the ball (the TRADES reference
    starts at ``x + 0.001·N(0, 1)``: the KL's gradient vanishes at ``x_adv = x``, so some start is needed; the
    attack's own uniform start serves and keeps every iterate within ε).

    Options: ``eps`` (``8/255``), ``norm`` (``Linf`` or ``L2``), ``steps`` (10), ``alpha`` (``eps/4``, the
    reference's 0.007 at ε = 0.031), ``beta`` (6.0, the reference's CIFAR-10 value; on a linear model trained with
    a large learning rate it can keep the clean loss from falling, the tests train with 1.0), ``warmup_epochs`` (0).
    ``metrics()`` as ``pgd-at``.
    """

    name = "trades"

    def __init__(self, eps: Any = "8/255", norm: str = "Linf", steps: int = 10, alpha: float | None = None,
                 beta: float = 6.0, warmup_epochs: float = 0.0):
        super().__init__(eps=eps, norm=norm, steps=steps, alpha=alpha, random_start=True, loss="auto",
                         warmup_epochs=warmup_epochs)
        if not (isinstance(beta, (int, float)) and beta >= 0):
            raise UsageError(f"trades: beta must be >= 0, got {beta!r}")
        self.beta = float(beta)

    def default_alpha(self, eps: float) -> float:
        return eps / 4

    def attack_loss(self, batch: BatchContext):
        with torch.no_grad(), eval_mode(batch.model):
            clean = batch.model(batch.x.detach()).float()
        return lambda scores, y: _kl(clean, scores).sum()

    def prepare_batch(self, batch: BatchContext) -> None:
        self._adv = self.adversarial(batch)
        return None

    def extra_inputs(self, x: torch.Tensor) -> torch.Tensor | None:
        return self._adv

    def penalty(self, ctx: StepContext) -> torch.Tensor:
        if ctx.extra_z is None:
            raise RuntimeError("trades: penalty() needs the embeddings of this step's adversarial examples "
                               "(prepare_batch, then extra_inputs) in ctx.extra_z")
        self._adv = None
        with torch.autocast(ctx.scores.device.type, enabled=False):
            adv_scores = ctx.model.head(ctx.extra_z.float())
            self.count_fooled(adv_scores, ctx.y)
            return self.beta * _kl(ctx.scores.float(), adv_scores).mean()
