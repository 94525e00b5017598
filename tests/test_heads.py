"""The built-in heads (plugins/heads): contract, numerics, margins against brute force, inits."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import robustproto
from robustproto.errors import UsageError
from robustproto.registry import head_registry
from robustproto_plugins.heads.repulsive import repulsive_prototypes

HEADS = ["linear", "glvq", "gmlvq", "gtlvq", "repulsive"]
PROTOTYPE_HEADS = ["glvq", "gmlvq", "gtlvq", "repulsive"]
DIM, CLASSES = 8, 4


@pytest.fixture
def batch():
    """16 embeddings of size 8 and labels covering 4 classes."""
    g = torch.Generator().manual_seed(0)
    return torch.randn(16, DIM, generator=g), torch.arange(16) % CLASSES


def make(name: str, dim: int = DIM, classes: int = CLASSES, **options) -> robustproto.Head:
    return robustproto.create_head(name, dim, classes, **options)


def brute_distances(head, z):
    """Distances from their definitions, with broadcasting (fine at test sizes)."""
    if hasattr(head, "metric"):  # repulsive: L2 or L∞ distance, not squared
        diff = z[:, None] - head.prototypes[None]
        return diff.norm(dim=2) if head.metric == "l2" else diff.abs().amax(2)
    diff = z[:, None] - head.prototypes[None]  # (B, P, n)
    if hasattr(head, "omega"):
        return (diff @ head.omega.t()).pow(2).sum(2)
    if hasattr(head, "tangents"):  # min_θ ‖z − w − Wθ‖², by least squares
        out = torch.empty(diff.shape[:2])
        for p in range(diff.shape[1]):
            theta = torch.linalg.lstsq(head.tangents[p], diff[:, p].t()).solution
            out[:, p] = (diff[:, p].t() - head.tangents[p] @ theta).pow(2).sum(0)
        return out
    return diff.pow(2).sum(2)


def grads_finite(head, z):
    params = [p.grad for p in head.parameters() if p.grad is not None]
    return bool(z.grad.isfinite().all()) and all(bool(g.isfinite().all()) for g in params)


def backward_through(head, z, y):
    """Scores and loss of ``head`` on ``z``, with the loss backpropagated to ``z`` and the head."""
    z.requires_grad_(True)
    scores = head(z)
    loss = head.loss(z, scores, y)
    loss.backward()
    return scores, loss


# --- the contract, for every head ---------------------------------------------------------------

@pytest.mark.parametrize("name", HEADS)
def test_forward_loss_backward(name, batch):
    z, y = batch
    head = make(name)
    scores, loss = backward_through(head, z, y)
    assert scores.shape == (16, CLASSES)
    assert loss.ndim == 0 and loss.isfinite()
    assert grads_finite(head, z) and z.grad.abs().sum() > 0


@pytest.mark.parametrize("name", PROTOTYPE_HEADS)
def test_prediction_is_nearest_prototype(name, batch):
    z, _ = batch
    options = {"prototypes_per_class": 2} if name != "repulsive" else {"loss": "distance"}
    head = make(name, **options, **({"subspace_dim": 3} if name == "gtlvq" else {}))
    d = brute_distances(head, z)
    labels = getattr(head, "prototype_labels", torch.arange(CLASSES))
    assert torch.equal(head(z).argmax(1), labels[d.argmin(1)])
    if name != "repulsive":
        torch.testing.assert_close(head.distances(z), d, rtol=1e-4, atol=1e-4)


def test_repulsive_cosine_predicts_prototype_nearest_in_angle(batch):
    z, _ = batch
    head = make("repulsive", metric="linf")  # prototypes not on the sphere: compare directions
    unit = F.normalize(head.prototypes, dim=1)
    assert torch.equal(head(z).argmax(1), torch.cdist(F.normalize(z, dim=1), unit).argmin(1))


@pytest.mark.parametrize("name", PROTOTYPE_HEADS)
def test_float32_distances_under_bf16_autocast(name, batch):
    z, _ = batch
    head = make(name)
    reference = head(z)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        scores = head(z)
    assert scores.dtype == torch.float32
    torch.testing.assert_close(scores, reference, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", HEADS)
def test_unknown_option_is_named(name):
    with pytest.raises(TypeError, match="bogus"):
        head_registry.get(name)(DIM, CLASSES, bogus=1)
    with pytest.raises(UsageError, match=rf"head '{name}' rejected its options \['bogus'\]"):  # which head, which option
        robustproto.create_head(name, DIM, CLASSES, bogus=1)


@pytest.mark.parametrize("name,options", [
    ("glvq", {"activation": "relu"}), ("glvq", {"prototypes_per_class": 0}), ("gmlvq", {"rank": 0}),
    ("gtlvq", {"subspace_dim": 0}), ("repulsive", {"loss": "hinge"}), ("repulsive", {"metric": "l1"}),
    ("repulsive", {"output_dim": 5}),
])
def test_bad_option_values_raise(name, options):
    with pytest.raises(UsageError):
        make(name, **options)


# --- degenerate inputs: no NaN --------------------------------------------------------------------

@pytest.mark.parametrize("name", ["glvq", "gmlvq", "gtlvq"])
@pytest.mark.parametrize("case", ["duplicate_prototypes", "z_on_prototype", "all_zero", "one_class_in_batch"])
def test_lvq_degenerate_cases_have_no_nan(name, case, batch):
    z, y = batch
    head = make(name, prototypes_per_class=2)
    with torch.no_grad():
        if case == "duplicate_prototypes":  # every prototype of every class at one point
            head.prototypes.copy_(head.prototypes[:1].expand_as(head.prototypes))
        elif case == "z_on_prototype":
            z = head.prototypes[::2].detach().clone().repeat(4, 1)  # each class's first prototype
        elif case == "all_zero":  # all distances 0: d⁺ = d⁻ = 0
            head.prototypes.zero_()
            z = torch.zeros_like(z)
        else:
            y = torch.zeros_like(y)
    scores, loss = backward_through(head, z, y)
    assert scores.isfinite().all() and loss.isfinite() and grads_finite(head, z)
    if head.supports_margin:
        assert not head.margin(z.detach()).isnan().any()
    if case == "all_zero":
        assert loss.item() == 0.0  # μ = 0 for a tie


@pytest.mark.parametrize("options", [{"loss": "cosine"}, {"loss": "distance"}, {"loss": "distance", "metric": "linf"}])
@pytest.mark.parametrize("case", ["zero", "on_prototype", "one_class_in_batch"])
def test_repulsive_degenerate_cases_have_no_nan(options, case, batch):
    z, y = batch
    head = make("repulsive", **options)
    if case == "zero":
        z = torch.zeros_like(z)
    elif case == "on_prototype":
        z = head.prototypes[y].clone()
    else:
        y = torch.zeros_like(y)
    scores, loss = backward_through(head, z, y)
    assert scores.isfinite().all() and loss.isfinite() and z.grad.isfinite().all()
    if case == "on_prototype":
        assert loss.item() < 1e-5


# --- GLVQ's loss by hand --------------------------------------------------------------------------

def test_glvq_mu_and_loss_by_hand():
    head = make("glvq", dim=2, classes=2, prototypes_per_class=2)
    with torch.no_grad():  # class 0: (0,0), (10,0); class 1: (4,0), (3,3)
        head.prototypes.copy_(torch.tensor([[0.0, 0.0], [10.0, 0.0], [4.0, 0.0], [3.0, 3.0]]))
    z = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    y = torch.tensor([0, 1])
    scores = head(z)
    torch.testing.assert_close(scores, torch.tensor([[-1.0, -9.0], [-1.0, -9.0]]))
    # sample 0: d⁺ = 1, d⁻ = 9 → μ = −0.8; sample 1 (label 1): d⁺ = 9, d⁻ = 1 → μ = 0.8
    torch.testing.assert_close(head.mu(scores, y), torch.tensor([-0.8, 0.8]))
    torch.testing.assert_close(head.loss(z, scores, y[:1]), torch.tensor(-0.8))
    sigmoid = make("glvq", dim=2, classes=2, prototypes_per_class=2, activation="sigmoid", beta=2.0)
    sigmoid.load_state_dict(head.state_dict())
    expected = (torch.sigmoid(torch.tensor(-1.6)) + torch.sigmoid(torch.tensor(1.6))) / 2
    torch.testing.assert_close(sigmoid.loss(z, sigmoid(z), y), expected)


def test_glvq_detach_denominator_keeps_mu_and_drops_the_gradient_that_moves_away_from_every_prototype():
    head = make("glvq", dim=2, classes=2)
    detached = make("glvq", dim=2, classes=2, detach_denominator=True)
    with torch.no_grad():  # class 0 at (0, 0), class 1 at (2, 0); a point of class 0 at (3, 1): misclassified
        head.prototypes.copy_(torch.tensor([[0.0, 0.0], [2.0, 0.0]]))
    detached.load_state_dict(head.state_dict())
    y = torch.tensor([0])
    grads = []
    for h in (head, detached):
        z = torch.tensor([[3.0, 1.0]], requires_grad=True)
        mu = h.mu(h(z), y)
        torch.testing.assert_close(mu, torch.tensor([(10.0 - 2.0) / 12.0]))  # d⁺ = 10, d⁻ = 2
        mu.sum().backward()
        grads.append(z.grad[0])
    # GLVQ: ∇μ = (2d⁻ ∇d⁺ − 2d⁺ ∇d⁻) / (d⁺ + d⁻)² with ∇d = 2(z − w): (4·(6, 2) − 20·(2, 2)) / 144
    torch.testing.assert_close(grads[0], torch.tensor([-16.0, -32.0]) / 144)
    # detached: (∇d⁺ − ∇d⁻) / (d⁺ + d⁻) = 2(w⁻ − w⁺) / 12, along the line between the two prototypes only
    torch.testing.assert_close(grads[1], torch.tensor([4.0, 0.0]) / 12)
    # descending GLVQ's gradient moves z away from the origin's prototype and off the prototypes' line;
    # the detached one moves z along that line only
    assert -grads[0] @ torch.tensor([3.0, 1.0]) > 0 and grads[1][1] == 0
    with pytest.raises(UsageError, match="detach_denominator must be true or false"):
        make("glvq", dim=2, classes=2, detach_denominator="yes")


# --- margins against brute force ------------------------------------------------------------------

def assert_margin(predict, z, margin, normals, tight: bool, trials: int = 300):
    """No perturbation of norm 0.999·margin changes the prediction: random ones, and those along every
    boundary normal in ``normals`` (B, M, n). If ``tight``, a step of margin·1.001 along the worst normal does."""
    pred = predict(z)
    assert (margin > 0).all() and margin.isfinite().all()
    g = torch.Generator().manual_seed(1)
    random = F.normalize(torch.randn(trials, *z.shape, generator=g), dim=2)
    directions = torch.cat([random, F.normalize(normals, dim=2).transpose(0, 1)])  # (T + M, B, n)
    moved = z + 0.999 * margin[:, None] * directions
    assert (predict(moved.reshape(-1, z.shape[1])).view(-1, len(z)) == pred).all()
    if tight:
        # the normal whose hyperplane is nearest: the one with the largest change in g per unit step
        worst = (z + margin[:, None] * 1.001 * F.normalize(normals, dim=2).transpose(0, 1))
        flipped = (predict(worst.reshape(-1, z.shape[1])).view(-1, len(z)) != pred).any(0)
        assert flipped.all()


def nearest_prototype_normals(head, z, points):
    """For each z: the directions 2ΩᵀΩ(w⁻ − w⁺) (given as points ΩᵀΩ w) towards every wrong-class prototype."""
    labels = getattr(head, "prototype_labels", torch.arange(head.num_classes))
    nearest = brute_distances(head, z).argmin(1)
    normals = points[None] - points[nearest][:, None]  # (B, P, n)
    wrong = labels[None] != labels[nearest][:, None]
    return torch.stack([normals[b][wrong[b]] for b in range(len(z))])


@pytest.mark.parametrize("ppc", [1, 3])
def test_glvq_margin_brute_force(ppc):
    g = torch.Generator().manual_seed(3)
    head = make("glvq", dim=6, classes=5, prototypes_per_class=ppc)
    with torch.no_grad():
        head.prototypes.copy_(torch.randn(head.prototypes.shape, generator=g) * 2)
    z = torch.randn(32, 6, generator=g)
    margin = head.margin(z)
    predict = lambda x: head(x).argmax(1)  # noqa: E731
    assert_margin(predict, z, margin, nearest_prototype_normals(head, z, head.prototypes.detach()), tight=ppc == 1)


def test_gmlvq_margin_brute_force():
    g = torch.Generator().manual_seed(4)
    head = make("gmlvq", dim=6, classes=5, rank=3)  # a rank-deficient Ω: the metric ignores 3 directions
    with torch.no_grad():
        head.prototypes.copy_(torch.randn(head.prototypes.shape, generator=g) * 2)
        head.omega.copy_(torch.randn(head.omega.shape, generator=g))
    z = torch.randn(32, 6, generator=g)
    metric = head.omega.t() @ head.omega
    points = (head.prototypes @ metric).detach()
    predict = lambda x: head(x).argmax(1)  # noqa: E731
    assert_margin(predict, z, head.margin(z).detach(), nearest_prototype_normals(head, z, points), tight=True)


def test_linear_margin_brute_force():
    g = torch.Generator().manual_seed(5)
    head = make("linear", dim=6, classes=5)
    z = torch.randn(32, 6, generator=g)
    weight = head.fc.weight.detach()
    predicted = head(z).argmax(1)
    normals = torch.stack([(weight - weight[c])[torch.arange(5) != c] for c in predicted])
    predict = lambda x: head(x).argmax(1)  # noqa: E731
    assert_margin(predict, z, head.margin(z).detach(), normals, tight=True)


@pytest.mark.parametrize("loss", ["distance", "cosine"])
def test_repulsive_margin_brute_force(loss, batch):
    z, _ = batch
    head = make("repulsive", dim=DIM, loss=loss)
    unit = F.normalize(head.prototypes, dim=1)
    predicted = head(z).argmax(1)
    normals = torch.stack([(unit - unit[c])[torch.arange(CLASSES) != c] for c in predicted])
    predict = lambda x: head(x).argmax(1)  # noqa: E731
    assert_margin(predict, z, head.margin(z), normals, tight=True)  # l2 prototypes are unit: same normals


def test_heads_without_margin_say_so(batch):
    z, _ = batch
    assert not make("gtlvq").supports_margin
    with pytest.raises(NotImplementedError, match="margin"):
        make("gtlvq").margin(z)
    linf = make("repulsive", loss="distance", metric="linf")
    assert not linf.supports_margin and make("repulsive", loss="distance", metric="l2").supports_margin
    with pytest.raises(NotImplementedError, match="linf"):
        linf.margin(z)


# --- GMLVQ and GTLVQ projections ------------------------------------------------------------------

def test_gmlvq_omega_init_and_renormalisation():
    head = make("gmlvq", dim=6, classes=3, rank=4)
    assert head.omega.shape == (4, 6)
    torch.testing.assert_close(head.omega.norm(), torch.tensor(1.0))
    with torch.no_grad():
        head.omega.mul_(7.0).add_(torch.randn(4, 6))
        head.after_step()
    torch.testing.assert_close(head.omega.norm(), torch.tensor(1.0))


def test_gtlvq_after_step_orthonormalises_and_distance_is_projection(batch):
    z, _ = batch
    head = make("gtlvq", subspace_dim=3, prototypes_per_class=2)
    assert head.tangents.shape == (2 * CLASSES, DIM, 3)
    with torch.no_grad():
        before = head.tangents + 0.05 * torch.randn(head.tangents.shape)
        head.tangents.copy_(before)
        head.after_step()
    gram = head.tangents.transpose(1, 2) @ head.tangents
    torch.testing.assert_close(gram, torch.eye(3).expand_as(gram), rtol=0, atol=1e-5)
    assert (head.tangents - before).abs().max() < 0.2  # QR signs folded back: the basis moved a little, not flipped
    torch.testing.assert_close(head.distances(z), brute_distances(head, z), rtol=1e-4, atol=1e-4)
    assert make("gtlvq", dim=5).tangents.shape[2] == 4  # clipped: a 5-dim subspace of R^5 is at distance 0


def test_gtlvq_init_from_data_finds_class_planes():
    """Each class lies on an affine 2-plane: after the SVD init, its samples are at distance 0 from their prototype."""
    g = torch.Generator().manual_seed(6)
    y = torch.arange(60) % 3
    offsets, planes = torch.randn(3, DIM, generator=g) * 3, torch.randn(3, DIM, 2, generator=g)
    z = offsets[y] + (planes[y] @ torch.randn(60, 2, 1, generator=g)).squeeze(2)
    head = make("gtlvq", classes=3, subspace_dim=2)
    head.init_from_data(z, y)
    own = head.distances(z).gather(1, y.unsqueeze(1))
    assert own.max() < 1e-3
    assert (head(z).argmax(1) == y).all()


def test_gtlvq_init_with_too_few_samples_and_an_empty_class():
    head = make("gtlvq", subspace_dim=4)
    before = head.tangents.detach().clone()
    z = torch.randn(3, DIM)
    y = torch.tensor([0, 0, 1])  # class 0: 2 samples (rank 1 after centring), class 1: one, classes 2-3: none
    head.init_from_data(z, y)
    gram = head.tangents.transpose(1, 2) @ head.tangents
    torch.testing.assert_close(gram, torch.eye(4).expand_as(gram), rtol=0, atol=1e-5)
    assert torch.equal(head.tangents[2:], before[2:])
    direction = F.normalize(z[1] - z[0], dim=0)  # class 0's only data direction is in its subspace
    assert (head.tangents[0].t() @ direction).norm() > 0.999


# --- data-dependent initialisation ----------------------------------------------------------------

def test_glvq_init_class_means():
    z, y = torch.randn(40, DIM), torch.arange(40) % CLASSES
    head = make("glvq")
    head.init_from_data(z, y)
    torch.testing.assert_close(head.prototypes.detach(), torch.stack([z[y == c].mean(0) for c in range(CLASSES)]))


def test_glvq_kmeans_init_with_small_and_empty_classes():
    g = torch.Generator().manual_seed(7)
    blobs = torch.tensor([[10.0] * DIM, [-10.0] * DIM, [0.0] * DIM])
    class0 = blobs.repeat(20, 1) + 0.1 * torch.randn(60, DIM, generator=g)
    z = torch.cat([class0, torch.randn(2, DIM, generator=g)])  # class 1: 2 samples for 3 prototypes
    y = torch.cat([torch.zeros(60, dtype=torch.long), torch.ones(2, dtype=torch.long)])
    head = make("glvq", prototypes_per_class=3)
    before = head.prototypes.detach().clone()
    head.init_from_data(z, y)
    protos = head.prototypes.detach()
    assert protos.isfinite().all()
    # class 0: one centre per blob
    assert torch.cdist(blobs, protos[:3]).amin(1).max() < 0.2
    # class 1: centres on its samples; classes 2 and 3 (no samples) keep their init
    assert torch.cdist(protos[3:6], z[60:]).amin(1).max() < 1e-5
    assert torch.equal(protos[6:], before[6:])
    again = make("glvq", prototypes_per_class=3)
    again.init_from_data(z, y)
    assert torch.equal(again.prototypes[:6], protos[:6])  # seeded


# --- repulsive prototypes -------------------------------------------------------------------------

@pytest.mark.parametrize("metric", ["l2", "linf"])
def test_repulsive_prototypes_spread_deterministic_bounded(metric):
    protos = repulsive_prototypes(10, 100, metric, seed=3)
    assert torch.equal(protos, repulsive_prototypes(10, 100, metric, seed=3))
    assert not torch.equal(protos, repulsive_prototypes(10, 100, metric, seed=4))
    start = repulsive_prototypes(10, 100, metric, steps=0, seed=3)
    p = 2.0 if metric == "l2" else float("inf")
    assert torch.pdist(protos, p=p).min() > torch.pdist(start, p=p).min() + 0.01
    if metric == "l2":
        torch.testing.assert_close(protos.norm(dim=1), torch.ones(10))
    else:
        assert protos.abs().max() <= 1.0


def test_repulsive_head_prototypes_are_fixed_and_sized():
    head_cls = type(make("repulsive"))
    assert head_cls.preferred_embed_dim(10) == 100
    assert head_cls.preferred_embed_dim(10, output_dim=32) == 32
    head = make("repulsive", dim=32, classes=10, output_dim=32, seed=1)
    assert "prototypes" in dict(head.named_buffers()) and not list(head.parameters())
    assert torch.equal(head.prototypes, repulsive_prototypes(10, 32, "l2", seed=1))


def test_repulsive_losses_by_hand():
    head = make("repulsive", loss="cosine")
    p = head.prototypes
    y = torch.tensor([0, 1])
    z = torch.stack([p[0] * 3.0, -p[1]])  # cos = 1 (loss 0) and cos = −1 (loss 4)
    torch.testing.assert_close(head.loss(z, head(z), y), torch.tensor(2.0))
    head = make("repulsive", loss="distance")
    offset = torch.zeros(2, DIM)
    offset[:, 0] = torch.tensor([0.5, 1.0])
    z = head.prototypes[y] + offset
    torch.testing.assert_close(head.loss(z, head(z), y), torch.tensor((0.25 + 1.0) / 2))


# --- class_margin: the margin of a given class, signed, for training ----------------------------------------------

CLASS_MARGIN_HEADS = [("linear", {}), ("glvq", {}), ("glvq", {"prototypes_per_class": 3}),
                      ("gmlvq", {"prototypes_per_class": 2}), ("repulsive", {"loss": "distance"}), ("repulsive", {})]


@pytest.mark.parametrize("name,options", CLASS_MARGIN_HEADS)
def test_class_margin_is_the_margin_where_the_label_is_predicted_and_not_positive_elsewhere(name, options, batch):
    head = make(name, **options)
    z, y = batch
    assert head.supports_class_margin
    margin = head.class_margin(z, y)
    right = head(z).argmax(1) == y
    assert right.any() and (~right).any()
    assert torch.allclose(margin[right], head.margin(z)[right], rtol=1e-5) and (margin[right] > 0).all()
    assert (margin[~right] <= 0).all()


def test_class_margin_of_a_linear_head_is_the_signed_distance_to_the_hyperplane():
    head = make("linear", dim=2, classes=2)
    with torch.no_grad():
        head.fc.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
        head.fc.bias.zero_()
    z = torch.tensor([[3.0, 1.0], [3.0, 1.0]])
    # the boundary is z₁ = z₂; (3, 1) is at distance 2/sqrt(2) on class 0's side
    assert torch.allclose(head.class_margin(z, torch.tensor([0, 1])), torch.tensor([2 ** 0.5, -(2 ** 0.5)]))


@pytest.mark.parametrize("name", ["glvq", "gmlvq"])
def test_class_margin_gradients_are_finite_with_duplicate_and_coinciding_prototypes(name, batch):
    head = make(name, prototypes_per_class=3)
    z, y = batch
    with torch.no_grad():
        head.prototypes[1] = head.prototypes[0]  # a duplicate within class 0
        head.prototypes[3] = head.prototypes[0]  # and the same point for class 1
    z = z.clone().requires_grad_(True)
    head.class_margin(z, y).sum().backward()
    assert torch.isfinite(z.grad).all() and all(torch.isfinite(p.grad).all() for p in head.parameters())


def test_heads_without_a_class_margin_say_so(batch):
    z, y = batch
    for head in (make("gtlvq"), make("repulsive", loss="distance", metric="linf")):
        assert not head.supports_class_margin
        with pytest.raises(NotImplementedError, match="class margin|certified margin"):
            head.class_margin(z, y)
