"""The attack menu: :data:`ATTACKS` (name → :class:`AttackSpec`), :func:`parse_attack` for names such as
``pgd-20@margin``, and :func:`build_attack`, the one call that builds any attack of the menu.

torchattacks is imported inside the builders, when an attack is built.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import torch
from torch import nn

from ..config import NORMS, normalize_norm
from ..errors import UsageError
from . import extra
from .extra import Attack, gradient_attack, perturbation_norms

__all__ = ["ATTACKS", "LOSS_CHOICES", "STANDARD_AUTOATTACK", "AttackSpec", "ParsedAttack", "build_attack",
           "default_loss", "is_standard_autoattack", "max_distance", "parse_attack"]


@dataclass(frozen=True)
class AttackSpec:
    """One attack of the menu: which norms it works in, whether it is a minimal-perturbation attack
    (run once, gives a distance per point) or a fixed-budget one (run per ε), white- or black-box,
    its default options, and how to build it (``build(model, eps, norm, num_classes, options)``)."""

    norms: tuple[str, ...]
    minimal: bool
    white_box: bool
    defaults: Mapping[str, Any]
    build: Callable[..., Attack]
    summary: str


# a gradient attack's `loss`: "auto" is "ce" for heads whose scores are softmax logits, else "ce+margin"
LOSS_CHOICES = ("auto", "ce", "margin", "ce+margin")


def max_distance(norm: str, shape: Sequence[int]) -> float:
    """The largest distance between two images of ``shape`` in [0, 1]ᵈ: 1 in L∞, sqrt(d) in L2."""
    return 1.0 if norm == "Linf" else math.sqrt(math.prod(shape))


def _torchattacks():
    import torchattacks

    return torchattacks


def _step_size(opts: Mapping[str, Any], eps: float, rule: float) -> float:
    rel = opts["rel_stepsize"] if opts.get("rel_stepsize") is not None else rule / opts["steps"]
    return rel * eps


def _classes(k: int | None, key: str) -> int:
    if k is None:
        raise UsageError(f"attack '{key}' needs the number of classes: pass num_classes")
    return int(k)


def _build_fgsm(model, eps, norm, k, o):
    return gradient_attack(model, eps, "Linf", o["loss"], alpha=eps, steps=1)


def _build_fgm(model, eps, norm, k, o):
    return gradient_attack(model, eps, "L2", o["loss"], alpha=eps, steps=1)


def _build_bim(model, eps, norm, k, o):
    return gradient_attack(model, eps, "Linf", o["loss"], alpha=_step_size(o, eps, 1.0), steps=o["steps"])


def _build_mim(model, eps, norm, k, o):
    return gradient_attack(model, eps, "Linf", o["loss"], alpha=_step_size(o, eps, 1.0), steps=o["steps"],
                           decay=o["decay"])


def _build_pgd(model, eps, norm, k, o):
    return gradient_attack(model, eps, "Linf", o["loss"], alpha=_step_size(o, eps, 2.5), steps=o["steps"],
                           random_start=o["random_start"])


def _build_pgdl2(model, eps, norm, k, o):
    return gradient_attack(model, eps, "L2", o["loss"], alpha=_step_size(o, eps, 2.5), steps=o["steps"],
                           random_start=o["random_start"])


def _build_deepfool(model, eps, norm, k, o):
    return _torchattacks().DeepFool(model, steps=o["steps"], overshoot=o["overshoot"])


def _build_cw(model, eps, norm, k, o):
    """torchattacks' CW has one fixed ``c``; CW runs once per ``c`` in a list and each point keeps its smallest
    adversarial (a coarse search over c), on scores rescaled per sample to a unit range (:class:`_UnitScores`)."""
    cs = o["c"] if isinstance(o["c"], (list, tuple)) else [o["c"]]
    unit = _UnitScores(model)
    runs = [_torchattacks().CW(unit, c=float(c), kappa=o["kappa"], steps=o["steps"], lr=o["lr"]) for c in cs]
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
            dist = torch.where(fooled, perturbation_norms(adv - x, self.norm), torch.full_like(best_dist, math.inf))
            better = dist < best_dist
            best[better] = adv[better]
            best_dist = torch.minimum(best_dist, dist)
        return best


def _build_fab(model, eps, norm, k, o):
    # minimal mode: FAB only uses eps to reject results larger than it (and for restarts' random starts)
    return _torchattacks().FAB(model, norm=norm, eps=eps, steps=o["steps"], n_restarts=o["n_restarts"],
                               alpha_max=o["alpha_max"], eta=o["eta"], beta=o["beta"], seed=o["seed"],
                               multi_targeted=False, n_classes=_classes(k, "fab"))


def _build_square(model, eps, norm, k, o):
    return _torchattacks().Square(model, norm=norm, eps=eps, n_queries=o["n_queries"], n_restarts=o["n_restarts"],
                                  p_init=o["p_init"], seed=o["seed"])


def _build_autoattack(model, eps, norm, k, o):
    """AutoAttack's standard suite, built from its parts with the original settings (Croce & Hein 2020):
    APGD-CE and APGD-T (DLR loss, 9 target classes) with 100 steps, FAB-T with 100 steps and 9 targets,
    Square with 5000 queries, one restart each, run in sequence on the points still robust.
    (``torchattacks.AutoAttack(version="standard")`` runs its APGD/FAB parts with 10 steps.)"""
    ta, k = _torchattacks(), _classes(k, "autoattack")
    if k < 4:
        raise UsageError(f"autoattack needs at least 4 classes (APGD-T's DLR loss), the model has {k}")
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
    return extra.GaussianNoise(model, eps=eps, norm=norm, seed=o["seed"])


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
STANDARD_AUTOATTACK = {"steps": 100, "n_queries": 5000, "n_target_classes": 9}


def is_standard_autoattack(options: Mapping[str, Any], num_classes: int) -> bool:
    """Whether ``autoattack`` with these options is at least Croce & Hein's standard suite (fewer target classes
    only where the model has fewer than 10 classes)."""
    return all(options[k] >= v for k, v in STANDARD_AUTOATTACK.items() if k != "n_target_classes") \
        and options["n_target_classes"] >= min(9, num_classes - 1)


class ParsedAttack(NamedTuple):
    """An attack name read against the menu: its key in :data:`ATTACKS`, the spec and the resolved options."""

    key: str
    spec: AttackSpec
    options: dict[str, Any]


def parse_attack(name: str, options: Mapping[str, Mapping[str, Any]] | None = None,
                 norm: str | None = None) -> ParsedAttack:
    """``"pgd-20"`` → (``"pgd"``, spec, options with steps=20); ``"fgsm@margin"`` sets the loss; ``options``
    (``{attack: {option: value}}``) given for the full name or the bare attack override the defaults. With a
    ``norm``, an attack that does not work in it is rejected. Unknown names and options are :class:`UsageError`."""
    options = options or {}
    text = str(name).strip().lower()
    key, _, loss = text.partition("@")
    steps = None
    if key not in ATTACKS and (m := re.fullmatch(r"(.+)-(\d+)", key)) and m.group(1) in ATTACKS:
        key, steps = m.group(1), int(m.group(2))
    if key not in ATTACKS:
        raise UsageError(f"attack: unknown '{name}' (known: {', '.join(ATTACKS)}; pgd-20 etc. set the steps, "
                         "fgsm@margin etc. the loss)")
    spec = ATTACKS[key]
    opts = dict(spec.defaults)
    if steps is not None:
        if "steps" not in opts:
            raise UsageError(f"attack '{name}': {key} has no steps to set")
        opts["steps"] = steps
    given = dict(options.get(str(name), options.get(key, {})) or {})
    unknown = sorted(set(given) - set(opts))
    if unknown:
        raise UsageError(f"attack '{name}': unknown option(s) {', '.join(unknown)} (known: {', '.join(opts) or 'none'})")
    opts.update(given)
    if loss:
        if "loss" not in opts:
            raise UsageError(f"attack '{name}': {key} has no loss to choose (gradient attacks have: "
                             f"{', '.join(k for k, s in ATTACKS.items() if 'loss' in s.defaults)})")
        opts["loss"] = loss
    if "loss" in opts and opts["loss"] not in LOSS_CHOICES:
        raise UsageError(f"attack '{name}': loss '{opts['loss']}' is not one of {', '.join(LOSS_CHOICES)}")
    if norm is not None and (norm := normalize_norm(norm)) not in spec.norms:
        alternatives = [k for k, s in ATTACKS.items() if norm in s.norms]
        raise UsageError(f"attack '{name}' works in {'/'.join(spec.norms)}, not {norm}: pass --norm "
                         f"{spec.norms[0]}, or an attack for {norm} ({', '.join(alternatives)})")
    return ParsedAttack(key, spec, opts)


def default_loss(model: nn.Module) -> str:
    """The loss ``"auto"`` stands for: ``"ce"`` when the model's head declares that its scores are softmax
    logits (``Head.scores_are_logits``, the ``linear`` head), else ``"ce+margin"``, the per-point worst of both
    (prototype scores saturate cross-entropy; see :func:`attack_loss`)."""
    head = getattr(model, "head", None)
    return "ce" if getattr(head, "scores_are_logits", False) else "ce+margin"


def build_attack(name: str, model: nn.Module, eps: float, norm: str = "Linf", num_classes: int | None = None,
                 options: Mapping[str, Any] | None = None) -> Attack:
    """Any attack of the menu as a callable ``attack(images, labels) -> adversarial images``.

    ``name`` as :func:`parse_attack` reads it (``pgd-20``, ``fgsm@margin``); ``options`` (``{option: value}``)
    override its defaults; ``loss="auto"`` becomes :func:`default_loss` of ``model``. ``eps`` is the budget in
    pixel units (a minimal attack's upper bound: :func:`max_distance` for none); ``num_classes`` defaults to
    ``model.num_classes`` (FAB and AutoAttack need it). The same call serves ``evaluate``, ``show`` and
    adversarial training; the attack runs the model in whatever mode it is in (torchattacks restores the mode
    the model had), so call it on a model in eval mode to keep dropout and batch statistics out of it.
    """
    norm = normalize_norm(norm)
    key, spec, opts = parse_attack(name, {str(name): dict(options or {})}, norm=norm)
    if not float(eps) >= 0:
        raise UsageError(f"eps: attack '{name}' needs a budget ≥ 0, got {eps}")
    if opts.get("loss") == "auto":
        opts["loss"] = default_loss(model)
    if num_classes is None:
        num_classes = getattr(model, "num_classes", None)
    return spec.build(model, float(eps), norm, num_classes, opts)
