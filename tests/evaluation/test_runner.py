"""robustproto.evaluation.runner: verified attack outputs, the data contract, one run per ε, bisection."""

from __future__ import annotations

import math

import pytest
import torch

import robustproto
from robustproto.attacks import ATTACKS, AttackSpec
from robustproto.errors import AttackError, UsageError
from robustproto.evaluation import AttackRunner, collect, run_attack, verify


def test_verify_projects_a_rounding_excess_and_rejects_the_rest():
    x = torch.full((3, 1, 2, 2), 0.5)
    adv = x.clone()
    adv[0] += 0.1 + 5e-6  # within the tolerance of eps = 0.1: projected
    adv[1] += 0.2  # beyond it: rejected
    adv[2, 0, 0, 0] = float("nan")  # not finite: rejected
    out, valid, worst = verify(x, adv, 0.1, "Linf")
    assert valid.tolist() == [True, False, False] and worst == math.inf
    assert (out[0] - x[0]).abs().max() <= 0.1 + 1e-7
    assert torch.equal(out[1:], x[1:])  # an invalid image is replaced by the clean one
    _, valid, _ = verify(x, x - 0.6, None, "L2")  # no budget: only the box counts
    assert not valid.any()


def test_collect_takes_pairs_datasets_and_loaders_and_names_bad_data(mnist_like):
    x, y = mnist_like
    pairs = [collect((x, y), 10, 4), collect(torch.utils.data.TensorDataset(x, y), 10, 4),
             collect(torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=3), 10, 4)]
    for cx, cy in pairs:
        assert torch.equal(cx, x[:10]) and torch.equal(cy, y[:10])
    with pytest.raises(UsageError, match=r"\[0, 1\]"):
        collect((x * 255, y), None, 4)
    with pytest.raises(UsageError, match="no data"):
        collect((x[:0], y[:0]), None, 4)
    with pytest.raises(TypeError, match="DataLoader"):
        collect(42, None, 4)


def test_the_runner_raises_or_warns_on_invalid_outputs(tiny):
    model, x, y = tiny
    too_far = lambda bx, by: (bx + 0.4).clamp(0, 1)  # noqa: E731
    with pytest.raises(AttackError, match="too-far returned"):
        AttackRunner(model).run(too_far, x, y, 0.2, "Linf", "too-far")
    lenient = AttackRunner(model, strict=False)
    out = lenient.run(too_far, x, y, 0.2, "Linf", "too-far")
    assert not out.success.any() and len(lenient.warnings) == 1
    assert run_attack(too_far, model, x, y, 0.0, "Linf").invalid == 0  # at ε = 0 no attack is called


def test_verification_rejects_perturbations_beyond_the_budget(tiny, monkeypatch, fake_attack, curve):
    model, x, y = tiny
    monkeypatch.setitem(ATTACKS, "too-far", fake_attack(lambda m, eps, norm, k, o: lambda bx, by: (bx + 2 * eps).clamp(0, 1)))
    with pytest.raises(AttackError, match="outside its budget"):
        robustproto.evaluate(model, (x, y), attacks=["too-far"], eps=[0.2], bisection_steps=0)
    report = robustproto.evaluate(model, (x, y), attacks=["too-far"], eps=[0.2], bisection_steps=0, strict=False)
    assert curve(report, "too-far") == [report["clean_accuracy"]]  # rejected outputs never count as broken
    assert any("outside its budget" in w for w in report["warnings"])


def test_verification_rejects_images_outside_the_box(tiny, monkeypatch, fake_attack):
    model, x, y = tiny
    monkeypatch.setitem(ATTACKS, "off-box", fake_attack(lambda m, eps, norm, k, o: lambda bx, by: bx - 0.05))
    with pytest.raises(AttackError):
        robustproto.evaluate(model, (x, y), attacks=["off-box"], eps=[0.1], bisection_steps=0)


def test_a_float_rounding_excess_is_projected_not_rejected(tiny, monkeypatch, fake_attack):
    model, x, y = tiny
    fgsm = ATTACKS["fgsm"].build  # FGSM with a budget 3e-6 too large: within the float tolerance
    monkeypatch.setitem(ATTACKS, "rounding", fake_attack(lambda m, eps, norm, k, o: fgsm(m, eps + 3e-6, norm, k, o),
                                                         defaults=ATTACKS["fgsm"].defaults))
    report = robustproto.evaluate(model, (x, y), attacks=["rounding"], eps=[0.3], bisection_steps=0)
    finite = [d for d in report["distances"]["Linf"]["rounding"] if 0 < d < math.inf]
    assert finite and max(finite) <= 0.3 + 1e-6  # projected back: float32 rounding only, not the 3e-6 excess


def test_bisection_refines_a_fixed_budget_distance(tiny):
    model, x, y = tiny
    coarse = robustproto.evaluate(model, (x, y), attacks=["fgsm"], eps=[0.3], bisection_steps=0)
    fine = robustproto.evaluate(model, (x, y), attacks=["fgsm"], eps=[0.3], bisection_steps=5)
    c, f = torch.tensor(coarse["distances"]["Linf"]["fgsm"]), torch.tensor(fine["distances"]["Linf"]["fgsm"])
    assert (f <= c).all() and (f < c).any()
    assert f[torch.isfinite(f)].max() <= 0.3


def test_a_fixed_budget_attack_runs_once_per_eps_by_default(digits, monkeypatch):
    model, x, y = digits
    built = []
    pgd = ATTACKS["pgd"].build
    monkeypatch.setitem(ATTACKS, "pgd", AttackSpec(("Linf",), False, True, ATTACKS["pgd"].defaults,
                                                   lambda *a: built.append(a[1]) or pgd(*a), "counted"))
    report = robustproto.evaluate(model, (x, y), attacks=["pgd-5@ce"], eps=[0.1])
    assert built == [0.1]
    assert "not refined" in report["settings"]["fixed_budget_distances"]
    robustproto.evaluate(model, (x, y), attacks=["pgd-5@ce"], eps=[0.1], bisection_steps=2)
    assert len(built) > 2
    with pytest.raises(ValueError, match="fixed budget"):
        robustproto.evaluate(model, (x, y), attacks=["pgd"], eps=[])
