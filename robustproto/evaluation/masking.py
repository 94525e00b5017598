"""Signals of gradient masking in robustness curves, one function per signal; :func:`masking_warnings` runs them all.

A curve is the list of result rows (``attack``, ``norm``, ``eps``, ``robust_accuracy``) of one attack in one norm,
sorted by ε. ``slack`` is half a point of the evaluated subset: one point's difference is a real difference.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

__all__ = ["above_chance", "black_box_beats_white_box", "ce_only", "flat_curve", "masking_warnings", "rising_curve"]

Row = Mapping[str, Any]


def rising_curve(label: str, rows: Sequence[Row], slack: float) -> list[str]:
    """Robust accuracy that rises with ε: a stronger budget should never help the model."""
    return [f"{label}: robust accuracy rises from {a['robust_accuracy']:.4f} at eps={a['eps']:g} to "
            f"{b['robust_accuracy']:.4f} at eps={b['eps']:g}: a stronger budget should never help the model "
            "(gradient masking or a failing attack)"
            for a, b in zip(rows, rows[1:]) if b["robust_accuracy"] > a["robust_accuracy"] + slack]


def flat_curve(label: str, rows: Sequence[Row], class_share: float, slack: float) -> list[str]:
    """A white-box curve over at least three positive budgets that does not fall although it starts above the best
    constant guess (``class_share``)."""
    positive = [r for r in rows if r["eps"] > 0]
    if len(positive) >= 3 and positive[0]["robust_accuracy"] > class_share + slack and \
            positive[-1]["robust_accuracy"] >= positive[0]["robust_accuracy"] - slack:
        return [f"{label}: robust accuracy does not fall from eps={positive[0]['eps']:g} to "
                f"eps={positive[-1]['eps']:g} ({positive[-1]['robust_accuracy']:.4f}): gradient masking?"]
    return []


def above_chance(label: str, rows: Sequence[Row], class_share: float, slack: float, norm: str,
                 image_shape: Sequence[int]) -> list[str]:
    """Robust accuracy above the best constant guess at an ε that reaches the mid-grey image from every image
    (0.5 in L∞, half the diameter of [0, 1]ᵈ in L2)."""
    large = 0.5 if norm == "Linf" else 0.5 * math.sqrt(math.prod(image_shape))
    return [f"{label}: robust accuracy {r['robust_accuracy']:.4f} at eps={r['eps']:g} is above the best constant "
            f"guess ({class_share:.4f}), yet at eps ≥ {large:.3g} every image can be moved to the mid-grey image: "
            "the attack fails (gradient masking?)"
            for r in rows if r["eps"] >= large and r["robust_accuracy"] > class_share + slack]


def black_box_beats_white_box(curves: Mapping[tuple[str, str], Sequence[Row]],
                              white_box: Mapping[tuple[str, str], bool], slack: float) -> list[str]:
    """A black-box attack that breaks more points than a white-box one at the same ε and norm: the white-box
    attack's gradients mislead it. ``curves`` and ``white_box`` are keyed by (attack, norm)."""
    out = []
    for (bname, norm), brows in curves.items():
        if white_box[(bname, norm)]:
            continue
        bacc = {r["eps"]: r["robust_accuracy"] for r in brows}
        for (wname, wnorm), wrows in curves.items():
            if wnorm != norm or not white_box[(wname, wnorm)]:
                continue
            out += [f"{bname} (black-box) beats {wname} (white-box) at eps={r['eps']:g} ({norm}): "
                    f"{bacc[r['eps']]:.4f} < {r['robust_accuracy']:.4f}; {wname}'s gradients mislead it "
                    "(gradient masking?)"
                    for r in wrows if r["eps"] in bacc and bacc[r["eps"]] < r["robust_accuracy"] - slack]
    return out


def ce_only(results: Sequence[Row], loss_auto: str) -> list[str]:
    """Only cross-entropy attacks, on scores that are not softmax logits (``loss_auto`` is not ``"ce"``)."""
    if loss_auto != "ce" and results and all(r.get("loss") == "ce" for r in results):
        return ["only cross-entropy attacks were run, on scores that are not softmax logits: prototype scores are "
                "squared distances on which CE saturates; add a margin-loss attack (pgd@margin, cw, autoattack) and "
                "a black-box one (square)"]
    return []


def masking_warnings(results: Sequence[Row], white_box: Mapping[tuple[str, str], bool], n: int, class_share: float,
                     image_shape: Sequence[int], loss_auto: str) -> list[str]:
    """Every signal over the result rows of one report: the rising curve for white-box attacks and Square, the flat
    curve for white-box attacks, above chance at a large ε for every attack, black-box beating white-box, CE only.

    ``white_box`` is keyed by (attack, norm); ``n`` the number of evaluated points; ``class_share`` the share of the
    most frequent class (the best constant guess)."""
    slack = 0.5 / n
    curves: dict[tuple[str, str], list[Row]] = {}
    for r in results:
        curves.setdefault((r["attack"], r["norm"]), []).append(r)
    curves = {key: sorted(rows, key=lambda r: r["eps"]) for key, rows in curves.items()}
    out = []
    for (name, norm), rows in curves.items():
        label = f"{name} ({norm})"
        if white_box[(name, norm)] or name == "square":
            out += rising_curve(label, rows, slack)
        if white_box[(name, norm)]:
            out += flat_curve(label, rows, class_share, slack)
        out += above_chance(label, rows, class_share, slack, norm, image_shape)
    return out + black_box_beats_white_box(curves, white_box, slack) + ce_only(results, loss_auto)
