"""robustproto.attacks: the menu, its names and options, the loss of gradient attacks, and building any attack."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

import robustproto
from robustproto.attacks import (ATTACKS, GradientAttack, attack_loss, build_attack, default_loss, gradient_attack,
                                 parse_attack)
from robustproto.errors import UsageError


def _imports_at_import_time(tree: ast.Module):
    """The modules a source imports when it is imported: every import statement outside function bodies."""
    stack = list(tree.body)
    while stack:
        node = stack.pop()
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            yield node.module or ""
        elif not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            stack.extend(ast.iter_child_nodes(node))


def test_no_module_of_the_package_imports_torchattacks_at_import_time():
    """``import robustproto`` stays cheap: torchattacks is imported inside functions only (checked on the source, so
    the test does not depend on what other tests imported, and needs no second interpreter)."""
    sources = list(Path(robustproto.__file__).parent.rglob("*.py"))
    assert any(p.parent.name == "attacks" for p in sources)
    for path in sources:
        imported = {name.split(".")[0] for name in _imports_at_import_time(ast.parse(path.read_text()))}
        assert "torchattacks" not in imported, path
    assert "torchattacks" in {n.split(".")[0] for n in _imports_at_import_time(ast.parse("def f():\n    pass\n"
                                                                                         "import torchattacks.x"))}


def test_parse_attack_reads_steps_loss_and_options():
    key, spec, options = parse_attack("pgd-20@margin", {"pgd": {"random_start": False}})
    assert (key, spec, options["steps"], options["loss"], options["random_start"]) == ("pgd", ATTACKS["pgd"], 20,
                                                                                       "margin", False)
    parsed = parse_attack("fgsm", {})
    assert parsed.key == "fgsm" and parsed.options == {"loss": "auto"}
    assert parse_attack("fgsm").options is not ATTACKS["fgsm"].defaults  # a copy: the menu stays as it is
    for name, match in (("pgdx", "unknown 'pgdx'"), ("fgsm-5", "no steps to set"), ("deepfool@ce", "no loss"),
                        ("pgd@hinge", "loss 'hinge'")):
        with pytest.raises(UsageError, match=match):
            parse_attack(name, {})
    with pytest.raises(UsageError, match="unknown option"):
        parse_attack("square", {"square": {"queries": 3}})
    with pytest.raises(UsageError, match="works in L2, not Linf"):
        parse_attack("deepfool", {}, norm="linf")


def test_build_attack_resolves_the_loss_and_checks_norm_and_budget(digits):
    model, x, y = digits
    linear = robustproto.wrap("flatten", head="linear", num_classes=10).eval()
    fgsm = build_attack("fgsm", linear, 0.1)
    assert isinstance(fgsm, GradientAttack) and fgsm.loss == "ce" and default_loss(linear) == "ce"
    pgd = build_attack("pgd", linear, 0.1, options={"steps": 3, "loss": "margin"})
    assert (pgd.steps, pgd.loss, pgd.alpha) == (3, "margin", pytest.approx(2.5 * 0.1 / 3))
    # a prototype head: "auto" is the per-point worst of margin and CE, the same as asking for it
    assert default_loss(model) == "ce+margin"
    ours = build_attack("fgsm", model, 0.1)(x, y)
    assert torch.equal(ours, gradient_attack(model, 0.1, "Linf", "ce+margin", alpha=0.1, steps=1)(x, y))
    assert type(build_attack("fab", model, 1.0, norm="L2")).__name__ == "FAB"  # num_classes from the model
    with pytest.raises(UsageError, match="works in Linf, not L2"):
        build_attack("fgsm", model, 0.1, norm="L2")
    with pytest.raises(UsageError, match="eps"):
        build_attack("fgsm", model, -0.1)
    with pytest.raises(UsageError, match="num_classes"):
        build_attack("fab", torch.nn.Flatten(), 1.0)
    with pytest.raises(UsageError, match="at least 4 classes"):
        build_attack("autoattack", model, 0.1, num_classes=3)


def test_a_gradient_attack_serves_a_training_step(digits):
    """What adversarial training does: build the attack in eval mode, then train on its images."""
    model, x, y = digits
    attack = build_attack("pgd-3@margin", model, 0.1)
    adv = attack(x[:16], y[:16])
    assert (adv - x[:16]).abs().amax() <= 0.1 + 1e-6 and adv.min() >= 0 and adv.max() <= 1
    assert not model.training  # torchattacks put the model back into the mode it had
    z = model.embed(adv)
    model.head.loss(z, model.head(z), y[:16]).backward()
    assert model.head.prototypes.grad is not None
    model.zero_grad(set_to_none=True)


def test_attack_loss_margin_is_scale_free_and_bad_losses_are_usage_errors():
    scores, y = torch.tensor([[-1.0, -3.0, -2.0]]), torch.tensor([1])
    assert attack_loss(scores, y, "margin").item() == pytest.approx(2.0)
    assert attack_loss(100 * scores, y, "margin").item() == pytest.approx(200.0)
    with pytest.raises(UsageError, match="hinge"):
        attack_loss(scores, y, "hinge")


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


def test_standard_autoattack_is_built_with_the_original_settings(digits):
    model, _, _ = digits
    suite = ATTACKS["autoattack"].build(model, 0.3, "Linf", 10, dict(ATTACKS["autoattack"].defaults))
    apgd_ce, apgd_t, fab_t, square = suite.attacks
    assert (type(apgd_ce).__name__, apgd_ce.loss, apgd_ce.steps, apgd_ce.n_restarts) == ("APGD", "ce", 100, 1)
    assert (type(apgd_t).__name__, apgd_t.steps, apgd_t.n_target_classes) == ("APGDT", 100, 9)
    assert (type(fab_t).__name__, fab_t.steps, fab_t.multi_targeted, fab_t.n_target_classes) == ("FAB", 100, True, 9)
    assert (type(square).__name__, square.n_queries) == ("Square", 5000)
    assert all(a.eps == 0.3 and a.norm == "Linf" for a in suite.attacks)


def test_margin_loss_is_the_default_beside_ce_for_prototype_heads(digits, scaled_twin):
    model, x, y = digits
    report = robustproto.evaluate(model, (x, y), attacks=["pgd-5", "fgsm@margin", "fgsm@ce"], eps=[0.1])
    losses = {r["attack"]: r["loss"] for r in report["results"]}
    assert losses == {"pgd-5": "ce+margin", "fgsm@margin": "margin", "fgsm@ce": "ce"}
    # scaled by 100 the same classifier saturates softmax: CE-FGSM then measures the scale, margin-FGSM does not
    report = robustproto.evaluate(scaled_twin(model, 100.0), (x, y), attacks=["fgsm@margin", "fgsm@ce"], eps=[0.02])
    acc = {r["attack"]: r["robust_accuracy"] for r in report["results"]}
    assert acc["fgsm@margin"] < acc["fgsm@ce"], acc
    linear = robustproto.wrap("flatten", head="linear", num_classes=10)  # softmax logits: CE is the default
    assert robustproto.evaluate(linear, (x, y), attacks=["fgsm"], eps=[0.1])["results"][0]["loss"] == "ce"
    with pytest.raises(ValueError, match="loss 'hinge'"):
        robustproto.evaluate(model, (x, y), attacks=["pgd@hinge"], eps=[0.1])
    with pytest.raises(ValueError, match="no loss to choose"):
        robustproto.evaluate(model, (x, y), attacks=["square@margin"], eps=[0.1])


def test_bad_attack_names_and_norms_are_clear_errors(tiny):
    model, x, y = tiny
    with pytest.raises(ValueError, match="unknown 'pgdx'"):
        robustproto.evaluate(model, (x, y), attacks=["pgdx"], eps=[0.1])
    with pytest.raises(ValueError, match="works in L2, not Linf"):
        robustproto.evaluate(model, (x, y), attacks=["deepfool"], eps=[0.1], norm="Linf")
    with pytest.raises(ValueError, match="unknown option"):
        robustproto.evaluate(model, (x, y), attacks=["square"], eps=[0.1], attack_options={"square": {"queries": 3}})
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        robustproto.evaluate(model, (x * 255, y), attacks=["fgsm"], eps=[0.1])


@pytest.mark.parametrize("norm, eps", [("Linf", [0.05, 0.1]), ("L2", [1.0, 2.0])])
def test_a_model_and_its_rescaled_twin_get_the_same_numbers(digits, scaled_twin, fast, menu, norm, eps):
    model, x, y = digits
    # 128, not 100: a power of two scales every float exactly, so a difference is the attack's, not rounding's
    # (with c = 100, DeepFool's 20-step budget ends on either side of the boundary for 2 of 64 points)
    twin = scaled_twin(model, 128.0)
    with torch.no_grad():
        assert torch.equal(model(x).argmax(1), twin(x).argmax(1))
    reports = [robustproto.evaluate(m, (x, y), attacks=menu(norm), eps=eps, norm=norm, attack_options=fast)
               for m in (model, twin)]
    rows = [{(r["attack"], r["eps"]): r["robust_accuracy"] for r in rep["results"]} for rep in reports]
    assert rows[0] == rows[1]
    assert min(rows[0].values()) < reports[0]["clean_accuracy"]  # the attacks did break points
