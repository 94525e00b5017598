"""robustproto.evaluation.distances: Saralajew et al.'s median-δ conventions, worst case and threshold accuracy."""

from __future__ import annotations

import math

import pytest
import torch

import robustproto
from robustproto.attacks import ATTACKS
from robustproto.evaluation import distance_summary, median, per_point, robust_accuracy_at


def test_median_per_point_and_summary_conventions():
    assert median(torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64)) == 2.5  # the mean of the middle two
    assert median(torch.tensor([1.0, math.inf, math.inf, 0.0])) == math.inf  # ∞ if either middle value is
    assert math.isnan(median(torch.tensor([])))
    correct = torch.tensor([True, False, True])
    delta = per_point(torch.tensor([0.5, math.inf]), correct)
    assert delta.dtype == torch.float64 and delta.tolist() == [0.5, 0.0, math.inf]  # misclassified: 0
    assert robust_accuracy_at(delta, 0.5) == pytest.approx(1 / 3)  # strictly beyond the budget
    a, b = (torch.tensor(v, dtype=torch.float64) for v in ([0.1, 2.0, 3.0, 0.0], [1.0, 1.0, math.inf, 0.0]))
    medians, accuracy, with_worst = distance_summary({"L2": {"a": a, "b": b}}, {"L2": 1.5})
    assert with_worst["L2"]["worst_case"].tolist() == [0.1, 1.0, 3.0, 0.0]
    assert medians["L2"] == {"a": pytest.approx(1.05), "b": 1.0, "worst_case": pytest.approx(0.55)}
    assert accuracy["L2"] == {"threshold": 1.5, "a": 0.5, "b": 0.25, "worst_case": 0.25}


def test_median_distance_conventions(tiny, monkeypatch, fake_attack):
    model, x, y = tiny
    monkeypatch.setitem(ATTACKS, "never", fake_attack(lambda m, eps, norm, k, o: lambda bx, by: bx, minimal=True))
    report = robustproto.evaluate(model, (x, y), attacks=["never", "deepfool"], eps=[], norm="L2")
    with torch.no_grad():
        correct = (model(x).argmax(1) == y).tolist()
    never = report["distances"]["L2"]["never"]
    assert [d == 0 for d in never] == [not c for c in correct]  # misclassified: 0
    assert all(d == math.inf for d, c in zip(never, correct) if c)  # nothing found: ∞
    assert report["minimal_attack_failures"]["L2"]["never"] == sum(correct)
    assert report["median_distance"]["L2"]["never"] == math.inf  # more than half are ∞
    deepfool = torch.tensor(report["distances"]["L2"]["deepfool"])
    worst = torch.tensor(report["distances"]["L2"]["worst_case"])
    assert torch.equal(worst, torch.minimum(deepfool, torch.tensor(never)))
    # the median of 32 values: the mean of the two middle ones
    assert report["median_distance"]["L2"]["worst_case"] == pytest.approx(float(worst.sort().values[15:17].mean()))
    t = report["threshold_accuracy"]["L2"]["threshold"]
    assert t == 1.5
    assert report["threshold_accuracy"]["L2"]["deepfool"] == pytest.approx(float((deepfool > t).double().mean()))
