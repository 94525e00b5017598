"""robustproto.certify: certified radii are exact for linear models and never exceed the true distance to the
boundary or an adversarial found by FAB, CW and DeepFool on trained models."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import robustproto
from robustproto.certify import certify, certify_summary, local_gains, local_radii, one_hidden_layer
from robustproto.data import load_split

N_TEST = 64  # test points per trained model: enough for 50 certified ones, few enough for the attacks


def _model(mnist_like, backbone, head, **kwargs):
    x, y = mnist_like
    model = robustproto.wrap(backbone, head=head, num_classes=10, mean=[0.1], std=[0.5], **kwargs)
    if head != "linear":
        with torch.no_grad():
            model.head.init_from_data(model.embed(x), y)
    return model.eval()


def _tensors(data):
    images, labels = zip(*(data[i] for i in range(len(data))))
    return torch.stack(images), torch.as_tensor(labels)


@pytest.fixture(scope="module")
def mnist():
    """2000 training and N_TEST test images of the bundled MNIST subset, as tensors."""
    return (_tensors(load_split("mnist-small", "train", max_samples=2000)),
            _tensors(load_split("mnist-small", "test", max_samples=N_TEST)))


def _trained(mnist, backbone, head, steps, lr, **kwargs):
    """A model trained with Adam on batches of 64 (seeded): ~90 % test accuracy for the models used here."""
    (x, y), _ = mnist
    torch.manual_seed(0)
    model = robustproto.wrap(backbone, head=head, num_classes=10, **kwargs)
    with torch.no_grad():
        model.head.init_from_data(model.embed(x[:500]), y[:500])
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    batches = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(steps):
        i = torch.randint(len(x), (64,), generator=batches)
        z = model.embed(x[i])
        loss = model.head.loss(z, model.head(z), y[i])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            model.head.after_step()
    return model.eval()


@pytest.fixture(scope="module")
def mlp_linear(mnist):
    """The one-hidden-layer softplus network of Hein & Andriushchenko (32 units) with a linear head."""
    return _trained(mnist, "mlp", "linear", steps=300, lr=1e-2, width=32)


def _smallest_adversarial(model, x, y):
    """Per point the smallest L2 distance of an adversarial found by FAB, CW or DeepFool (∞ where none)."""
    report = robustproto.evaluate(model, (x, y), attacks=["fab", "cw", "deepfool"], norm="L2", bisection_steps=0,
                                  attack_options={"fab": {"steps": 20}, "deepfool": {"steps": 20}})
    return torch.tensor(report["distances"]["L2"]["worst_case"], dtype=torch.float64)


def _check_against_attacks(model, mnist, kinds):
    """Every certified radius of each kind is at most the distance of the closest adversarial found."""
    _, (x, y) = mnist
    report = certify(model, (x, y))
    found = _smallest_adversarial(model, x, y)
    for kind in kinds:
        radii = torch.tensor(report[kind], dtype=torch.float64)
        certified = radii > 0
        assert certified.sum() >= 50, (kind, int(certified.sum()))
        ratio = radii[certified] / found[certified]
        assert (radii <= found).all(), f"{kind}: radius / adversarial distance up to {float(ratio.max()):.6g}"
    return report


def test_a_linear_model_is_certified_to_its_exact_distance_to_the_boundary():
    """Pixel 0 against 0.1: the boundary of f(x) = ±a (x₀ − 0.1)/0.5 is x₀ = 0.1, the radius |x₀ − 0.1|."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(40, 1, 28, 28, generator=g)
    model = robustproto.wrap("flatten", head="linear", num_classes=2, mean=[0.1], std=[0.5]).eval()
    with torch.no_grad():
        model.head.fc.weight.zero_()
        model.head.fc.bias.zero_()
        model.head.fc.weight[0, 0], model.head.fc.weight[1, 0] = 3.0, -3.0
    y = (x[:, 0, 0, 0] <= 0.1).long()
    y[:4] = 1 - y[:4]  # misclassified points are certified to radius 0
    exact = (x[:, 0, 0, 0].double() - 0.1).abs()
    exact[:4] = 0.0
    report = certify(model, (x, y))
    assert report["lipschitz_constant"] == pytest.approx(2.0, rel=1e-5)  # 1/std: the normalisation only
    radii = torch.tensor(report["radii"], dtype=torch.float64)
    assert (radii <= exact).all()
    assert radii == pytest.approx(exact, rel=2e-4)  # only the rounding allowances below the exact value
    assert report["radii_local"] is None  # flatten is not a one-hidden-layer network


def test_the_global_radius_does_not_exceed_the_truth_where_float32_distances_cancel():
    """GLVQ with prototypes far from the data: ‖z‖² − 2z·w + ‖w‖² loses digits in float32.

    Two prototypes ±0.5 apart along pixel 0 and at 30 in every other embedding coordinate; with std 0.01 the
    boundary is x₀ = 0.5, so the exact radius is |x₀ − 0.5| in pixels. In float32 the margins come out up to
    ~25 % too large although the float32 model classifies every point correctly.
    """
    d = 8
    g = torch.Generator().manual_seed(0)
    model = robustproto.wrap("flatten", head="glvq", num_classes=2, img_size=d, mean=[0.5], std=[0.01]).eval()
    far = torch.full((d * d,), 30.0)
    far[0] = 0.0
    with torch.no_grad():
        model.head.prototypes.copy_(torch.stack([far, far]))
        model.head.prototypes[0, 0], model.head.prototypes[1, 0] = -0.5, 0.5
    x = torch.rand(200, 1, d, d, generator=g)
    offset = torch.logspace(-4, -2, 200) * torch.where(torch.arange(200) % 2 == 0, 1.0, -1.0)
    x[:, 0, 0, 0] = 0.5 + offset
    y = (x[:, 0, 0, 0] > 0.5).long()
    exact = (x[:, 0, 0, 0].double() - 0.5).abs()
    radii = torch.tensor(certify(model, (x, y))["radii"], dtype=torch.float64)
    assert (radii > 0).sum() >= 150
    assert (radii <= exact).all(), f"radius / exact distance up to {float((radii / exact).max()):.6g}"


def test_squared_euclidean_keeps_float64_and_lifts_half_precision_to_float32():
    z, w = torch.randn(3, 5, dtype=torch.float64), torch.randn(4, 5, dtype=torch.float64)
    assert robustproto.squared_euclidean(z, w).dtype == torch.float64
    assert robustproto.squared_euclidean(z, w) == pytest.approx(torch.cdist(z, w).pow(2), rel=1e-12, abs=1e-12)
    assert robustproto.squared_euclidean(z.half(), w.half()).dtype == torch.float32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert robustproto.squared_euclidean(z.float(), w.float()).dtype == torch.float32


def test_the_linear_head_declares_affine_scores_through_the_head_contract():
    assert robustproto.Head.scores_affine_in_embedding is False
    with pytest.raises(NotImplementedError, match="scores_affine_in_embedding"):
        robustproto.Head(6, 4).affine_map()
    head = robustproto.create_head("linear", 6, 4)
    assert head.scores_affine_in_embedding
    weight, bias = head.affine_map()
    assert weight.shape == (4, 6) and bias.shape == (4,)
    z = torch.randn(5, 6)
    torch.testing.assert_close(head(z), z @ weight.t() + bias)
    for name in ("glvq", "gmlvq", "gtlvq", "repulsive"):
        assert not robustproto.create_head(name, 6, 4).scores_affine_in_embedding, name


class CubedLinearHead(robustproto.Head):
    """A plugin head with an ``fc`` whose scores are not affine in ``z``: ``fc(z)³``.

    Cubing is increasing, so the prediction and the boundary are those of ``fc`` and ``margin`` is exact, but
    the score gradients are not ``fc``'s: a local bound built from ``fc.weight`` would be wrong.
    """

    def __init__(self, embed_dim, num_classes):
        super().__init__(embed_dim, num_classes)
        self.fc = nn.Linear(embed_dim, num_classes)

    def forward(self, z):
        return self.fc(z) ** 3

    def loss(self, z, scores, y):
        return F.cross_entropy(scores, y)

    def margin(self, z):
        scores, weight = self.fc(z), self.fc.weight
        c = scores.argmax(1)
        gaps = scores.gather(1, c[:, None]) - scores
        norms = (weight[c][:, None, :] - weight[None, :, :]).norm(dim=2)
        return torch.where(norms > 0, gaps / norms.clamp_min(1e-30), torch.full_like(gaps, float("inf"))).amin(1)


class FalselyAffineHead(CubedLinearHead):
    """Declares affine scores but cubes them: a broken plugin."""

    scores_affine_in_embedding = True

    def affine_map(self):
        return self.fc.weight, self.fc.bias


def test_a_plugin_head_with_an_fc_but_non_affine_scores_gets_the_global_bound_only(mnist_like):
    x, y = mnist_like
    model = _model(mnist_like, "mlp", "linear", width=16)
    model.head = CubedLinearHead(16, 10).eval()
    with torch.no_grad():
        y = model(x).argmax(1)  # every point correct, so every point gets a radius
    report = certify(model, (x, y))
    assert report["radii_local"] is None
    assert report["method"] == "global Lipschitz bound"
    assert report["radii"] == report["radii_global"] and min(report["radii"]) > 0


def test_a_head_that_declares_affine_scores_falsely_is_a_bug_with_a_traceback(mnist_like):
    x, y = mnist_like
    model = _model(mnist_like, "mlp", "linear", width=16)
    model.head = FalselyAffineHead(16, 10).eval()
    with pytest.raises(RuntimeError, match="declares scores_affine_in_embedding"):
        certify(model, (x, y))


def _mixed_mode_model(mnist_like, head):
    """A small CNN with BatchNorm (running statistics away from their initial values) and dropout, in training
    mode but for its head: what certify must leave exactly as found. Returns it, its modes and a copy of its state."""
    x, _ = mnist_like
    model = _model(mnist_like, "kp_cnn_mnist", head, widths=(4, 8), feature_dim=8, batch_norm=True, drop_rate=0.5)
    model.train()
    with torch.no_grad():
        model(x)
    model.head.eval()
    return model, {name: m.training for name, m in model.named_modules()}, \
        {k: v.clone() for k, v in model.state_dict().items()}


def test_certify_leaves_modes_and_buffers_exactly_as_found(mnist_like):
    x, y = mnist_like
    model, modes, state = _mixed_mode_model(mnist_like, "glvq")
    report = certify(model, (x[:8], y[:8]))
    assert len(report["radii"]) == 8
    assert {name: m.training for name, m in model.named_modules()} == modes
    after = model.state_dict()
    assert after.keys() == state.keys()
    for key, value in state.items():
        assert after[key].dtype == value.dtype and torch.equal(after[key], value), key


def test_mlp_global_and_local_radii_never_exceed_an_adversarial_found(mlp_linear, mnist):
    report = _check_against_attacks(mlp_linear, mnist, ["radii_global", "radii_local"])
    assert "local cross-Lipschitz" in report["method"]


def test_mlp_glvq_global_radius_never_exceeds_an_adversarial_found(mnist):
    model = _trained(mnist, "mlp", "glvq", steps=300, lr=1e-2, width=32)
    report = _check_against_attacks(model, mnist, ["radii_global"])
    assert report["radii_local"] is None  # prototype scores are not affine in the embedding


@pytest.mark.slow
def test_cnn_glvq_global_radius_never_exceeds_an_adversarial_found(mnist):
    """The same check through a convolutional embedding (the fast tests cover the same code path)."""
    model = _trained(mnist, "kp_cnn_mnist", "glvq", steps=300, lr=3e-3, widths=(8, 16), feature_dim=16)
    _check_against_attacks(model, mnist, ["radii_global"])


def test_local_bound_beats_the_global_one_on_a_trained_mlp(mlp_linear, mnist):
    _, (x, y) = mnist
    report = certify(mlp_linear, (x, y))
    radii, local, glob = (torch.tensor(report[k]) for k in ("radii", "radii_local", "radii_global"))
    assert torch.equal(radii, torch.maximum(local, glob))
    assert ((local > 0) == (glob > 0)).all() and (local > 0).sum() >= 50
    assert (local >= glob).float().mean() > 0.9  # Hein & Andriushchenko: the local constant beats the global one


@pytest.mark.parametrize("embed_dim", [None, 8])  # 8: a linear neck between the hidden layer and the head
def test_local_cross_lipschitz_bound_is_exact_at_radius_zero(mnist_like, embed_dim):
    """Proposition 2.2 at R = 0 is ‖∇f_c(x) − ∇f_j(x)‖ itself: compare with autograd on the float64 model."""
    x, _ = mnist_like
    model = _model(mnist_like, "mlp", "linear", width=16, embed_dim=embed_dim)
    exact = copy.deepcopy(model).double()
    net = one_hidden_layer(exact, x.double())
    assert net is not None
    xi = x[:1].double().requires_grad_(True)
    scores = exact(xi)[0]
    assert net.scores(xi.detach())[0] == pytest.approx(scores.detach(), rel=1e-12, abs=1e-12)  # folding is exact
    c = int(scores.argmax())
    grads = [torch.autograd.grad(scores[k], xi, retain_graph=True)[0].flatten() for k in range(10)]
    s = net.act_derivative(net.pre_activations(xi.detach()))[0]
    for j in (k for k in range(10) if k != c):
        v = net.w[j] - net.w[c]
        beta = v[:, None] * v[None, :] * net.gram
        assert float(s @ beta @ s) ** 0.5 == pytest.approx(float((grads[c] - grads[j]).norm()), rel=1e-9)
    assert local_radii(net, x[:1].double(), steps=20).item() > 0


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
    assert report["warnings"] == []  # glvq computes its margin in float64 on the float64 copy


def test_a_head_without_margin_and_other_norms_are_one_line_errors(mnist_like):
    x, y = mnist_like
    model = _model(mnist_like, "flatten", "gtlvq")
    with pytest.raises(ValueError, match="gives no certified margin") as info:
        certify(model, (x, y))
    assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match="L2 radii"):
        certify(_model(mnist_like, "flatten", "glvq"), (x, y), norm="Linf")


def _linear_embedding(singular_values, std):
    """``flatten`` and a linear neck ``A`` with the given singular values: ``φ(x) = A (x − 0.1)/std``."""
    model = robustproto.wrap("flatten", head="linear", num_classes=3, embed_dim=len(singular_values), img_size=6,
                             mean=[0.1], std=[std]).eval()
    g = torch.Generator().manual_seed(0)
    u, _ = torch.linalg.qr(torch.randn(len(singular_values), len(singular_values), generator=g))
    v, _ = torch.linalg.qr(torch.randn(36, len(singular_values), generator=g))
    with torch.no_grad():
        model.neck.weight.copy_(u @ torch.diag(torch.tensor(singular_values)) @ v.t())
    return model


def test_the_local_gain_of_a_linear_embedding_is_its_exact_norm_at_every_point_and_attains_the_bound():
    model = _linear_embedding([3.0, 1.0, 0.5, 0.25], std=0.5)  # ‖A‖₂/std = 6
    x = torch.rand(40, 1, 6, 6, generator=torch.Generator().manual_seed(1))
    gains = local_gains(model, x, 20, torch.Generator().manual_seed(0))
    assert gains.shape == (40,)
    assert gains == pytest.approx(torch.full((40,), 6.0), rel=1e-4)
    report = certify(model, (x, torch.zeros(40, dtype=torch.long)), tightness_samples=32)
    assert report["lipschitz_constant"] == pytest.approx(6.0, rel=1e-5)
    assert report["local_gain_max"] == pytest.approx(6.0, rel=1e-4)
    assert report["local_gain_median"] == pytest.approx(6.0, rel=1e-4)
    assert report["bound_tightness"] == pytest.approx(1.0, abs=1e-3)


def test_local_gains_match_the_largest_singular_value_of_each_points_jacobian(mnist_like):
    """Batched power iteration on a ReLU CNN with max-pooling equals σ_max of the per-point autograd Jacobian."""
    x, _ = mnist_like
    model = _model(mnist_like, "kp_cnn_mnist", "linear", widths=(2, 4), feature_dim=6)
    x = x[:6]
    gains = local_gains(model, x, 100, torch.Generator().manual_seed(0))
    for xi, gain in zip(x, gains):
        jacobian = torch.autograd.functional.jacobian(lambda image: model.embed(image[None])[0], xi).flatten(1)
        exact = float(torch.linalg.matrix_norm(jacobian.double(), ord=2))
        assert float(gain) <= exact * (1 + 1e-5)
        assert float(gain) == pytest.approx(exact, rel=1e-3)


def test_the_tightness_report_on_a_relu_cnn_is_a_deterministic_lower_bound_that_touches_nothing(mnist_like):
    x, y = mnist_like
    model, modes, state = _mixed_mode_model(mnist_like, "linear")
    rng = torch.get_rng_state()
    first = certify(model, (x, y), tightness_samples=20, tightness_iterations=10)
    assert torch.equal(torch.get_rng_state(), rng)
    assert certify(model, (x, y), tightness_samples=20, tightness_iterations=10) == first
    assert 0 < first["local_gain_median"] <= first["local_gain_max"] <= first["lipschitz_constant"]
    assert first["bound_tightness"] == first["lipschitz_constant"] / first["local_gain_max"]
    assert {name: m.training for name, m in model.named_modules()} == modes
    after = model.state_dict()
    for key, value in state.items():
        assert after[key].dtype == value.dtype and torch.equal(after[key], value), key
    assert all(p.grad is None for p in model.parameters())
    assert f"≥ the largest local gain found {first['local_gain_max']:.4g}" in certify_summary(first)


def test_tightness_samples_zero_omits_the_tightness_numbers(mnist_like):
    x, y = mnist_like
    model = _model(mnist_like, "flatten", "linear")
    report = certify(model, (x, y), tightness_samples=0)
    assert report["local_gain_max"] is report["local_gain_median"] is report["bound_tightness"] is None
    assert "local gain" not in certify_summary(report)
    for options, name in (({"tightness_samples": -1}, "tightness_samples"),
                          ({"tightness_iterations": 0}, "tightness_iterations")):
        with pytest.raises(ValueError, match=name) as info:
            certify(model, (x, y), **options)
        assert "\n" not in str(info.value)
