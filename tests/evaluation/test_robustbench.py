"""``robustproto eval --protocol robustbench``: RobustBench's points, attack and budget, and its model_info JSON.

A tiny flatten + GLVQ model is scored on a fake CIFAR-10 in torchvision's files (12 test images); the protocol's
10,000 points are cut to 8 so the test runs in seconds, which also shows that the first points, in order, are used.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import robustproto
from robustproto.attacks import STANDARD_AUTOATTACK
from robustproto.checkpoint import save_model
from robustproto.cli import app
from robustproto.errors import UsageError
from robustproto.evaluation import robustbench

# The keys of RobustBench/robustbench model_info/cifar10/Linf/Wang2023Better_WRN-28-10.json (commit 56365fd), in order.
MODEL_INFO_KEYS = ["link", "name", "authors", "additional_data", "number_forward_passes", "dataset", "venue",
                   "architecture", "eps", "clean_acc", "reported", "autoattack_acc", "footnote", "unreliable"]
N_TEST, N_POINTS = 12, 8


@pytest.fixture
def fake_cifar(tmp_path, monkeypatch, write_cifar10):
    """A tiny model and a fake CIFAR-10 under ``tmp_path/cifar``: 12 test images whose labels the model gets right
    except points 6 and 7, so the first 8 points score 75.00 % clean and all 12 would score 83.33 %. The images come
    in pairs one grey level apart, each of the first 10 a prototype, so AutoAttack's first part breaks every point
    at both budgets and the later parts (FAB, Square: minutes on robust points) have nothing left to do."""
    monkeypatch.setattr(robustbench, "N_POINTS", N_POINTS)
    rng = np.random.default_rng(0)
    pairs = rng.integers(1, 255, (N_TEST // 2, 3, 32, 32))
    images = (pairs.repeat(2, axis=0) + rng.integers(-1, 2, (N_TEST, 3, 32, 32))).astype(np.uint8)
    x = torch.from_numpy(images).float() / 255
    torch.manual_seed(0)
    model = robustproto.wrap("flatten", head="glvq", num_classes=10, in_chans=3, img_size=32)
    with torch.no_grad():
        model.head.init_from_data(model.embed(x[:10]), torch.arange(10))
        labels = model.eval()(x).argmax(1)
    labels[6:8] = (labels[6:8] + 1) % 10
    return model, write_cifar10(tmp_path / "cifar", images, labels, "test")


@pytest.mark.parametrize("norm, eps", [("Linf", "8/255"), ("L2", "0.5")])
def test_claim_has_robustbench_keys_and_formats_from_the_first_points_with_standard_autoattack(fake_cifar, norm, eps):
    model, data_dir = fake_cifar
    data = robustbench.robustbench_data("cifar10", str(data_dir))
    report, claim = robustbench.evaluate_robustbench(model, data, norm=norm)

    assert list(claim) == MODEL_INFO_KEYS + ["robustproto"]
    assert claim["dataset"] == "cifar10" and claim["eps"] == eps and claim["architecture"] == "flatten+glvq"
    assert claim["clean_acc"] == "75.00"  # the first 8 points, in order (all 12 would give 83.33)
    (row,) = report["results"]
    assert claim["autoattack_acc"] == f"{100 * row['robust_accuracy']:.2f}"
    assert all(len(claim[k].split(".")[1]) == 2 for k in ("clean_acc", "autoattack_acc"))
    assert claim["link"] == claim["name"] == claim["reported"] == "" and claim["unreliable"] is None
    extra = claim["robustproto"]
    assert extra["threat_model"] == norm and extra["n_points"] == report["n_samples"] == N_POINTS
    assert extra["eps"] == pytest.approx({"Linf": 8 / 255, "L2": 0.5}[norm])
    attack = extra["attack"]
    assert attack["attack"] == "autoattack" and attack["version"] == "standard"
    assert {k: attack[k] for k in STANDARD_AUTOATTACK} == STANDARD_AUTOATTACK
    json.dumps(claim, allow_nan=False)


def test_cli_protocol_overrides_the_recipe_and_writes_the_claim(fake_cifar, tmp_path):
    model, data_dir = fake_cifar
    run = tmp_path / "run"
    run.mkdir()
    save_model(model, run / "model.safetensors", config={"dataset": "cifar10", "data_dir": str(data_dir)})
    report, claim = tmp_path / "report.json", tmp_path / "claim.json"
    result = CliRunner().invoke(app, ["eval", "--model", str(run), "--protocol", "robustbench", "--attack", "fgsm",
                                      "--eps", "0.1", "--n-samples", "3", "--report", str(report),
                                      "--claim", str(claim)])
    assert result.exit_code == 0, result.output
    assert "replacing the given attack, eps, n_samples" in result.output
    info = json.loads(claim.read_text())
    assert info["eps"] == "8/255" and info["robustproto"]["n_points"] == N_POINTS
    assert [r["attack"] for r in json.loads(report.read_text())["results"]] == ["autoattack"]


@pytest.mark.parametrize("args, message", [
    (["--norm", "corruptions"], "not RobustBench's corruptions"),
    (["--dataset", "imagefolder"], "ImageNet is not supported"),
    (["--dataset", "mnist"], "supports CIFAR-10"),
])
def test_cli_refuses_what_the_protocol_does_not_cover(fake_cifar, tmp_path, args, message):
    model, data_dir = fake_cifar
    run = tmp_path / "run"
    run.mkdir()
    save_model(model, run / "model.safetensors", config={"dataset": "cifar10", "data_dir": str(data_dir)})
    result = CliRunner().invoke(app, ["eval", "--model", str(run), "--protocol", "robustbench", "--report",
                                      str(tmp_path / "r.json"), "--claim", str(tmp_path / "c.json"), *args])
    assert isinstance(result.exception, UsageError) and message in str(result.exception), result.output


def test_fewer_points_than_the_protocol_are_refused(fake_cifar):
    model, data_dir = fake_cifar
    data = robustbench.robustbench_data("cifar10", str(data_dir))
    x = torch.stack([data[i][0] for i in range(5)])
    with pytest.raises(UsageError, match="has 8 points, the data given has 5"):
        robustbench.evaluate_robustbench(model, (x, data.labels[:5]))


def test_the_real_protocol_uses_the_whole_cifar10_test_set_at_robustbench_budgets():
    assert robustbench.N_POINTS == 10_000
    assert robustbench.EPS == {"Linf": (8 / 255, "8/255"), "L2": (0.5, "0.5")}
