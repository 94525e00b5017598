"""The lipschitz-margin regularizer: its value where the truth is known, scale invariance, heads, state, DDP."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import robustproto
from robustproto import Normalize, ProtoModel, create_head, create_regularizer
from robustproto.data import load_split
from robustproto.errors import UsageError
from robustproto_plugins.regularizers.lipschitz_margin import log_hinge
from test_regularizers import DDP_PREAMBLE, penalty_of_step, step_context, torchrun


def linear_glvq(matrix: torch.Tensor, std: float = 0.5) -> ProtoModel:
    """φ(x) = A·(x − 0)/std on 1×4×4 images (a flatten backbone and a linear neck) with a 3-class GLVQ head."""
    neck = nn.Linear(matrix.shape[1], matrix.shape[0])
    with torch.no_grad():
        neck.weight.copy_(matrix)
        neck.bias.zero_()
    return ProtoModel(nn.Flatten(), create_head("glvq", matrix.shape[0], 3), Normalize([0.0], [std]), neck)


def orthogonal_with(singular_values, inputs=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    u = torch.linalg.qr(torch.randn(len(singular_values), len(singular_values), generator=g)).Q
    v = torch.linalg.qr(torch.randn(inputs, len(singular_values), generator=g)).Q
    return u @ torch.diag(torch.tensor(singular_values)) @ v.t()


def batch(n=12, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 4, 4, generator=g), torch.arange(n) % 3


def test_log_hinge_is_minus_log_above_the_floor_linear_below_and_zero_past_the_target():
    q = torch.tensor([2.0, 1.0, 0.5, 0.01, 0.005, 0.0, -0.01])
    expected = torch.tensor([0.0, 0.0, -torch.log(torch.tensor(0.5)), 4.60517, 4.60517 + 0.5, 4.60517 + 1, 4.60517 + 2])
    assert torch.allclose(log_hinge(q, 0.01), expected, atol=1e-5)


def test_penalty_equals_the_hand_computed_certified_radius_of_a_linear_embedding():
    """φ(x) = A x / std: L = σ_max(A)/std exactly, and with one prototype per class m_y is the bisector distance."""
    model = linear_glvq(orthogonal_with([3.0, 1.0, 0.5, 0.25]))
    with torch.no_grad():
        model.head.prototypes.copy_(torch.tensor([[1.0, 0, 0, 0], [0, 1.0, 0, 0], [0, 0, 1.0, 0]]))
    reg = create_regularizer("lipschitz-margin", radius=0.05, iterations=200)
    reg.attach(model)
    x, y = batch()
    penalty = penalty_of_step(model, reg, x, y)
    z, w = model.embed(x).detach(), model.head.prototypes.detach()
    d = torch.cdist(z, w) ** 2
    others = [[j for j in range(3) if j != c] for c in y.tolist()]
    margin = torch.stack([min((d[i, j] - d[i, c]) / (2 * (w[c] - w[j]).norm()) for j in others[i])
                          for i, c in enumerate(y.tolist())])
    radius = margin / 6.0  # σ_max 3 over std 0.5
    assert (radius > 0.05).any() and (radius < 0.05).any()  # both branches of the hinge are exercised
    assert float(penalty) == pytest.approx(float(log_hinge(radius / 0.05, 0.01).mean()), rel=1e-4)
    assert reg.metrics()["L"] == pytest.approx(6.0, rel=1e-5)


@pytest.mark.parametrize("head", ["glvq", "linear"])
@pytest.mark.parametrize("bound", ["global", "local"])
def test_penalty_is_unchanged_when_the_embedding_and_the_head_are_rescaled(head, bound):
    """φ → cφ with prototypes → c·w (linear head: W → W/c) leaves every decision and the penalty unchanged."""
    x, y = batch()
    values = []
    for c in (1.0, 7.0):
        torch.manual_seed(0)
        model = ProtoModel(nn.Flatten(), create_head(head, 5, 3), Normalize([0.5], [0.25]), nn.Linear(16, 5))
        with torch.no_grad():
            model.neck.weight.mul_(c)
            model.neck.bias.mul_(c)
            if head == "glvq":
                model.head.prototypes.copy_(torch.randn(3, 5, generator=torch.Generator().manual_seed(2)) * c)
            else:
                model.head.fc.weight.div_(c)
        reg = create_regularizer("lipschitz-margin", bound=bound, radius=0.1)
        reg.attach(model)
        torch.manual_seed(3)  # the local bound's start directions
        values.append(float(penalty_of_step(model, reg, x, y)))
    assert values[0] > 0 and values[1] == pytest.approx(values[0], rel=1e-4)


def test_an_absolute_target_is_not_scale_invariant_but_this_one_is():
    """The contrast the docstring draws: shrinking the embedding moves ‖J‖ (what lipschitz:L=… constrains)."""
    model = linear_glvq(orthogonal_with([3.0, 1.0, 0.5, 0.25]))
    scaled = linear_glvq(orthogonal_with([3.0, 1.0, 0.5, 0.25]) / 10)
    with torch.no_grad():
        scaled.head.prototypes.copy_(model.head.prototypes / 10)
    bounds = [robustproto.lipschitz_upper_bound(m, (1, 4, 4)) for m in (model, scaled)]
    assert bounds[1] == pytest.approx(bounds[0] / 10, rel=1e-5)


@pytest.mark.parametrize("head,options", [("gtlvq", {}), ("repulsive", {"loss": "distance", "metric": "linf"})])
def test_heads_without_a_class_margin_are_refused_when_attaching(head, options):
    model = robustproto.wrap("flatten", head=head, num_classes=3, img_size=4, in_chans=1, embed_dim=6,
                             head_options=options)
    with pytest.raises(UsageError, match="lipschitz-margin: head .* has no class margin"):
        create_regularizer("lipschitz-margin").attach(model)


@pytest.mark.parametrize("options,words", [({"bound": "loose"}, "bound must be one of global, local"),
                                           ({"radius": 0}, "radius must be > 0"),
                                           ({"weight": -1}, "weight must be >= 0"),
                                           ({"iterations": 0}, "iterations must be an integer >= 1"),
                                           ({"floor": 1.0}, r"floor must be in \(0, 1\)")])
def test_bad_options_are_one_line_errors_naming_the_option(options, words):
    with pytest.raises(UsageError, match=words):
        create_regularizer("lipschitz-margin", **options)


def test_power_iteration_vectors_persist_in_the_state_dict_and_follow_a_new_input_size():
    model = robustproto.wrap("kp_cnn_mnist", head="glvq", num_classes=10, img_size=12)
    reg = create_regularizer("lipschitz-margin")
    reg.attach(model)
    x, y = torch.rand(4, 1, 12, 12), torch.arange(4)
    for _ in range(3):
        penalty_of_step(model, reg, x, y)
    assert reg.estimate.input_size == (1, 12, 12)
    state = reg.state_dict()
    assert set(state) == {"estimate.u0", "estimate.u1", "estimate.u2"}
    resumed = create_regularizer("lipschitz-margin")  # as on a resume: loaded before its first step
    resumed.attach(model)
    resumed.load_state_dict(state)
    assert float(penalty_of_step(model, resumed, x, y)) == float(penalty_of_step(model, reg, x, y))
    assert all(torch.equal(a, b) for a, b in zip(resumed.state_dict().values(), reg.state_dict().values()))
    fresh = create_regularizer("lipschitz-margin")
    fresh.attach(model)
    assert float(penalty_of_step(model, fresh, x, y)) != float(penalty_of_step(model, reg, x, y))


def test_training_with_it_grows_the_certified_radius_beyond_plain_training():
    """On the bundled digits, the same steps with the penalty give larger certified radii (robustproto.certify)."""
    data = load_split("mnist-small", "train", max_samples=512)
    x, y = torch.stack([data[i][0] for i in range(len(data))]), data.labels
    x, y, test_x, test_y = x[:384], y[:384], x[384:], y[384:]
    mean_radius, accuracy = {}, {}
    for name in ("none", "lipschitz-margin"):
        torch.manual_seed(0)
        model = robustproto.wrap("kp_cnn_mnist", head="glvq", num_classes=10)
        with torch.no_grad():
            model.head.init_from_data(model.embed(x), y)
        regs = [] if name == "none" else [create_regularizer("lipschitz-margin", radius=1.0)]
        for reg in regs:
            reg.attach(model)
        optimizer = torch.optim.Adam(model.parameters(), 1e-3)
        for step in range(60):
            rows = torch.arange(step * 64, step * 64 + 64) % len(x)
            loss = sum(reg.penalty(step_context(model, reg, x[rows], y[rows], step)) for reg in regs)
            z = model.embed(x[rows])
            loss = loss + model.head.loss(z, model.head(z), y[rows])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        report = robustproto.certify(model.eval(), (test_x, test_y), tightness_samples=0)
        mean_radius[name] = sum(report["radii"]) / len(report["radii"])
        accuracy[name] = report["clean_accuracy"]
    assert mean_radius["lipschitz-margin"] > 3 * mean_radius["none"] > 0
    assert accuracy["lipschitz-margin"] > 0.5  # it learned to classify too (10 classes)


DDP_WORKER = DDP_PREAMBLE + '''

def gradients(module, net, rows):
    for p in net.parameters():
        p.grad = None
    reg = create_regularizer("lipschitz-margin", radius=1.0)
    reg.attach(net)
    xs = x[rows].clone()
    z, scores, _ = module(xs, [])
    loss = net.head.loss(z, scores, y[rows]) + reg.penalty(StepContext(xs, y[rows], z, scores, None, net, 0))
    loss.backward()
    return torch.cat([p.grad.flatten() for p in net.parameters()])


ddp = DistributedDataParallel(TrainStep(model))
half = len(x) // world
together = gradients(ddp, model, slice(rank * half, (rank + 1) * half))
alone = gradients(TrainStep(single), single, slice(None))
error = float((together - alone).abs().max() / alone.abs().max())
print(f"rank {rank} relative error {error:.2e}", flush=True)
sys.exit(0 if error < 1e-5 else 1)
'''


def test_two_process_gradients_equal_one_process_gradients(tmp_path):
    (tmp_path / "worker.py").write_text(DDP_WORKER)
    result = torchrun(["worker.py"], tmp_path)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert result.stdout.count("relative error") == 2
