"""The attack menu: every attack ``robustproto eval``, ``robustproto show adversarial`` and adversarial training
build, by name, with its defaults and, for gradient attacks, the loss it ascends.

- :data:`ATTACKS`: name → :class:`AttackSpec` (norms, minimal or fixed budget, white- or black-box, defaults);
  :func:`parse_attack` reads ``"pgd-20"`` (steps) and ``"fgsm@margin"`` (loss) with option overrides.
- :func:`build_attack`: one call that builds any attack of the menu for a model, a budget and a norm, with
  ``loss="auto"`` resolved by :func:`default_loss`. An attack is a callable ``attack(images, labels)`` that returns
  adversarial images; images are in [0, 1] and ε is in pixel units (the normalisation lives inside the model).
  A minimal-perturbation attack (DeepFool, CW, FAB) uses ε only as an upper bound: pass
  :func:`max_distance` for "no bound".
- :func:`attack_loss` and the loss-aware gradient attack :class:`GradientAttack` (FGSM, FGM, BIM, MIM, PGD and
  PGD-L2 in one class; :func:`gradient_attack` builds it, ``"ce+margin"`` included).

Gradient attacks take a ``loss``: ``ce``, ``margin`` or ``ce+margin`` (per point the worst of both); ``auto``
is ``ce`` for heads whose scores are softmax logits and ``ce+margin`` otherwise, because cross-entropy on
prototype scores measures their scale, not robustness (see :func:`attack_loss`).

torchattacks is imported only when an attack is built: :class:`GradientAttack` and :class:`GaussianNoise`
subclass ``torchattacks.Attack`` and are created on first access, so ``import robustproto`` stays cheap.
"""

from __future__ import annotations

from . import extra
from .extra import LOSSES, attack_loss, gradient_attack, perturbation_norms, project
from .menu import (ATTACKS, LOSS_CHOICES, STANDARD_AUTOATTACK, AttackSpec, ParsedAttack, build_attack, default_loss,
                   is_standard_autoattack, max_distance, parse_attack)

__all__ = ["ATTACKS", "LOSSES", "LOSS_CHOICES", "STANDARD_AUTOATTACK", "AttackSpec", "GaussianNoise", "GradientAttack",
           "ParsedAttack", "attack_loss", "build_attack", "default_loss", "gradient_attack", "is_standard_autoattack",
           "max_distance", "parse_attack", "perturbation_norms", "project"]


def __getattr__(name: str):
    """``GradientAttack`` and ``GaussianNoise`` are made (and torchattacks imported) on first access."""
    if name in ("GradientAttack", "GaussianNoise"):
        return getattr(extra, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
