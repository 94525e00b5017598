"""robustproto.evaluation.masking: each gradient-masking signal on hand-made curves, and all of them in a report."""

from __future__ import annotations

import robustproto
from robustproto.attacks import ATTACKS
from robustproto.evaluation.masking import (above_chance, black_box_beats_white_box, ce_only, flat_curve,
                                            masking_warnings, rising_curve)


def _rows(attack, accuracies, eps=(0.1, 0.2, 0.3), norm="Linf", loss=None):
    return [{"attack": attack, "norm": norm, "eps": e, "robust_accuracy": a, **({"loss": loss} if loss else {})}
            for e, a in zip(eps, accuracies)]


def test_each_signal_fires_on_its_curve_and_not_on_a_healthy_one():
    healthy = _rows("pgd", (0.6, 0.3, 0.1))
    assert rising_curve("pgd (Linf)", _rows("pgd", (0.5, 0.7, 0.1)), 0.01)[0].startswith("pgd (Linf): robust "
                                                                                         "accuracy rises from 0.5000")
    assert rising_curve("pgd (Linf)", _rows("pgd", (0.5, 0.505, 0.1)), 0.01) == []  # within the slack
    assert "does not fall" in flat_curve("pgd (Linf)", _rows("pgd", (0.6, 0.6, 0.6)), 0.1, 0.01)[0]
    assert flat_curve("pgd (Linf)", _rows("pgd", (0.1, 0.1, 0.1)), 0.1, 0.01) == []  # at chance: nothing to fall
    assert "mid-grey" in above_chance("pgd (Linf)", _rows("pgd", (0.5,), eps=(0.5,)), 0.1, 0.01, "Linf", (1, 2, 2))[0]
    assert above_chance("pgd (L2)", _rows("pgd", (0.5,), eps=(0.5,), norm="L2"), 0.1, 0.01, "L2", (1, 2, 2)) == []
    curves = {("square", "Linf"): _rows("square", (0.2, 0.1, 0.0)), ("pgd", "Linf"): healthy}
    beats = black_box_beats_white_box(curves, {("square", "Linf"): False, ("pgd", "Linf"): True}, 0.01)
    assert len(beats) == 3 and beats[0].startswith("square (black-box) beats pgd (white-box) at eps=0.1")
    assert "only cross-entropy" in ce_only(_rows("pgd", (0.5,), loss="ce"), "ce+margin")[0]
    assert ce_only(_rows("pgd", (0.5,), loss="ce"), "ce") == []  # softmax logits: CE is the right loss
    assert masking_warnings(healthy, {("pgd", "Linf"): True}, 100, 0.1, (1, 2, 2), "ce") == []


def test_gradient_masking_warnings(tiny, monkeypatch, fake_attack):
    model, x, y = tiny
    # a white-box "attack" that does nothing: black-box Square beats it and its curve stays flat
    monkeypatch.setitem(ATTACKS, "idle", fake_attack(lambda m, eps, norm, k, o: lambda bx, by: bx))
    report = robustproto.evaluate(model, (x, y), attacks=["idle", "square"], eps=[0.25, 0.3, 0.6], bisection_steps=0,
                                  attack_options={"square": {"n_queries": 100}})
    text = " ".join(report["warnings"])
    assert "square (black-box) beats idle" in text
    assert "does not fall" in text
    assert "above the best constant guess" in text
