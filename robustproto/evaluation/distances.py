"""Saralajew et al. 2019's median-δ: per point the minimal adversarial distance δ (0 for a misclassified point,
the distance of the adversarial found, ∞ if none), its median per attack, the worst case over the attacks of one
norm (per point the minimum, then the median), and the threshold accuracy (the fraction of points with δ > t).
"""

from __future__ import annotations

import math
from typing import Mapping

import torch

__all__ = ["distance_summary", "median", "per_point", "robust_accuracy_at"]


def median(values: torch.Tensor) -> float:
    """Median with Saralajew et al.'s convention: the mean of the two middle values (∞ if either is ∞); NaN for
    no values."""
    import numpy as np

    return float(np.median(values.numpy())) if len(values) else math.nan


def per_point(found: torch.Tensor, correct: torch.Tensor) -> torch.Tensor:
    """δ for every point (float64): ``found`` (the distances on the correctly classified points, ∞ where no
    adversarial) in place, 0 for the misclassified points."""
    out = torch.zeros(len(correct), dtype=torch.float64)
    out[correct] = found.double()
    return out


def robust_accuracy_at(distances: torch.Tensor, eps: float) -> float:
    """The fraction of points whose minimal adversarial distance exceeds ``eps``: the robust accuracy at ε read
    off a minimal attack's distances, and the threshold accuracy at t = ``eps``."""
    return float((distances > eps).double().mean())


def distance_summary(distances: Mapping[str, Mapping[str, torch.Tensor]], thresholds: Mapping[str, float]
                     ) -> tuple[dict, dict, dict]:
    """From ``{norm: {attack: δ per point}}``: ``(median_distance, threshold_accuracy, distances)``, each per norm
    with a ``worst_case`` entry beside the attacks (``threshold_accuracy`` also holds the ``threshold``)."""
    median_distance, threshold_accuracy, with_worst = {}, {}, {}
    for norm, by_attack in distances.items():
        worst = torch.stack(list(by_attack.values())).amin(0)
        t = thresholds[norm]
        median_distance[norm] = {**{k: median(v) for k, v in by_attack.items()}, "worst_case": median(worst)}
        threshold_accuracy[norm] = {"threshold": t, **{k: robust_accuracy_at(v, t) for k, v in by_attack.items()},
                                    "worst_case": robust_accuracy_at(worst, t)}
        with_worst[norm] = {**by_attack, "worst_case": worst}
    return median_distance, threshold_accuracy, with_worst
