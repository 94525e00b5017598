"""robustproto.evaluation.report: valid JSON with ∞ as "inf", atomic writes, robustness curves and example grids."""

from __future__ import annotations

import json
import math

import pytest

import robustproto
from robustproto.evaluation import robustness_figure, save_example_grid, to_jsonable, write_report


def test_report_has_every_field_and_is_valid_json(tiny, tmp_path):
    model, x, y = tiny
    report = robustproto.evaluate(model, (x, y), attacks={"Linf": ["fgsm", "fab"], "L2": ["fgm"]},
                                  eps={"Linf": [0.05, 0.1], "L2": [0.5]}, bisection_steps=1, dataset_name="random")
    for key in ("model", "dataset", "n_samples", "clean_accuracy", "results", "median_distance", "threshold_accuracy",
                "warnings"):
        assert key in report
    assert set(report["results"][0]) >= {"attack", "norm", "eps", "robust_accuracy", "seconds"}
    assert set(report["median_distance"]) == {"Linf", "L2"}
    assert set(report["median_distance"]["Linf"]) == {"fgsm", "fab", "worst_case"}
    assert report["n_samples"] == 32 and report["model"] == "flatten+glvq"
    text = robustproto.report_json(report)

    def reject(constant):
        raise ValueError(f"invalid JSON constant {constant}")

    parsed = json.loads(text, parse_constant=reject)
    infinite = [d for d in report["distances"]["Linf"]["fgsm"] if d == math.inf]
    assert infinite  # fgsm at ≤ 0.1 leaves points unbroken: their δ = ∞ is written as "inf"
    assert parsed["distances"]["Linf"]["fgsm"].count("inf") == len(infinite)
    path = robustproto.write_report(report, tmp_path / "sub" / "r.json")
    assert json.loads(path.read_text()) == parsed
    assert [p.name for p in path.parent.iterdir()] == ["r.json"]  # no temporary file left behind


def test_to_jsonable_and_a_failed_write_leaves_no_file(tmp_path):
    assert to_jsonable({1: (math.inf, -math.inf, math.nan, 2.0)}) == {"1": ["inf", "-inf", None, 2.0]}
    with pytest.raises(TypeError):
        write_report({"bad": object()}, tmp_path / "r.json")
    assert list(tmp_path.iterdir()) == []


def test_robustness_curve_png_and_figure(tiny, tmp_path):
    import matplotlib.image

    model, x, y = tiny
    path = tmp_path / "curve.png"
    report = robustproto.evaluate(model, (x, y), attacks=["fgsm", "pgd-5", "gaussian"], eps=[0, 0.1, 0.3],
                                  bisection_steps=0, plot=path)
    image = matplotlib.image.imread(path)
    assert image.shape[:2] == (480, 640)
    (ax,) = robustness_figure(report).axes
    assert ax.get_xlabel().startswith("ε") and ax.get_ylabel() == "robust accuracy"
    assert [line.get_label() for line in ax.get_lines()] == ["fgsm", "pgd-5", "gaussian"]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["fgsm", "pgd-5", "gaussian"]
    with pytest.raises(ValueError, match="no report"):
        robustness_figure([])


def test_example_grid_has_a_row_per_attack(mnist_like, tmp_path):
    import matplotlib.image

    x, _ = mnist_like
    save_example_grid(x[:4], [("fgsm", x[:4] * 0.5), ("pgd", x[:4])], tmp_path / "grid.png")
    height, width = matplotlib.image.imread(tmp_path / "grid.png").shape[:2]
    assert height == 3 * 130 and width == int(1.2 * 4 * 100 + 150)
