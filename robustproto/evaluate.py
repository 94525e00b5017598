"""Adversarial evaluation: robust accuracy over ε, minimal adversarial distances, gradient-masking checks.

:func:`evaluate` attacks any classifier on images in [0, 1] (a :class:`~robustproto.ProtoModel`
has its normalisation inside, so ε is in pixel units) with torchattacks and returns a report:

- ``results``: robust accuracy per attack, norm and ε, over the *whole* evaluated subset: clean
  misclassified points count as failures, attacks run only on the correctly classified ones.
- ``median_distance``: Saralajew et al. 2019's median-δ per norm and attack (δ = 0 for a misclassified
  point, the distance of the adversarial found, ∞ if none) and the ``worst_case`` (per sample the
  minimum over the attacks of that norm, then the median); ``threshold_accuracy`` the fraction of
  points whose δ exceeds the threshold (defaults t₂ = 1.5, t∞ = 0.3). Minimal-perturbation attacks
  (DeepFool, CW, FAB) give δ directly (each one's ``failures`` are counted); a fixed-budget attack's δ
  is the smallest adversarial it produced over the ε grid, refined by a per-sample bisection on ε only
  when ``bisection_steps > 0`` asks for it (each step costs up to one more attack run), searched up to
  the largest ε of the grid (or, without a grid, the largest possible distance in [0, 1]ᵈ).

Gradient attacks (FGSM, FGM, BIM, MIM, PGD, PGD-L2) take a ``loss``: ``ce``, ``margin`` or ``ce+margin``
(per point the worst of both); the default ``auto`` is ``ce`` for heads whose scores are softmax logits
and ``ce+margin`` otherwise, because cross-entropy on prototype scores measures their scale, not
robustness (see :func:`attack_loss`). ``fgsm@margin`` names an attack with its loss, so one report can
hold both. Every result row records the loss it used.

The model is attacked in eval mode: every wrapper is built in eval mode and the model is put back in
eval mode after every attack call (torchattacks restores the mode its wrapped module had), so no
dropout or batch statistics touch an attack or its verification; on return every module's mode and
every parameter's ``requires_grad`` are as they were. Randomness (random starts, Square) is seeded by
``seed`` in a forked RNG: identical calls give identical reports.
- ``warnings``: signals of gradient masking (a black-box attack beats a white-box one at the same
  ε; robust accuracy rising with ε; accuracy above the best constant guess at an ε that reaches the
  mid-grey image), a weakened AutoAttack, and CE-only evaluations.

Every attack's output is checked by re-running the model on the returned images: a perturbation
larger than ε, outside [0, 1] or not finite (beyond a float tolerance of 1e-5 absolute + 1e-5
relative) is an :class:`AttackError` (with ``strict=False`` the point counts as not broken and a
warning is added); an excess within the tolerance is projected back onto the ε-ball and the box
before the model is re-run, so every counted adversarial is valid. At ε = 0 the clean image is the only
admissible input, so no attack is called there (some divide by ε).

``∞`` is kept as ``float("inf")`` in the returned dict; :func:`report_json` (used by
``robustproto eval --report``) writes it as the string ``"inf"`` so the file is valid JSON.
"""

from __future__ import annotations

import functools
import json
import math
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from .config import DEFAULT_THRESHOLDS, NORMS, normalize_norm
from .errors import AttackError
from .utils import eval_mode, model_device

__all__ = ["ATTACKS", "AttackError", "evaluate", "report_json", "write_report", "robustness_figure",
           "save_robustness_curves"]

_ABS_TOL = 1e-5
_REL_TOL = 1e-5


@dataclass(frozen=True)
class AttackSpec:
    """One attack of the menu: which norms it works in, whether it is a minimal-perturbation attack
    (run once, gives a distance per point) or a fixed-budget one (run per ε), white- or black-box,
    its default options, and how to build it (``build(model, eps, norm, num_classes, options)``)."""

    norms: tuple[str, ...]
    minimal: bool
    white_box: bool
    defaults: Mapping[str, Any]
    build: Callable[..., Callable[[torch.Tensor, torch.Tensor], torch.Tensor]]
    summary: str


LOSSES = ("ce", "margin")


def attack_loss(scores: torch.Tensor, y: torch.Tensor, loss: str) -> torch.Tensor:
    """The quantity a gradient attack ascends, summed over the batch, in float32.

    ``"ce"``: softmax cross-entropy (mean, as torchattacks computes it). ``"margin"``: the best other
    score minus the true one, ``max_{j≠y} s_j − s_y`` (Carlini & Wagner's margin without κ). Prototype
    scores are negative squared distances with no natural scale: cross-entropy saturates as the scale
    grows (its input gradients vanish), while the sign or direction of the margin's gradient does not
    change when the scores are multiplied by a constant, so a margin attack measures robustness, not scale.
    """
    scores = scores.float()
    if loss == "ce":
        return nn.functional.cross_entropy(scores, y)
    if loss == "margin":
        true = scores.gather(1, y[:, None]).squeeze(1)
        other = scores.masked_fill(nn.functional.one_hot(y, scores.shape[1]).bool(), -math.inf).amax(1)
        return (other - true).sum()
    raise ValueError(f"loss: '{loss}' is not one of {', '.join(LOSSES)}")


@functools.lru_cache(maxsize=None)
def _extra_attacks():
    """torchattacks subclasses for what torchattacks lacks (imported lazily: ``import robustproto`` stays cheap)."""
    import torchattacks
    from torchattacks.attack import Attack

    class GradientAttack(Attack):
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
                raise ValueError(f"norm: '{norm}' is not one of {', '.join(NORMS)}")
            attack_loss(torch.zeros(1, 2), torch.zeros(1, dtype=torch.long), loss)  # reject a bad loss now
            self.eps, self.norm, self.steps, self.random_start = float(eps), norm, int(steps), bool(random_start)
            self.alpha = float(eps if alpha is None else alpha)
            self.decay, self.loss = float(decay), loss
            self.supported_mode = ["default"]

        def _project(self, images, adv):
            delta = adv - images
            if self.norm == "Linf":
                delta = delta.clamp(-self.eps, self.eps)
            else:
                norms = delta.flatten(1).norm(dim=1)
                delta = delta * torch.clamp(self.eps / norms, max=1.0).view(-1, *([1] * (delta.ndim - 1)))
            return (images + delta).clamp(0, 1).detach()

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
                adv = self._project(images, adv.detach() + self.alpha * step)
            return adv

    class GaussianNoise(Attack):
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

    return torchattacks, GradientAttack, GaussianNoise


def _max_distance(norm: str, shape: Sequence[int]) -> float:
    """The largest distance between two images in [0, 1]ᵈ: 1 in L∞, sqrt(d) in L2."""
    return 1.0 if norm == "Linf" else math.sqrt(math.prod(shape))


def _step_size(opts: Mapping[str, Any], eps: float, rule: float) -> float:
    rel = opts["rel_stepsize"] if opts.get("rel_stepsize") is not None else rule / opts["steps"]
    return rel * eps


def _gradient(model, o, eps, norm, **settings):
    """The loss-aware gradient attack with loss ``o["loss"]``; ``"ce+margin"`` runs both, margin first, and
    keeps per point whichever fools the model (the CE run only on the points the margin run left)."""
    losses = o["loss"].split("+")
    runs = [_extra_attacks()[1](model, eps, norm=norm, loss=loss, **settings) for loss in reversed(losses)]
    return runs[0] if len(runs) == 1 else _FirstSuccess(model, runs)


def _build_fgsm(model, eps, norm, k, o):
    return _gradient(model, o, eps, "Linf", alpha=eps, steps=1)


def _build_fgm(model, eps, norm, k, o):
    return _gradient(model, o, eps, "L2", alpha=eps, steps=1)


def _build_bim(model, eps, norm, k, o):
    return _gradient(model, o, eps, "Linf", alpha=_step_size(o, eps, 1.0), steps=o["steps"])


def _build_mim(model, eps, norm, k, o):
    return _gradient(model, o, eps, "Linf", alpha=_step_size(o, eps, 1.0), steps=o["steps"], decay=o["decay"])


def _build_pgd(model, eps, norm, k, o):
    return _gradient(model, o, eps, "Linf", alpha=_step_size(o, eps, 2.5), steps=o["steps"],
                     random_start=o["random_start"])


def _build_pgdl2(model, eps, norm, k, o):
    return _gradient(model, o, eps, "L2", alpha=_step_size(o, eps, 2.5), steps=o["steps"],
                     random_start=o["random_start"])


def _build_deepfool(model, eps, norm, k, o):
    return _extra_attacks()[0].DeepFool(model, steps=o["steps"], overshoot=o["overshoot"])


def _build_cw(model, eps, norm, k, o):
    """torchattacks' CW has one fixed ``c``; CW runs once per ``c`` in a list and each point keeps its smallest
    adversarial (a coarse search over c), on scores rescaled per sample to a unit range (:class:`_UnitScores`)."""
    cs = o["c"] if isinstance(o["c"], (list, tuple)) else [o["c"]]
    unit = _UnitScores(model)
    runs = [_extra_attacks()[0].CW(unit, c=float(c), kappa=o["kappa"], steps=o["steps"], lr=o["lr"]) for c in cs]
    return _SmallestOf(model, runs, norm)


class _UnitScores(nn.Module):
    """``(scores − min) / (max − min)`` per sample, the shift and scale held constant (detached): the same
    argmax, all scores in [0, 1].

    torchattacks' CW finds the best other class as ``max((1 − onehot) · scores)``, which is 0, not the best
    other score, when scores are negative (prototype heads return negative distances): its loss would be
    flat; scores in [0, 1] fix that. The per-sample scale makes CW's trade-off ``‖δ‖² + c·margin`` the same
    for a model and its rescaled twin (prototype scores have no natural scale), so one list of ``c`` fits both.

    Built in eval mode and kept there: torchattacks puts the module it wraps back into the mode it had when
    the attack was called, and a wrapper in training mode would switch the whole model to training mode.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scores = self.model(x).float()
        low, high = scores.detach().amin(1, keepdim=True), scores.detach().amax(1, keepdim=True)
        return (scores - low) / (high - low).clamp_min(1e-30)


class _SmallestOf:
    """Run several attacks on the same points; per point keep the smallest perturbation that fools ``model``."""

    def __init__(self, model: nn.Module, attacks: list, norm: str):
        self.model, self.attacks, self.norm = model, attacks, norm

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        best = x.clone()
        best_dist = torch.full((len(y),), math.inf, dtype=torch.float64, device=x.device)
        for attack in self.attacks:
            adv = attack(x, y).detach()
            with torch.no_grad():
                fooled = self.model(adv).argmax(1) != y
            dist = torch.where(fooled, _norms(adv - x, self.norm), torch.full_like(best_dist, math.inf))
            better = dist < best_dist
            best[better] = adv[better]
            best_dist = torch.minimum(best_dist, dist)
        return best


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


def _build_fab(model, eps, norm, k, o):
    # minimal mode: FAB only uses eps to reject results larger than it (and for restarts' random starts)
    return _extra_attacks()[0].FAB(model, norm=norm, eps=eps, steps=o["steps"], n_restarts=o["n_restarts"],
                                   alpha_max=o["alpha_max"], eta=o["eta"], beta=o["beta"], seed=o["seed"],
                                   multi_targeted=False, n_classes=k)


def _build_square(model, eps, norm, k, o):
    return _extra_attacks()[0].Square(model, norm=norm, eps=eps, n_queries=o["n_queries"],
                                      n_restarts=o["n_restarts"], p_init=o["p_init"], seed=o["seed"])


def _build_autoattack(model, eps, norm, k, o):
    """AutoAttack's standard suite, built from its parts with the original settings (Croce & Hein 2020):
    APGD-CE and APGD-T (DLR loss, 9 target classes) with 100 steps, FAB-T with 100 steps and 9 targets,
    Square with 5000 queries, one restart each, run in sequence on the points still robust.
    (``torchattacks.AutoAttack(version="standard")`` runs its APGD/FAB parts with 10 steps.)"""
    ta = _extra_attacks()[0]
    if k < 4:
        raise ValueError(f"autoattack needs at least 4 classes (APGD-T's DLR loss), the model has {k}")
    targets = min(o["n_target_classes"], k - 1)
    parts = [
        ta.APGD(model, norm=norm, eps=eps, steps=o["steps"], n_restarts=1, seed=o["seed"], loss="ce"),
        ta.APGDT(model, norm=norm, eps=eps, steps=o["steps"], n_restarts=1, seed=o["seed"], n_classes=targets + 1),
        ta.FAB(model, norm=norm, eps=eps, steps=o["steps"], n_restarts=1, seed=o["seed"], multi_targeted=True,
               n_classes=targets + 1),
        ta.Square(model, norm=norm, eps=eps, n_queries=o["n_queries"], n_restarts=1, seed=o["seed"]),
    ]
    return ta.MultiAttack(parts)


def _build_gaussian(model, eps, norm, k, o):
    return _extra_attacks()[2](model, eps=eps, norm=norm, seed=o["seed"])


_ITERATIVE = {"steps": 10, "rel_stepsize": None, "loss": "auto"}
_PGD = {"steps": 20, "rel_stepsize": None, "random_start": True, "loss": "auto"}
ATTACKS: dict[str, AttackSpec] = {
    "fgsm": AttackSpec(("Linf",), False, True, {"loss": "auto"}, _build_fgsm, "one signed-gradient step of size ε"),
    "fgm": AttackSpec(("L2",), False, True, {"loss": "auto"}, _build_fgm, "one L2-normalised gradient step of size ε"),
    "bim": AttackSpec(("Linf",), False, True, dict(_ITERATIVE), _build_bim,
                      "iterative FGSM, step ε/steps (rel_stepsize), no random start"),
    "mim": AttackSpec(("Linf",), False, True, {**_ITERATIVE, "decay": 1.0}, _build_mim,
                      "momentum iterative FGSM, step ε/steps, decay 1"),
    "pgd": AttackSpec(("Linf",), False, True, dict(_PGD), _build_pgd,
                      "PGD with random start, step 2.5·ε/steps; pgd-N sets steps"),
    "pgd-l2": AttackSpec(("L2",), False, True, dict(_PGD), _build_pgdl2,
                         "PGD in L2 with random start, step 2.5·ε/steps"),
    "deepfool": AttackSpec(("L2",), True, True, {"steps": 50, "overshoot": 0.02}, _build_deepfool,
                           "minimal L2 (linearised boundary steps)"),
    "cw": AttackSpec(("L2",), True, True, {"c": [0.1, 1.0, 10.0, 100.0], "kappa": 0.0, "steps": 100, "lr": 0.01},
                     _build_cw, "minimal L2 Carlini-Wagner (margin loss on scores scaled to a unit range per "
                                "sample), one run per c, smallest adversarial kept"),
    "fab": AttackSpec(NORMS, True, True, {"steps": 100, "n_restarts": 1, "alpha_max": 0.1, "eta": 1.05, "beta": 0.9,
                                          "seed": 0}, _build_fab, "minimal FAB (untargeted)"),
    "square": AttackSpec(NORMS, False, False, {"n_queries": 5000, "n_restarts": 1, "p_init": 0.8, "seed": 0},
                         _build_square, "black-box Square attack (margin loss)"),
    "autoattack": AttackSpec(NORMS, False, True, {"steps": 100, "n_queries": 5000, "n_target_classes": 9, "seed": 0},
                             _build_autoattack, "AutoAttack standard: APGD-CE, APGD-T, FAB-T, Square"),
    "gaussian": AttackSpec(NORMS, False, False, {"seed": 0}, _build_gaussian,
                           "Gaussian noise of norm ε (sanity floor)"),
}
# a gradient attack's `loss`: "auto" is "ce" for heads whose scores are softmax logits, else "ce+margin"
LOSS_CHOICES = ("auto", "ce", "margin", "ce+margin")
_STANDARD_AUTOATTACK = {"steps": 100, "n_queries": 5000, "n_target_classes": 9}


def _parse_attack(name: str, options: Mapping[str, Mapping[str, Any]]) -> tuple[str, AttackSpec, dict[str, Any]]:
    """``"pgd-20"`` → (``"pgd"``, spec, options with steps=20); ``"fgsm@margin"`` sets the loss; options given
    for the full name or the bare attack override the defaults; unknown names and options are ValueErrors."""
    text = str(name).strip().lower()
    key, _, loss = text.partition("@")
    steps = None
    if key not in ATTACKS and (m := re.fullmatch(r"(.+)-(\d+)", key)) and m.group(1) in ATTACKS:
        key, steps = m.group(1), int(m.group(2))
    if key not in ATTACKS:
        raise ValueError(f"attack: unknown '{name}' (known: {', '.join(ATTACKS)}; pgd-20 etc. set the steps, "
                         "fgsm@margin etc. the loss)")
    spec = ATTACKS[key]
    opts = dict(spec.defaults)
    if steps is not None:
        if "steps" not in opts:
            raise ValueError(f"attack '{name}': {key} has no steps to set")
        opts["steps"] = steps
    given = dict(options.get(str(name), options.get(key, {})) or {})
    unknown = sorted(set(given) - set(opts))
    if unknown:
        raise ValueError(f"attack '{name}': unknown option(s) {', '.join(unknown)} (known: {', '.join(opts) or 'none'})")
    opts.update(given)
    if loss:
        if "loss" not in opts:
            raise ValueError(f"attack '{name}': {key} has no loss to choose (gradient attacks have: "
                             f"{', '.join(k for k, s in ATTACKS.items() if 'loss' in s.defaults)})")
        opts["loss"] = loss
    if "loss" in opts and opts["loss"] not in LOSS_CHOICES:
        raise ValueError(f"attack '{name}': loss '{opts['loss']}' is not one of {', '.join(LOSS_CHOICES)}")
    return key, spec, opts


def default_loss(model: nn.Module) -> str:
    """The loss ``"auto"`` stands for: ``"ce"`` when the model's head declares that its scores are softmax
    logits (``Head.scores_are_logits``, the ``linear`` head), else ``"ce+margin"``, the per-point worst of both
    (prototype scores saturate cross-entropy; see :func:`attack_loss`)."""
    head = getattr(model, "head", None)
    return "ce" if getattr(head, "scores_are_logits", False) else "ce+margin"


# ---------------------------------------------------------------------------------------------- data


def _collect(data, n_samples: int | None, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``n_samples`` images and labels of a DataLoader, a Dataset or an ``(x, y)`` pair, on the CPU."""
    if isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(t, torch.Tensor) for t in data):
        x, y = data
        if n_samples is not None:
            x, y = x[:n_samples], y[:n_samples]
    else:
        if isinstance(data, Dataset):
            data = DataLoader(data, batch_size=batch_size, shuffle=False)
        if not isinstance(data, Iterable):
            raise TypeError(f"data must be a DataLoader, a Dataset or an (images, labels) pair, not {type(data).__name__}")
        xs, ys, seen = [], [], 0
        for batch in data:
            bx, by = batch[0], batch[1]
            xs.append(bx.cpu())
            ys.append(torch.as_tensor(by).cpu())
            seen += len(by)
            if n_samples is not None and seen >= n_samples:
                break
        if not xs:
            raise ValueError("no data to evaluate: the loader is empty")
        x, y = torch.cat(xs)[:n_samples], torch.cat(ys)[:n_samples]
    if len(y) == 0:
        raise ValueError("no data to evaluate: n_samples is 0 or the data is empty")
    x = x.float()
    if x.ndim != 4 or len(x) != len(y):
        raise ValueError(f"expected images (N, C, H, W) and N labels, got {tuple(x.shape)} and {tuple(y.shape)}")
    if float(x.min()) < 0 or float(x.max()) > 1:
        raise ValueError("images must be in [0, 1] (the normalisation lives inside the model, so ε is in pixels); "
                         f"got values in [{float(x.min()):.3g}, {float(x.max()):.3g}]")
    return x, y.long()


@torch.no_grad()
def _predict(model: nn.Module, x: torch.Tensor, batch_size: int, device) -> torch.Tensor:
    return torch.cat([model(chunk.to(device)).argmax(1).cpu() for chunk in x.split(batch_size)])


def _norms(delta: torch.Tensor, norm: str) -> torch.Tensor:
    flat = delta.flatten(1).double()
    return flat.abs().amax(1) if norm == "Linf" else flat.norm(dim=1)


# ---------------------------------------------------------------------------------------------- running


@dataclass
class _Outcome:
    success: torch.Tensor   # (n,) bool: verified adversarial
    distance: torch.Tensor  # (n,) float64: its distance, inf where none
    invalid: int            # outputs rejected by the verification
    worst_excess: float     # the largest violation seen (for the error message)
    examples: torch.Tensor  # the verified images (clean where no adversarial), for pictures


def _verify(x: torch.Tensor, adv: torch.Tensor, eps: float | None, norm: str) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Check an attack's output; project a float-rounding excess. Returns (images, valid mask, worst excess)."""
    adv = adv.detach().to(x.dtype)
    finite = torch.isfinite(adv.flatten(1)).all(1)
    adv = torch.where(torch.isfinite(adv), adv, x)
    flat = adv.flatten(1)
    box_excess = torch.maximum(-flat.amin(1), flat.amax(1) - 1).clamp_min(0).double()
    adv = adv.clamp(0, 1)
    excess = box_excess
    if eps is not None:
        dist = _norms(adv - x, norm)
        excess = torch.maximum(excess, (dist - eps).clamp_min(0))
        tol = _ABS_TOL + _REL_TOL * eps
        over = dist > eps
        if over.any():  # within tolerance: back onto the ε-ball (the box is convex and holds x: stays inside)
            delta = adv - x
            if norm == "Linf":
                delta = delta.clamp(-eps, eps)
            else:
                scale = (eps / dist.clamp_min(1e-30)).clamp(max=1.0).to(x.dtype)
                delta = delta * scale.view(-1, *([1] * (x.ndim - 1)))
            adv = torch.where(over.view(-1, *([1] * (x.ndim - 1))), (x + delta).clamp(0, 1), adv)
    else:
        tol = _ABS_TOL
    valid = finite & (excess <= tol)
    adv = torch.where(valid.view(-1, *([1] * (x.ndim - 1))), adv, x)
    worst = float(excess.max()) if len(excess) else 0.0
    return adv, valid, (worst if finite.all() else float("inf"))


def _run(attack, model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float | None, norm: str,
         batch_size: int, device) -> _Outcome:
    """Attack ``x`` (all correctly classified) in batches; verify every output by re-running the model."""
    n = len(y)
    success = torch.zeros(n, dtype=torch.bool)
    distance = torch.full((n,), math.inf, dtype=torch.float64)
    examples = x.clone()
    invalid, worst = 0, 0.0
    for start in range(0, n, batch_size):
        sl = slice(start, start + batch_size)
        bx, by = x[sl].to(device), y[sl].to(device)
        if eps == 0:  # the clean image is the only one in a zero budget (some attacks divide by ε)
            adv = bx
        else:
            with torch.enable_grad():
                adv = attack(bx, by)
            # torchattacks returns the module it wraps to the mode that module had; whatever an attack did,
            # verification and every later attack see the eval-mode model
            model.eval()
        adv, valid, excess = _verify(bx, adv, eps, norm)
        with torch.no_grad():
            fooled = (model(adv).argmax(1) != by) & valid
        invalid += int((~valid).sum())
        worst = max(worst, excess)
        d = _norms(adv - bx, norm).cpu()
        success[sl] = fooled.cpu()
        distance[sl] = torch.where(fooled.cpu(), d, torch.full_like(d, math.inf))
        examples[sl] = torch.where(fooled.view(-1, *([1] * (x.ndim - 1))), adv, bx).cpu()
    return _Outcome(success, distance, invalid, worst, examples)


def _check(outcome: _Outcome, label: str, strict: bool, warnings: list[str]) -> None:
    if not outcome.invalid:
        return
    message = (f"{label} returned {outcome.invalid} image(s) outside its budget or the [0, 1] box (worst excess "
               f"{outcome.worst_excess:.3g} > tolerance {_ABS_TOL:g} + {_REL_TOL:g}·ε)")
    if strict:
        raise AttackError(message + "; they are not counted as adversarial (pass strict=False to count them as "
                                    "not broken and go on)")
    warnings.append(message + "; counted as not broken")


def _bisect(build, model, x, y, lo, hi, dist, steps, norm, batch_size, device, strict, label, warnings) -> None:
    """Per-sample bisection on ε in [lo, hi] (hi: a budget that broke the point): points that share a bracket
    share the attack call, so round r costs at most 2^r calls. Updates ``dist`` with every smaller adversarial."""
    active = torch.isfinite(hi)
    for _ in range(steps):
        if not active.any():
            return
        mid = (lo + hi) / 2
        for value in torch.unique(mid[active]).tolist():
            idx = (active & (mid == value)).nonzero().squeeze(1)
            if value <= 0:
                continue
            out = _run(build(value), model, x[idx], y[idx], value, norm, batch_size, device)
            _check(out, f"{label} at eps={value:g}", strict, warnings)
            hi[idx] = torch.where(out.success, torch.full_like(hi[idx], value), hi[idx])
            lo[idx] = torch.where(out.success, lo[idx], torch.full_like(lo[idx], value))
            dist[idx] = torch.minimum(dist[idx], out.distance)


def _median(values: torch.Tensor) -> float:
    """Median with Saralajew et al.'s convention: the mean of the two middle values (∞ if either is ∞)."""
    import numpy as np

    return float(np.median(values.numpy())) if len(values) else math.nan


# ---------------------------------------------------------------------------------------------- API


def _plan(attacks, eps, norm) -> dict[str, tuple[list[str], list[float]]]:
    """{norm: (attack names, ε list)} from a flat list + one norm, or from mappings keyed by norm."""
    if isinstance(attacks, str):
        attacks = [attacks]
    if isinstance(attacks, Mapping):
        by_norm = {normalize_norm(k): list(v if not isinstance(v, str) else [v]) for k, v in attacks.items()}
    else:
        by_norm = {normalize_norm(norm): list(attacks)}
    if isinstance(eps, Mapping):
        eps_by_norm = {normalize_norm(k): v for k, v in eps.items()}
    else:
        eps_by_norm = {k: eps for k in by_norm}
    plan = {}
    for n, names in by_norm.items():
        if not names:
            raise ValueError(f"attack: no attack given for norm {n}")
        values = sorted({float(e) for e in (eps_by_norm.get(n) or [])})
        if any(e < 0 or not math.isfinite(e) for e in values):
            raise ValueError(f"eps: budgets must be finite and ≥ 0, got {values}")
        plan[n] = (list(names), values)
    return plan


def evaluate(
    model: nn.Module,
    data,
    attacks: Sequence[str] | Mapping[str, Sequence[str]] = ("fgsm",),
    eps: Sequence[float] | Mapping[str, Sequence[float]] | None = None,
    norm: str = "Linf",
    n_samples: int | None = None,
    batch_size: int = 128,
    attack_options: Mapping[str, Mapping[str, Any]] | None = None,
    thresholds: Mapping[str, float] | None = None,
    bisection_steps: int = 0,
    strict: bool = True,
    seed: int = 0,
    model_name: str | None = None,
    dataset_name: str | None = None,
    plot: str | Path | None = None,
    save_examples: str | Path | None = None,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Attack ``model`` on ``data`` and return the report (see the module docstring for every field).

    Args:
        model: a classifier on images in [0, 1] returning class scores (any ``nn.Module``); it is
            evaluated in eval mode and restored afterwards.
        data: a DataLoader, a Dataset of ``(image, label)`` or an ``(images, labels)`` tensor pair.
        attacks: names from :data:`ATTACKS` (``pgd-20``, ``pgd-100`` set the steps), all run in ``norm``;
            or ``{norm: [names]}`` to evaluate several norms in one report.
        eps: the budgets (pixel units) of the robustness curves, or ``{norm: [budgets]}``.
            Minimal attacks need none (their curve is read off their distances).
        n_samples: evaluate the first N points (default: all).
        attack_options: ``{attack: {option: value}}`` over the defaults in ``ATTACKS[name].defaults``
            (e.g. ``{"square": {"n_queries": 1000}}``); recorded in ``settings``.
        thresholds: ``{norm: t}`` for the threshold accuracy (default t₂ = 1.5, t∞ = 0.3).
        bisection_steps: per-sample bisection steps on ε refining a fixed-budget attack's minimal distance
            (Saralajew et al.'s median-δ); each step costs up to one more attack run, so the default 0 runs a
            fixed-budget attack once per ε and its distances are the smallest adversarial over the ε grid (an
            upper bound of the minimal distance, as ``settings["fixed_budget_distances"]`` says).
        strict: raise :class:`AttackError` on an invalid attack output (else warn and count it as not broken).
        seed: seeds every attack's randomness (random starts, Square) inside a forked RNG, so two identical
            calls give identical reports and the caller's RNG state is left as it was.
        plot, save_examples: PNG paths for the robustness curves and a grid of adversarial examples.
        log: called with one line per finished attack (e.g. ``print``).
    """
    plan = _plan(attacks, eps, norm)
    options = dict(attack_options or {})
    parsed = {n: [(name, *_parse_attack(name, options)) for name in names] for n, (names, _) in plan.items()}
    for n, entries in parsed.items():
        for name, key, spec, _ in entries:
            if n not in spec.norms:
                alternatives = [k for k, s in ATTACKS.items() if n in s.norms]
                raise ValueError(f"attack '{name}' works in {'/'.join(spec.norms)}, not {n}: pass --norm "
                                 f"{spec.norms[0]}, or an attack for {n} ({', '.join(alternatives)})")
        if len({e[0] for e in entries}) != len(entries):
            raise ValueError(f"attack: a name is given twice for norm {n}")
        for name, _, spec, _ in entries:
            if not spec.minimal and not plan[n][1] and not bisection_steps:
                raise ValueError(f"attack '{name}' has a fixed budget: give eps (e.g. --eps 0.1,0.3) or "
                                 "bisection_steps > 0 to search its minimal distance")
    thresholds = {**DEFAULT_THRESHOLDS, **{normalize_norm(k): float(v) for k, v in (thresholds or {}).items()}}
    for key, value, minimum in (("batch_size", batch_size, 1), ("n_samples", n_samples, 1),
                                ("bisection_steps", bisection_steps, 0)):
        if value is not None and value < minimum:
            raise ValueError(f"{key}: must be ≥ {minimum}, got {value}")

    x, y = _collect(data, n_samples, batch_size)
    n = len(y)
    device = model_device(model)
    grads = {p: p.requires_grad for p in model.parameters()}
    for p in grads:  # attacks need input gradients only; weight gradients would be wasted work
        p.requires_grad_(False)
    devices = [device] if device.type == "cuda" else []
    try:
        with eval_mode(model), torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            return _evaluate(model, x, y, parsed, plan, thresholds, batch_size, bisection_steps, strict, device,
                             model_name, dataset_name, plot, save_examples, log)
    finally:
        for p, flag in grads.items():
            p.requires_grad_(flag)


def _evaluate(model, x, y, parsed, plan, thresholds, batch_size, bisection_steps, strict, device, model_name,
              dataset_name, plot, save_examples, log) -> dict[str, Any]:
    n = len(y)
    t0 = time.perf_counter()
    pred = _predict(model, x, batch_size, device)
    correct = pred == y
    clean_seconds = time.perf_counter() - t0
    with torch.no_grad():
        num_classes = int(model(x[:1].to(device)).shape[1])
    cx, cy = x[correct], y[correct]
    warnings: list[str] = []
    results: list[dict[str, Any]] = []
    distances: dict[str, dict[str, torch.Tensor]] = {}
    failures: dict[str, dict[str, int]] = {}
    distance_seconds: dict[str, dict[str, float]] = {}
    loss = default_loss(model)
    settings: dict[str, Any] = {"attacks": {}, "bisection_steps": bisection_steps,
                                "fixed_budget_distances": (
                                    f"refined per point by {bisection_steps} bisection steps on eps" if bisection_steps
                                    else "the smallest adversarial over the eps grid, not refined (an upper bound of "
                                         "the minimal distance; pass bisection_steps > 0 for Saralajew et al.'s "
                                         "median-delta)"),
                                "loss_auto": loss,
                                "verification": f"re-run on the returned images; tolerance {_ABS_TOL:g} + "
                                                f"{_REL_TOL:g}·eps, excess within it projected; "
                                                f"strict={strict}",
                                "infinity_in_json": "the string \"inf\""}
    examples: list[tuple[str, torch.Tensor]] = []

    def full(values: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(n, dtype=torch.float64)  # misclassified: δ = 0
        out[correct] = values
        return out

    for run_norm, entries in parsed.items():
        eps_list = plan[run_norm][1]
        distances[run_norm], failures[run_norm], distance_seconds[run_norm] = {}, {}, {}
        for name, key, spec, opts in entries:
            if opts.get("loss") == "auto":
                opts = {**opts, "loss": loss}
            label = f"{name} ({run_norm})"
            recorded = {"attack": key, "norm": run_norm, "minimal": spec.minimal, "white_box": spec.white_box,
                        "about": spec.summary, **opts}
            if key == "autoattack":
                standard = all(opts[k] >= v for k, v in _STANDARD_AUTOATTACK.items() if k != "n_target_classes") \
                    and opts["n_target_classes"] >= min(9, num_classes - 1)
                recorded["version"] = "standard" if standard else "weakened (not standard)"
                if not standard:
                    warnings.append(f"{label}: run with {opts}, weaker than the standard AutoAttack "
                                    f"({_STANDARD_AUTOATTACK}); do not report it as AutoAttack standard")
            settings["attacks"][f"{name}/{run_norm}"] = recorded

            def build(e, key=key, spec=spec, opts=opts):
                return spec.build(model, e, run_norm, num_classes, opts)

            if spec.minimal:
                t = time.perf_counter()
                out = _run(build(_max_distance(run_norm, x.shape[1:])), model, cx, cy, None, run_norm,
                           batch_size, device)
                seconds = time.perf_counter() - t
                _check(out, label, strict, warnings)
                dist = full(out.distance)
                failures[run_norm][name] = int((~out.success).sum())
                distance_seconds[run_norm][name] = seconds
                for e in eps_list:
                    results.append({"attack": name, "norm": run_norm, "eps": e,
                                    "robust_accuracy": float((dist > e).double().mean()), "seconds": seconds,
                                    "from": "minimal distances (one run)"})
                examples.append((label, out.examples))
            else:
                dist = full(torch.full((len(cy),), math.inf, dtype=torch.float64))
                hi = torch.full((len(cy),), math.inf, dtype=torch.float64)
                lo = torch.zeros(len(cy), dtype=torch.float64)
                last = None
                for e in eps_list:
                    t = time.perf_counter()
                    out = _run(build(e), model, cx, cy, e, run_norm, batch_size, device)
                    seconds = time.perf_counter() - t
                    _check(out, f"{label} at eps={e:g}", strict, warnings)
                    robust = int(len(cy) - out.success.sum())
                    results.append({"attack": name, "norm": run_norm, "eps": e, "robust_accuracy": robust / n,
                                    "seconds": seconds, **({"loss": opts["loss"]} if "loss" in opts else {})})
                    newly = out.success & ~torch.isfinite(hi)
                    hi[newly] = e
                    lo[~out.success & (lo < e) & (e < hi)] = e
                    dist[correct] = torch.minimum(dist[correct], out.distance)
                    last = out
                t = time.perf_counter()
                top = eps_list[-1] if eps_list else _max_distance(run_norm, x.shape[1:])
                if not eps_list and bisection_steps:  # no grid: start the search from the largest possible budget
                    out = _run(build(top), model, cx, cy, top, run_norm, batch_size, device)
                    _check(out, f"{label} at eps={top:g}", strict, warnings)
                    hi[out.success] = top
                    last = out
                    sub = dist[correct]
                    dist[correct] = torch.minimum(sub, out.distance)
                if bisection_steps:
                    sub = dist[correct].clone()
                    _bisect(build, model, cx, cy, lo, hi, sub, bisection_steps, run_norm, batch_size, device, strict,
                            label, warnings)
                    dist[correct] = sub
                distance_seconds[run_norm][name] = time.perf_counter() - t
                if last is not None:
                    examples.append((f"{label} eps={top:g}", last.examples))
            distances[run_norm][name] = dist
            if log:
                log(f"{label}: median distance {_median(dist):.4g}"
                    + (f", robust accuracy at eps={eps_list[-1]:g}: "
                       f"{[r for r in results if r['attack'] == name and r['norm'] == run_norm][-1]['robust_accuracy']:.4f}"
                       if eps_list else ""))

    median_distance, threshold_accuracy = {}, {}
    for run_norm, by_attack in distances.items():
        worst = torch.stack(list(by_attack.values())).amin(0)
        t = thresholds[run_norm]
        median_distance[run_norm] = {**{k: _median(v) for k, v in by_attack.items()}, "worst_case": _median(worst)}
        threshold_accuracy[run_norm] = {"threshold": t, **{k: float((v > t).double().mean()) for k, v in
                                                          by_attack.items()},
                                        "worst_case": float((worst > t).double().mean())}
        distances[run_norm]["worst_case"] = worst

    class_share = float(torch.bincount(y).max()) / n
    warnings += _masking_warnings(results, parsed, n, class_share, x.shape[1:], loss)
    report = {
        "model": model_name or _model_name(model),
        "dataset": dataset_name or "tensors",
        "n_samples": n,
        "clean_accuracy": float(correct.double().mean()),
        "results": results,
        "median_distance": median_distance,
        "threshold_accuracy": threshold_accuracy,
        "minimal_attack_failures": failures,
        "warnings": warnings,
        "distance_seconds": distance_seconds,
        "clean_seconds": clean_seconds,
        "settings": settings,
        "distances": {k: {a: v.tolist() for a, v in d.items()} for k, d in distances.items()},
    }
    if plot:
        save_robustness_curves(report, plot)
    if save_examples:
        _save_examples(x[correct], examples, save_examples)
    return report


def _model_name(model: nn.Module) -> str:
    spec = getattr(model, "spec", None) or {}
    if spec.get("backbone") and spec.get("head"):
        return f"{spec['backbone']}+{spec['head']}"
    return type(model).__name__


def _masking_warnings(results: list[dict], parsed, n: int, class_share: float, shape,
                       logits_expected: str) -> list[str]:
    """Signals of gradient masking in the robustness curves."""
    out = []
    slack = 0.5 / n  # one point's difference is a real difference
    by = {}
    for r in results:
        by.setdefault((r["attack"], r["norm"]), []).append(r)
    kinds = {(name, n_): spec for n_, entries in parsed.items() for name, _, spec, _ in entries}
    for (name, run_norm), rows in by.items():
        spec = kinds[(name, run_norm)]
        rows = sorted(rows, key=lambda r: r["eps"])
        if spec.white_box or name == "square":
            for a, b in zip(rows, rows[1:]):
                if b["robust_accuracy"] > a["robust_accuracy"] + slack:
                    out.append(f"{name} ({run_norm}): robust accuracy rises from {a['robust_accuracy']:.4f} at "
                               f"eps={a['eps']:g} to {b['robust_accuracy']:.4f} at eps={b['eps']:g}: a stronger "
                               "budget should never help the model (gradient masking or a failing attack)")
            positive = [r for r in rows if r["eps"] > 0]
            if spec.white_box and len(positive) >= 3 and positive[0]["robust_accuracy"] > class_share + slack and \
                    positive[-1]["robust_accuracy"] >= positive[0]["robust_accuracy"] - slack:
                out.append(f"{name} ({run_norm}): robust accuracy does not fall from eps={positive[0]['eps']:g} to "
                           f"eps={positive[-1]['eps']:g} ({positive[-1]['robust_accuracy']:.4f}): gradient masking?")
        large = 0.5 if run_norm == "Linf" else 0.5 * math.sqrt(math.prod(shape))
        for r in rows:
            if r["eps"] >= large and r["robust_accuracy"] > class_share + slack:
                out.append(f"{name} ({run_norm}): robust accuracy {r['robust_accuracy']:.4f} at eps={r['eps']:g} is above "
                           f"the best constant guess ({class_share:.4f}), yet at eps ≥ {large:.3g} every image can be "
                           "moved to the mid-grey image: the attack fails (gradient masking?)")
    for run_norm in {r["norm"] for r in results}:
        blind = [(k, rows) for k, rows in by.items() if k[1] == run_norm and not kinds[k].white_box]
        white = [(k, rows) for k, rows in by.items() if k[1] == run_norm and kinds[k].white_box]
        for (bname, _), brows in blind:
            bacc = {r["eps"]: r["robust_accuracy"] for r in brows}
            for (wname, _), wrows in white:
                for r in wrows:
                    if r["eps"] in bacc and bacc[r["eps"]] < r["robust_accuracy"] - slack:
                        out.append(f"{bname} (black-box) beats {wname} (white-box) at eps={r['eps']:g} ({run_norm}): "
                                   f"{bacc[r['eps']]:.4f} < {r['robust_accuracy']:.4f}; {wname}'s gradients "
                                   "mislead it (gradient masking?)")
    if logits_expected != "ce" and results and all(r.get("loss") == "ce" for r in results):
        out.append("only cross-entropy attacks were run, on scores that are not softmax logits: prototype scores "
                   "are squared distances on which CE saturates; add a margin-loss attack (pgd@margin, cw, "
                   "autoattack) and a black-box one (square)")
    return out


# ---------------------------------------------------------------------------------------------- output


def _jsonable(obj):
    if isinstance(obj, float):
        if math.isinf(obj):
            return "inf" if obj > 0 else "-inf"
        return None if math.isnan(obj) else obj
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    return obj


def report_json(report: Mapping[str, Any]) -> str:
    """The report as valid JSON: ∞ becomes the string ``"inf"``, NaN ``null``."""
    return json.dumps(_jsonable(report), indent=2, allow_nan=False)


def write_report(report: Mapping[str, Any], path: str | Path) -> Path:
    """Write :func:`report_json` atomically (temp file, then rename)."""
    import os
    import tempfile

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        f.write(report_json(report))
    os.replace(tmp, path)
    return path


def robustness_figure(report: Mapping[str, Any] | Sequence[Mapping[str, Any]], labels: Sequence[str] | None = None):
    """A matplotlib Figure (Agg, no pyplot state): robust accuracy over ε, one line per attack and norm.

    Given several reports (e.g. one per trained model, as in Fig. 2 of Khalid & Paaßen), their curves
    share the axes, one panel per norm, each line labelled ``label: attack`` (``labels`` default to the
    reports' ``model`` names; the attack is left out when every report ran the same single attack).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    reports = [report] if isinstance(report, Mapping) else list(report)
    if not reports:
        raise ValueError("robustness curves: no report given")
    names = list(labels) if labels is not None else [str(r.get("model", "")) for r in reports]
    if len(names) != len(reports):
        raise ValueError(f"robustness curves: {len(names)} labels for {len(reports)} reports")
    attacks = {r["attack"] for rep in reports for r in rep["results"]}
    fig = Figure(figsize=(6.4, 4.8), dpi=100)
    FigureCanvasAgg(fig)
    norms = sorted({r["norm"] for rep in reports for r in rep["results"]})
    axes = fig.subplots(1, max(1, len(norms)), squeeze=False)[0]
    for ax, run_norm in zip(axes, norms or ["Linf"]):
        lines: dict[str, list] = {}
        for name, rep in zip(names, reports):
            for r in rep["results"]:
                if r["norm"] == run_norm:
                    label = r["attack"] if len(reports) == 1 else name if len(attacks) == 1 else f"{name}: {r['attack']}"
                    lines.setdefault(label, []).append((r["eps"], r["robust_accuracy"]))
        for label, points in lines.items():
            points.sort()
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", markersize=3, label=label)
        ax.set_xlabel(f"ε ({run_norm}, pixel units)")
        ax.set_ylabel("robust accuracy")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        if lines:
            ax.legend(fontsize=8)
    if len(reports) == 1:
        title = f"{reports[0].get('model', '')} on {reports[0].get('dataset', '')} (n={reports[0].get('n_samples')})"
    else:
        title = f"{', '.join(sorted(attacks))} on {', '.join(sorted({str(r.get('dataset', '')) for r in reports}))}"
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def save_robustness_curves(report: Mapping[str, Any] | Sequence[Mapping[str, Any]], path: str | Path,
                           labels: Sequence[str] | None = None) -> Path:
    """Write :func:`robustness_figure` (one report, or several on shared axes) as a PNG (640×480 pixels)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    robustness_figure(report, labels).savefig(path, format="png")
    return path


def _save_examples(clean: torch.Tensor, examples: list[tuple[str, torch.Tensor]], path, columns: int = 8) -> None:
    """Clean images (first row) and, per attack, the adversarial found for them (or the clean one if none)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    k = min(columns, len(clean))
    if k == 0:
        return
    rows = [("clean", clean[:k])] + [(label, images[:k]) for label, images in examples]
    fig = Figure(figsize=(1.2 * k + 1.5, 1.3 * len(rows)), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(rows), k, squeeze=False)
    for i, (label, images) in enumerate(rows):
        for j in range(k):
            ax = axes[i][j]
            img = images[j].detach().cpu().float()
            ax.imshow(img[0] if img.shape[0] == 1 else img.permute(1, 2, 0), cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[i][0].set_ylabel(label, fontsize=7, rotation=0, ha="right", va="center")
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
