"""robustproto.certify: certified radii are exact for linear models and never exceed a found adversarial."""

from __future__ import annotations

import pytest
import torch

import robustproto
from robustproto.certify import _local_radii, _one_hidden_layer, certify


def _model(mnist_like, backbone, head, **kwargs):
    x, y = mnist_like
    model = robustproto.wrap(backbone, head=head, num_classes=10, mean=[0.1], std=[0.5], **kwargs)
    if head != "linear":
        with torch.no_grad():
            model.head.init_from_data(model.embed(x), y)
    return model.eval()


def test_linear_model_radius_is_the_exact_distance_to_the_boundary(mnist_like):
    x, y = mnist_like
    model = _model(mnist_like, "flatten", "linear")
    report = certify(model, (x, y))
    assert report["lipschitz_constant"] == pytest.approx(2.0, rel=1e-5)  # 1/std: the normalisation only
    # by hand: f(x) = W (x − 0.1)/0.5 + b is affine in pixels with rows w_k / 0.5
    with torch.no_grad():
        scores = model(x).double()
    w = model.head.fc.weight.detach().double() / 0.5
    pred = scores.argmax(1)
    exact = torch.stack([min((scores[i, pred[i]] - scores[i, j]) / (w[pred[i]] - w[j]).norm()
                             for j in range(10) if j != pred[i]) for i in range(len(x))])
    exact = torch.where(pred == y, exact, torch.zeros_like(exact))
    assert torch.tensor(report["radii"]) == pytest.approx(exact, rel=1e-4, abs=1e-7)
    assert report["radii_local"] is None  # flatten is not a one-hidden-layer network


@pytest.mark.parametrize("backbone,head,kwargs", [("flatten", "glvq", {}), ("flatten", "gmlvq", {}),
                                                  ("mlp", "linear", {"width": 32})])
def test_certified_radius_never_exceeds_an_adversarial_found(mnist_like, backbone, head, kwargs):
    x, y = mnist_like
    x, y = x[:16], y[:16]
    model = _model(mnist_like, backbone, head, **kwargs)
    report = certify(model, (x, y))
    attacks = robustproto.evaluate(model, (x, y), attacks=["deepfool", "fab", "cw", "pgd-l2"], eps=[1.0, 4.0],
                                   norm="L2", bisection_steps=4,
                                   attack_options={"cw": {"steps": 30}, "fab": {"steps": 30}})
    found = torch.tensor(attacks["distances"]["L2"]["worst_case"])
    radii = torch.tensor(report["radii"])
    assert torch.isfinite(found).sum() >= 8  # the attacks did find adversarials to compare with
    assert (radii <= found + 1e-6).all(), (radii - found).max()
    assert (radii > 0).any()


def test_local_cross_lipschitz_bound_is_exact_at_radius_zero(mnist_like):
    """Proposition 2.2 at R = 0 is ‖∇f_c(x) − ∇f_j(x)‖ itself: compare with autograd."""
    x, _ = mnist_like
    model = _model(mnist_like, "mlp", "linear", width=16)
    net = _one_hidden_layer(model, x)
    assert net is not None
    xi = x[:1].clone().requires_grad_(True)
    scores = model(xi)[0]
    c = int(scores.argmax())
    grads = [torch.autograd.grad(scores[k], xi, retain_graph=True)[0].flatten().double() for k in range(10)]
    a = net.hidden(model.normalize(x[:1]).flatten(1)).detach().double()
    s = net.act_derivative(a)[0]
    for j in (k for k in range(10) if k != c):
        v = net.w[j] - net.w[c]
        beta = v[:, None] * v[None, :] * net.gram
        assert float(s @ beta @ s).__pow__(0.5) == pytest.approx(float((grads[c] - grads[j]).norm()), rel=1e-5)
    radius = _local_radii(net, x[:1], steps=20)
    assert radius.item() > 0


def test_local_bound_is_used_for_an_mlp_and_is_at_least_as_good_as_the_global_one(mnist_like):
    x, y = mnist_like
    model = _model(mnist_like, "mlp", "linear", width=32)
    report = certify(model, (x, y))
    assert report["radii_local"] is not None and "local cross-Lipschitz" in report["method"]
    radii, local, glob = (torch.tensor(report[k]) for k in ("radii", "radii_local", "radii_global"))
    assert torch.equal(radii, torch.maximum(local, glob))
    assert local.sum() > glob.sum()  # Hein & Andriushchenko: the local constant beats the global one


def test_report_fields_and_certified_accuracy(mnist_like):
    x, y = mnist_like
    model = _model(mnist_like, "flatten", "glvq")
    report = certify(model, (x, y), radii=[0.0, 0.5, 100.0])
    radii = torch.tensor(report["radii"])
    with torch.no_grad():
        correct = model(x).argmax(1) == y
    assert (radii[~correct] == 0).all() and len(radii) == len(y)
    assert report["certified_accuracy"]["0"] == pytest.approx(float(correct.double().mean()))
    assert report["certified_accuracy"]["100"] == 0.0
    assert report["median_radius"] == pytest.approx(float(radii.sort().values[15:17].mean()))


def test_a_head_without_margin_and_other_norms_are_one_line_errors(mnist_like):
    x, y = mnist_like
    model = _model(mnist_like, "flatten", "gtlvq")
    with pytest.raises(ValueError, match="gives no certified margin") as info:
        certify(model, (x, y))
    assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match="L2 radii"):
        certify(_model(mnist_like, "flatten", "glvq"), (x, y), norm="Linf")
