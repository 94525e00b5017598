"""robustproto.evaluate: honest robust accuracy, verified attack outputs, median-δ conventions, report and plot."""

from __future__ import annotations

import json
import math

import pytest
import torch

import robustproto
from robustproto.config import EvalSettings
from robustproto.evaluate import ATTACKS, AttackError, AttackSpec, evaluate, report_json, robustness_figure


@pytest.fixture
def tiny(mnist_like):
    """flatten + GLVQ on 32 random 28×28 images; the first 6 labels are shifted, so some points are misclassified."""
    x, y = mnist_like
    model = robustproto.wrap("flatten", head="glvq", num_classes=10)
    with torch.no_grad():
        model.head.init_from_data(model.embed(x), y)
    y_eval = y.clone()
    y_eval[:6] = (y_eval[:6] + 1) % 10
    return model.eval(), x, y_eval


def _clean(model, x, y):
    with torch.no_grad():
        return float((model(x).argmax(1) == y).double().mean())


def _curve(report, attack):
    return [r["robust_accuracy"] for r in sorted((r for r in report["results"] if r["attack"] == attack),
                                                 key=lambda r: r["eps"])]


def test_fgsm_at_zero_budget_is_exactly_the_clean_accuracy(tiny):
    model, x, y = tiny
    clean = _clean(model, x, y)
    assert 0 < clean < 1  # misclassified points exist, so counting them as failures matters
    report = evaluate(model, (x, y), attacks=["fgsm"], eps=[0.0, 0.3], bisection_steps=0)
    assert report["clean_accuracy"] == clean
    assert _curve(report, "fgsm")[0] == clean
    assert _curve(report, "fgsm")[1] < clean


def test_pgd_robust_accuracy_never_rises_with_eps(tiny):
    model, x, y = tiny
    report = evaluate(model, (x, y), attacks=["pgd-10"], eps=[0.0, 0.05, 0.1, 0.15, 0.18, 0.2, 0.25], bisection_steps=0)
    curve = _curve(report, "pgd-10")
    assert all(b <= a for a, b in zip(curve, curve[1:])), curve
    assert curve[-1] < curve[0]
    assert report["settings"]["attacks"]["pgd-10/Linf"]["steps"] == 10


def _fake(build, minimal=False, defaults=None):
    return AttackSpec(("Linf", "L2"), minimal, True, dict(defaults or {}), build, "test double")


def test_verification_rejects_perturbations_beyond_the_budget(tiny, monkeypatch):
    model, x, y = tiny
    monkeypatch.setitem(ATTACKS, "too-far", _fake(lambda m, eps, norm, k, o: lambda bx, by: (bx + 2 * eps).clamp(0, 1)))
    with pytest.raises(AttackError, match="outside its budget"):
        evaluate(model, (x, y), attacks=["too-far"], eps=[0.2], bisection_steps=0)
    report = evaluate(model, (x, y), attacks=["too-far"], eps=[0.2], bisection_steps=0, strict=False)
    assert _curve(report, "too-far") == [report["clean_accuracy"]]  # rejected outputs never count as broken
    assert any("outside its budget" in w for w in report["warnings"])


def test_verification_rejects_images_outside_the_box(tiny, monkeypatch):
    model, x, y = tiny
    monkeypatch.setitem(ATTACKS, "off-box", _fake(lambda m, eps, norm, k, o: lambda bx, by: bx - 0.05))
    with pytest.raises(AttackError):
        evaluate(model, (x, y), attacks=["off-box"], eps=[0.1], bisection_steps=0)


def test_a_float_rounding_excess_is_projected_not_rejected(tiny, monkeypatch):
    model, x, y = tiny
    fgsm = ATTACKS["fgsm"].build  # FGSM with a budget 3e-6 too large: within the float tolerance
    monkeypatch.setitem(ATTACKS, "rounding", _fake(lambda m, eps, norm, k, o: fgsm(m, eps + 3e-6, norm, k, o),
                                                   defaults=ATTACKS["fgsm"].defaults))
    report = evaluate(model, (x, y), attacks=["rounding"], eps=[0.3], bisection_steps=0)
    finite = [d for d in report["distances"]["Linf"]["rounding"] if 0 < d < math.inf]
    assert finite and max(finite) <= 0.3 + 1e-6  # projected back: float32 rounding only, not the 3e-6 excess


def test_median_distance_conventions(tiny, monkeypatch):
    model, x, y = tiny
    monkeypatch.setitem(ATTACKS, "never", _fake(lambda m, eps, norm, k, o: lambda bx, by: bx, minimal=True))
    report = evaluate(model, (x, y), attacks=["never", "deepfool"], eps=[], norm="L2")
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


def test_bisection_refines_a_fixed_budget_distance(tiny):
    model, x, y = tiny
    coarse = evaluate(model, (x, y), attacks=["fgsm"], eps=[0.3], bisection_steps=0)
    fine = evaluate(model, (x, y), attacks=["fgsm"], eps=[0.3], bisection_steps=5)
    c, f = torch.tensor(coarse["distances"]["Linf"]["fgsm"]), torch.tensor(fine["distances"]["Linf"]["fgsm"])
    assert (f <= c).all() and (f < c).any()
    assert f[torch.isfinite(f)].max() <= 0.3


def test_report_has_every_field_and_is_valid_json(tiny, tmp_path):
    model, x, y = tiny
    report = evaluate(model, (x, y), attacks={"Linf": ["fgsm", "fab"], "L2": ["fgm"]},
                      eps={"Linf": [0.05, 0.1], "L2": [0.5]}, bisection_steps=1, dataset_name="random")
    for key in ("model", "dataset", "n_samples", "clean_accuracy", "results", "median_distance", "threshold_accuracy",
                "warnings"):
        assert key in report
    assert set(report["results"][0]) >= {"attack", "norm", "eps", "robust_accuracy", "seconds"}
    assert set(report["median_distance"]) == {"Linf", "L2"}
    assert set(report["median_distance"]["Linf"]) == {"fgsm", "fab", "worst_case"}
    assert report["n_samples"] == 32 and report["model"] == "flatten+glvq"
    text = report_json(report)

    def reject(constant):
        raise ValueError(f"invalid JSON constant {constant}")

    parsed = json.loads(text, parse_constant=reject)
    infinite = [d for d in report["distances"]["Linf"]["fgsm"] if d == math.inf]
    assert infinite  # fgsm at ≤ 0.1 leaves points unbroken: their δ = ∞ is written as "inf"
    assert parsed["distances"]["Linf"]["fgsm"].count("inf") == len(infinite)


def test_robustness_curve_png_and_figure(tiny, tmp_path):
    import matplotlib.image

    model, x, y = tiny
    path = tmp_path / "curve.png"
    report = evaluate(model, (x, y), attacks=["fgsm", "pgd-5", "gaussian"], eps=[0, 0.1, 0.3], bisection_steps=0,
                      plot=path)
    image = matplotlib.image.imread(path)
    assert image.shape[:2] == (480, 640)
    (ax,) = robustness_figure(report).axes
    assert ax.get_xlabel().startswith("ε") and ax.get_ylabel() == "robust accuracy"
    assert [line.get_label() for line in ax.get_lines()] == ["fgsm", "pgd-5", "gaussian"]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["fgsm", "pgd-5", "gaussian"]


def test_gradient_masking_warnings(tiny, monkeypatch):
    model, x, y = tiny
    # a white-box "attack" that does nothing: black-box Square beats it and its curve stays flat
    monkeypatch.setitem(ATTACKS, "idle", _fake(lambda m, eps, norm, k, o: lambda bx, by: bx))
    report = evaluate(model, (x, y), attacks=["idle", "square"], eps=[0.25, 0.3, 0.6], bisection_steps=0,
                      attack_options={"square": {"n_queries": 100}})
    text = " ".join(report["warnings"])
    assert "square (black-box) beats idle" in text
    assert "does not fall" in text
    assert "above the best constant guess" in text


def test_bad_attack_names_and_norms_are_clear_errors(tiny):
    model, x, y = tiny
    with pytest.raises(ValueError, match="unknown 'pgdx'"):
        evaluate(model, (x, y), attacks=["pgdx"], eps=[0.1])
    with pytest.raises(ValueError, match="works in L2, not Linf"):
        evaluate(model, (x, y), attacks=["deepfool"], eps=[0.1], norm="Linf")
    with pytest.raises(ValueError, match="unknown option"):
        evaluate(model, (x, y), attacks=["square"], eps=[0.1], attack_options={"square": {"queries": 3}})
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        evaluate(model, (x * 255, y), attacks=["fgsm"], eps=[0.1])


def test_a_weakened_autoattack_is_never_called_standard(tiny):
    model, x, y = tiny
    report = evaluate(model, (x[:8], y[:8]), attacks=["autoattack"], eps=[0.1], bisection_steps=0,
                      attack_options={"autoattack": {"steps": 5, "n_queries": 20}})
    assert report["settings"]["attacks"]["autoattack/Linf"]["version"].startswith("weakened")
    assert any("weaker than the standard AutoAttack" in w for w in report["warnings"])


def test_eval_settings_from_recipe_tables_and_cli_overrides():
    table = {"n_samples": 100, "L2": {"attack": ["deepfool", "fgm"], "eps": [0.5], "threshold": 2.0},
             "Linf": {"attack": ["fgsm"], "eps": [0.1]}, "certify": {"norm": "L2"}}
    s = EvalSettings.resolve(table)
    assert dict(s.attacks) == {"L2": ("deepfool", "fgm"), "Linf": ("fgsm",)} and s.thresholds["L2"] == 2.0
    s = EvalSettings.resolve(table, norm="linf", attack_opt=["square:n_queries=10"])
    assert dict(s.attacks) == {"Linf": ("fgsm",)} and s.attack_options == {"square": {"n_queries": 10}}
    s = EvalSettings.resolve(table, attack=["pgd"], eps=[0.2], n_samples=5)
    assert dict(s.attacks) == {"Linf": ("pgd",)} and dict(s.eps) == {"Linf": (0.2,)} and s.n_samples == 5
    with pytest.raises(ValueError, match="unknown key"):
        EvalSettings.resolve({"atack": ["fgsm"]})
    with pytest.raises(ValueError, match="no attack"):
        EvalSettings.resolve({})


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


# ------------------------------------------------------------------ losses, scale, state: the honest-numbers checks


@pytest.fixture(scope="module")
def digits():
    """64 bundled MNIST test images and a flatten → 16-d linear neck → GLVQ model initialised on 512 training images."""
    from robustproto.data import load_split

    train, test = load_split("mnist-small", "train", max_samples=512), load_split("mnist-small", "test", max_samples=64)
    xt = torch.stack([train[i][0] for i in range(len(train))])
    x = torch.stack([test[i][0] for i in range(len(test))])
    torch.manual_seed(0)
    model = robustproto.wrap("flatten", head="glvq", num_classes=10, embed_dim=16)
    with torch.no_grad():
        model.head.init_from_data(model.embed(xt), train.labels)
    return model.eval(), x, test.labels.clone()


def _scaled_twin(model, c):
    """The same classifier with its embedding and prototypes multiplied by c: GLVQ's decisions do not change."""
    import copy

    twin = copy.deepcopy(model)
    with torch.no_grad():
        twin.neck.weight.mul_(c)
        twin.neck.bias.mul_(c)
        twin.head.prototypes.mul_(c)
    return twin


@pytest.mark.parametrize("name, reference", [
    ("fgsm", lambda ta, m, e: ta.FGSM(m, eps=e)),
    ("bim", lambda ta, m, e: ta.BIM(m, eps=e, alpha=e / 10, steps=10)),
    ("mim", lambda ta, m, e: ta.MIFGSM(m, eps=e, alpha=e / 10, steps=10, decay=1.0)),
    ("pgd", lambda ta, m, e: ta.PGD(m, eps=e, alpha=2.5 * e / 20, steps=20, random_start=True)),
    ("pgd-l2", lambda ta, m, e: ta.PGDL2(m, eps=e * 10, alpha=2.5 * e * 10 / 20, steps=20, random_start=True)),
    ("fgm", lambda ta, m, e: ta.PGDL2(m, eps=e * 10, alpha=e * 10, steps=1, random_start=False)),
])
def test_ce_gradient_attacks_equal_torchattacks(digits, name, reference):
    import torchattacks

    model, x, y = digits
    eps = 0.1 * (10 if name in ("pgd-l2", "fgm") else 1)
    ours = ATTACKS[name].build(model, eps, ATTACKS[name].norms[0], 10, {**ATTACKS[name].defaults, "loss": "ce"})
    torch.manual_seed(1)
    expected = reference(torchattacks, model, 0.1)(x, y)
    torch.manual_seed(1)
    assert torch.allclose(ours(x, y), expected, atol=1e-6)


def test_margin_loss_is_the_default_beside_ce_for_prototype_heads(digits):
    model, x, y = digits
    report = evaluate(model, (x, y), attacks=["pgd-5", "fgsm@margin", "fgsm@ce"], eps=[0.1])
    losses = {r["attack"]: r["loss"] for r in report["results"]}
    assert losses == {"pgd-5": "ce+margin", "fgsm@margin": "margin", "fgsm@ce": "ce"}
    # scaled by 100 the same classifier saturates softmax: CE-FGSM then measures the scale, margin-FGSM does not
    report = evaluate(_scaled_twin(model, 100.0), (x, y), attacks=["fgsm@margin", "fgsm@ce"], eps=[0.02])
    acc = {r["attack"]: r["robust_accuracy"] for r in report["results"]}
    assert acc["fgsm@margin"] < acc["fgsm@ce"], acc
    linear = robustproto.wrap("flatten", head="linear", num_classes=10)  # softmax logits: CE is the default
    assert evaluate(linear, (x, y), attacks=["fgsm"], eps=[0.1])["results"][0]["loss"] == "ce"
    with pytest.raises(ValueError, match="loss 'hinge'"):
        evaluate(model, (x, y), attacks=["pgd@hinge"], eps=[0.1])
    with pytest.raises(ValueError, match="no loss to choose"):
        evaluate(model, (x, y), attacks=["square@margin"], eps=[0.1])


FAST = {"deepfool": {"steps": 20}, "cw": {"steps": 20}, "fab": {"steps": 20}, "square": {"n_queries": 200},
        "autoattack": {"steps": 10, "n_queries": 100}, "bim": {"steps": 5}, "mim": {"steps": 5},
        "pgd": {"steps": 5}, "pgd-l2": {"steps": 5}}


def _menu(norm):
    return [name for name, spec in ATTACKS.items() if norm in spec.norms]


@pytest.mark.parametrize("norm, eps", [("Linf", [0.05, 0.1]), ("L2", [1.0, 2.0])])
def test_a_model_and_its_rescaled_twin_get_the_same_numbers(digits, norm, eps):
    model, x, y = digits
    # 128, not 100: a power of two scales every float exactly, so a difference is the attack's, not rounding's
    # (with c = 100, DeepFool's 20-step budget ends on either side of the boundary for 2 of 64 points)
    twin = _scaled_twin(model, 128.0)
    with torch.no_grad():
        assert torch.equal(model(x).argmax(1), twin(x).argmax(1))
    reports = [evaluate(m, (x, y), attacks=_menu(norm), eps=eps, norm=norm, attack_options=FAST) for m in (model, twin)]
    rows = [{(r["attack"], r["eps"]): r["robust_accuracy"] for r in rep["results"]} for rep in reports]
    assert rows[0] == rows[1]
    assert min(rows[0].values()) < reports[0]["clean_accuracy"]  # the attacks did break points


@pytest.fixture
def dropout_bn_model():
    """kp_cnn_mnist (BatchNorm) with dropout and a GLVQ head, given non-trivial BatchNorm statistics."""
    torch.manual_seed(0)
    model = robustproto.wrap("kp_cnn_mnist", head="glvq", num_classes=10, in_chans=1, drop_rate=0.5)
    x = torch.rand(64, 1, 28, 28)
    with torch.no_grad():
        model.train()(x)  # running statistics that differ from batch statistics
        model.eval()
        model.head.init_from_data(model.embed(x), torch.arange(64) % 10)
    return model


def _without_timings(report):
    drop = {"seconds", "clean_seconds", "distance_seconds"}
    if isinstance(report, dict):
        return {k: _without_timings(v) for k, v in report.items() if k not in drop}
    if isinstance(report, list):
        return [_without_timings(v) for v in report]
    return report


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_evaluate_leaves_modes_and_buffers_exactly_as_found(dropout_bn_model, mnist_like, mode):
    model = dropout_bn_model.train(mode == "train")
    x, _ = mnist_like
    with torch.no_grad():
        y = model.eval()(x[:16]).argmax(1)  # every point correctly classified: every attack runs on all of them
    model.train(mode == "train")
    modes = {name: m.training for name, m in model.named_modules()}
    state = {k: v.clone() for k, v in model.state_dict().items()}
    calls = []
    hook = [m.register_forward_pre_hook(lambda mod, inp: calls.append(mod.training))
            for m in model.modules() if isinstance(m, (torch.nn.BatchNorm2d, torch.nn.Dropout))]
    plan = {"L2": _menu("L2"), "Linf": _menu("Linf")}
    eps = {"L2": [1.0], "Linf": [0.1]}
    first = evaluate(model, (x[:8], y[:8]), attacks=plan, eps=eps, attack_options=FAST, bisection_steps=1)
    for h in hook:
        h.remove()
    assert calls and not any(calls)  # no BatchNorm or dropout forward pass ran in training mode
    assert {name: m.training for name, m in model.named_modules()} == modes
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    second = evaluate(model, (x[:8], y[:8]), attacks=plan, eps=eps, attack_options=FAST, bisection_steps=1)
    assert _without_timings(first) == _without_timings(second)


def test_standard_autoattack_is_built_with_the_original_settings(digits):
    model, _, _ = digits
    suite = ATTACKS["autoattack"].build(model, 0.3, "Linf", 10, dict(ATTACKS["autoattack"].defaults))
    apgd_ce, apgd_t, fab_t, square = suite.attacks
    assert (type(apgd_ce).__name__, apgd_ce.loss, apgd_ce.steps, apgd_ce.n_restarts) == ("APGD", "ce", 100, 1)
    assert (type(apgd_t).__name__, apgd_t.steps, apgd_t.n_target_classes) == ("APGDT", 100, 9)
    assert (type(fab_t).__name__, fab_t.steps, fab_t.multi_targeted, fab_t.n_target_classes) == ("FAB", 100, True, 9)
    assert (type(square).__name__, square.n_queries) == ("Square", 5000)
    assert all(a.eps == 0.3 and a.norm == "Linf" for a in suite.attacks)


def test_a_fixed_budget_attack_runs_once_per_eps_by_default(digits, monkeypatch):
    model, x, y = digits
    built = []
    pgd = ATTACKS["pgd"].build
    monkeypatch.setitem(ATTACKS, "pgd", AttackSpec(("Linf",), False, True, ATTACKS["pgd"].defaults,
                                                   lambda *a: built.append(a[1]) or pgd(*a), "counted"))
    report = evaluate(model, (x, y), attacks=["pgd-5@ce"], eps=[0.1])
    assert built == [0.1]
    assert "not refined" in report["settings"]["fixed_budget_distances"]
    evaluate(model, (x, y), attacks=["pgd-5@ce"], eps=[0.1], bisection_steps=2)
    assert len(built) > 2
    with pytest.raises(ValueError, match="fixed budget"):
        evaluate(model, (x, y), attacks=["pgd"], eps=[])
