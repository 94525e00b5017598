"""robustproto.evaluate: honest robust accuracy end to end, the plan it accepts, and the state it leaves."""

from __future__ import annotations

import json

import pytest
import torch

import robustproto
from robustproto.config import EvalConfig
from robustproto.evaluation import evaluate


def _clean(model, x, y):
    with torch.no_grad():
        return float((model(x).argmax(1) == y).double().mean())


def test_the_package_root_exports_the_evaluation_api():
    from robustproto import evaluation

    assert robustproto.evaluate is evaluation.evaluate
    for name in ("write_report", "report_json", "save_robustness_curves", "robustness_figure"):
        assert getattr(robustproto, name) is getattr(evaluation, name)
    assert robustproto.build_attack is robustproto.attacks.build_attack and "pgd" in robustproto.ATTACKS
    assert issubclass(robustproto.AttackError, RuntimeError)


def test_fgsm_at_zero_budget_is_exactly_the_clean_accuracy(tiny, curve):
    model, x, y = tiny
    clean = _clean(model, x, y)
    assert 0 < clean < 1  # misclassified points exist, so counting them as failures matters
    report = evaluate(model, (x, y), attacks=["fgsm"], eps=[0.0, 0.3], bisection_steps=0)
    assert report["clean_accuracy"] == clean
    assert curve(report, "fgsm")[0] == clean
    assert curve(report, "fgsm")[1] < clean


def test_pgd_robust_accuracy_never_rises_with_eps(tiny, curve):
    model, x, y = tiny
    report = evaluate(model, (x, y), attacks=["pgd-10"], eps=[0.0, 0.05, 0.1, 0.15, 0.18, 0.2, 0.25], bisection_steps=0)
    accuracies = curve(report, "pgd-10")
    assert all(b <= a for a, b in zip(accuracies, accuracies[1:])), accuracies
    assert accuracies[-1] < accuracies[0]
    assert report["settings"]["attacks"]["pgd-10/Linf"]["steps"] == 10


def test_bad_plans_are_usage_errors_before_any_data_is_read(tiny):
    from robustproto.errors import UsageError

    model, _, _ = tiny
    never_read = object()  # not data: every check below must fail first
    for kwargs, match in (({"attacks": ["fgsm", "fgsm"], "eps": [0.1]}, "twice"),
                          ({"attacks": {"L2": []}}, "no attack"),
                          ({"attacks": ["fgsm"], "eps": [-0.1]}, "finite and ≥ 0"),
                          ({"attacks": ["fgsm"], "eps": [0.1], "batch_size": 0}, "batch_size"),
                          ({"attacks": ["fgsm"], "eps": [0.1], "norm": "L1"}, "norm")):
        with pytest.raises(UsageError, match=match):
            evaluate(model, never_read, **kwargs)


def test_a_weakened_autoattack_is_never_called_standard(tiny):
    model, x, y = tiny
    report = evaluate(model, (x[:8], y[:8]), attacks=["autoattack"], eps=[0.1], bisection_steps=0,
                      attack_options={"autoattack": {"steps": 5, "n_queries": 20}})
    assert report["settings"]["attacks"]["autoattack/Linf"]["version"].startswith("weakened")
    assert any("weaker than the standard AutoAttack" in w for w in report["warnings"])


def test_eval_settings_from_recipe_tables_and_cli_overrides():
    table = {"n_samples": 100, "L2": {"attack": ["deepfool", "fgm"], "eps": [0.5], "threshold": 2.0},
             "Linf": {"attack": ["fgsm"], "eps": [0.1]}, "certify": {"norm": "L2"}}
    s = EvalConfig.resolve(table)
    assert dict(s.attacks) == {"L2": ("deepfool", "fgm"), "Linf": ("fgsm",)} and s.thresholds["L2"] == 2.0
    s = EvalConfig.resolve(table, norm="linf", attack_opt=["square:n_queries=10"])
    assert dict(s.attacks) == {"Linf": ("fgsm",)} and s.attack_options == {"square": {"n_queries": 10}}
    s = EvalConfig.resolve(table, attack=["pgd"], eps=[0.2], n_samples=5)
    assert dict(s.attacks) == {"Linf": ("pgd",)} and dict(s.eps) == {"Linf": (0.2,)} and s.n_samples == 5
    with pytest.raises(ValueError, match="unknown key"):
        EvalConfig.resolve({"atack": ["fgsm"]})
    with pytest.raises(ValueError, match="no attack"):
        EvalConfig.resolve({})


def test_eval_and_certify_cli_on_a_saved_run(tmp_path):
    from typer.testing import CliRunner

    from robustproto.checkpoint import save_model
    from robustproto.cli import app
    from robustproto.data import load_split

    data = load_split("mnist-small", "train", max_samples=200)
    x = torch.stack([data[i][0] for i in range(len(data))])
    model = robustproto.wrap("flatten", head="glvq", num_classes=10)
    with torch.no_grad():
        model.head.init_from_data(model.embed(x), data.labels)
    run = tmp_path / "run"
    run.mkdir()
    save_model(model, run / "model.safetensors", {"dataset": "mnist-small"})
    report, plot = tmp_path / "r.json", tmp_path / "c.png"
    result = CliRunner().invoke(app, ["eval", "--model", str(run), "--attack", "fgsm", "--attack", "fab",
                                      "--eps", "0,0.1", "--n-samples", "20", "--bisection-steps", "1",
                                      "--report", str(report), "--plot", str(plot)])
    assert result.exit_code == 0, result.output
    parsed = json.loads(report.read_text())
    assert parsed["n_samples"] == 20 and parsed["dataset"] == "mnist-small" and plot.is_file()
    result = CliRunner().invoke(app, ["certify", "--model", str(run), "--n-samples", "20", "--radii", "0.5,1",
                                      "--report", str(tmp_path / "cert.json")])
    assert result.exit_code == 0, result.output
    cert = json.loads((tmp_path / "cert.json").read_text())
    assert len(cert["radii"]) == 20 and set(cert["certified_accuracy"]) == {"0.5", "1"}


def test_each_finished_attack_is_handed_out_as_a_partial_report(tiny):
    model, x, y = tiny
    partial = []
    final = evaluate(model, (x, y), attacks={"Linf": ["fgsm", "pgd-5"], "L2": ["fgm"]},
                     eps={"Linf": [0.1], "L2": [1.0]}, partial_report=partial.append)
    assert [p["unfinished"] for p in partial] == [["pgd-5/Linf", "fgm/L2"], ["fgm/L2"]]  # none after the last
    assert "unfinished" not in final
    for report, done in zip(partial, (["fgsm"], ["fgsm", "pgd-5"])):
        assert [r["attack"] for r in report["results"]] == done
        assert _without_timings(report["results"]) == _without_timings(final["results"][:len(done)])
        assert set(report["distances"]) == {"Linf"} and set(report["distances"]["Linf"]) == {*done, "worst_case"}


def test_an_interrupted_eval_keeps_the_report_of_its_finished_attacks(tmp_path, monkeypatch, fake_attack):
    from typer.testing import CliRunner

    from robustproto.attacks import ATTACKS
    from robustproto.checkpoint import save_model
    from robustproto.cli import app

    def interrupted(model, eps, norm, num_classes, options):
        def attack(x, y):
            raise KeyboardInterrupt  # Ctrl-C during the second attack

        return attack

    monkeypatch.setitem(ATTACKS, "interrupted", fake_attack(interrupted))
    run = tmp_path / "run"
    run.mkdir()
    save_model(robustproto.wrap("flatten", head="glvq", num_classes=10), run / "model.safetensors",
               {"dataset": "mnist-small"})
    report = tmp_path / "r.json"
    result = CliRunner().invoke(app, ["eval", "--model", str(run), "--attack", "fgsm", "--attack", "interrupted",
                                      "--eps", "0.1", "--n-samples", "20", "--report", str(report)])
    assert result.exit_code != 0
    kept = json.loads(report.read_text())
    assert [r["attack"] for r in kept["results"]] == ["fgsm"] and kept["unfinished"] == ["interrupted/Linf"]


def _without_timings(report):
    drop = {"seconds", "clean_seconds", "distance_seconds"}
    if isinstance(report, dict):
        return {k: _without_timings(v) for k, v in report.items() if k not in drop}
    if isinstance(report, list):
        return [_without_timings(v) for v in report]
    return report


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_evaluate_leaves_modes_and_buffers_exactly_as_found(dropout_bn_model, mnist_like, fast, menu, mode):
    model = dropout_bn_model.train(mode == "train")
    x, _ = mnist_like
    with torch.no_grad():
        y = model.eval()(x[:16]).argmax(1)  # every point correctly classified: every attack runs on all of them
    model.train(mode == "train")
    modes = {name: m.training for name, m in model.named_modules()}
    state = {k: v.clone() for k, v in model.state_dict().items()}
    grads = {name: p.requires_grad for name, p in model.named_parameters()}
    calls = []
    hook = [m.register_forward_pre_hook(lambda mod, inp: calls.append(mod.training))
            for m in model.modules() if isinstance(m, (torch.nn.BatchNorm2d, torch.nn.Dropout))]
    plan = {"L2": menu("L2"), "Linf": menu("Linf")}
    eps = {"L2": [1.0], "Linf": [0.1]}
    first = evaluate(model, (x[:8], y[:8]), attacks=plan, eps=eps, attack_options=fast, bisection_steps=1)
    for h in hook:
        h.remove()
    assert calls and not any(calls)  # no BatchNorm or dropout forward pass ran in training mode
    assert {name: m.training for name, m in model.named_modules()} == modes
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert {name: p.requires_grad for name, p in model.named_parameters()} == grads
    second = evaluate(model, (x[:8], y[:8]), attacks=plan, eps=eps, attack_options=fast, bisection_steps=1)
    assert _without_timings(first) == _without_timings(second)
