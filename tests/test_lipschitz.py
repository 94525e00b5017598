"""robustproto.operators and robustproto.lipschitz: layer operators for power iteration, the conv norm bound, lipschitz_upper_bound."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import robustproto
from robustproto import Normalize, ProtoModel, create_head, lipschitz_upper_bound
from robustproto.lipschitz import LipschitzEstimate
from robustproto.operators import LayerOperator, conv2d_norm_bound, power_iteration_step, rayleigh_sigma

CONVS = {  # (layer, input size): a plain conv, a strided one, a dilated grouped one
    "plain": (lambda: nn.Conv2d(2, 3, 3, padding=1), (5, 5)),
    "stride2": (lambda: nn.Conv2d(2, 4, 3, stride=2, padding=1), (6, 7)),
    "dilated-groups": (lambda: nn.Conv2d(4, 4, 3, padding=2, dilation=2, groups=2), (5, 6)),
}


def dense_conv_matrix(conv: nn.Conv2d, hw) -> torch.Tensor:
    """The convolution (bias dropped) as an explicit (outputs × inputs) matrix, column by column."""
    basis = torch.eye(conv.in_channels * hw[0] * hw[1]).view(-1, conv.in_channels, *hw)
    with torch.no_grad():
        out = nn.functional.conv2d(basis, conv.weight, None, conv.stride, conv.padding, conv.dilation, conv.groups)
    return out.flatten(1).t().double()


def spectral_norm(matrix: torch.Tensor) -> float:
    return float(torch.linalg.matrix_norm(matrix, ord=2))


@pytest.mark.parametrize("case", CONVS)
def test_conv_operator_adjoint_and_power_iteration_match_the_dense_matrix(case):
    make, hw = CONVS[case]
    conv = make()
    op = LayerOperator(conv, "operator", hw)
    dense = dense_conv_matrix(conv, hw)
    v, u = torch.randn(op.v_shape), torch.randn(op.u_shape)
    with torch.no_grad():
        assert torch.allclose(op.apply(v, conv.weight).flatten().double(), dense @ v.flatten().double(), atol=1e-5)
        assert torch.allclose(op.adjoint(u, conv.weight).flatten().double(), dense.t() @ u.flatten().double(),
                              atol=1e-5)
    for _ in range(100):
        u, v = power_iteration_step(op, conv.weight, u)
    assert float(rayleigh_sigma(op, conv.weight, u, v).detach()) == pytest.approx(spectral_norm(dense), rel=1e-3)


@pytest.mark.parametrize("case", CONVS)
def test_conv_norm_bound_is_never_below_the_dense_norm(case):
    make, hw = CONVS[case]
    conv = make()
    assert conv2d_norm_bound(conv, hw) >= spectral_norm(dense_conv_matrix(conv, hw)) * (1 - 1e-9)


def test_conv_norm_bound_is_tight_on_a_large_feature_map():
    conv = nn.Conv2d(2, 2, 3, padding=1)
    true = spectral_norm(dense_conv_matrix(conv, (12, 12)))
    assert true <= conv2d_norm_bound(conv, (12, 12)) <= 1.03 * true


def test_reshape_operator_is_the_kernel_matrix():
    conv = nn.Conv2d(3, 5, 3)
    op = LayerOperator(conv, "reshape")
    u = torch.randn(op.u_shape)
    for _ in range(100):
        u, v = power_iteration_step(op, conv.weight, u)
    expected = spectral_norm(conv.weight.detach().flatten(1).double())
    assert float(rayleigh_sigma(op, conv.weight, u, v).detach()) == pytest.approx(expected, rel=1e-4)


def test_unsupported_layers_are_named():
    with pytest.raises(NotImplementedError, match="padding_mode='reflect'"):
        LayerOperator(nn.Conv2d(1, 1, 3, padding=1, padding_mode="reflect"), "operator", (5, 5))
    with pytest.raises(NotImplementedError, match="Conv1d"):
        LayerOperator(nn.Conv1d(1, 1, 3), "operator", (5, 5))
    with pytest.raises(ValueError, match="mode must be one of"):
        LayerOperator(nn.Linear(2, 2), "bogus")


# --- lipschitz_upper_bound --------------------------------------------------------------------------------------
#
# The reference is the true L2 → L2 constant: for an affine embedding the spectral norm of its matrix, built
# column by column from the basis images in float64; for max pooling a pair of images that attains the bound.
# Each case states how far above the truth the bound may be, so a wrong factor fails.

EXACT = 1 + 1e-5  # the bound's own margin against rounding is 1e-6: anything above this is a wrong factor
IMAGE = (1, 2, 3)  # the linear cases: 6 pixels, embedded in 4 dimensions


def orthogonal(n: int, seed: int, first_column: torch.Tensor | None = None) -> torch.Tensor:
    """A random orthogonal n×n matrix in float64; its first column is ±first_column/‖first_column‖ when given."""
    columns = torch.randn(n, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    if first_column is not None:
        columns[:, 0] = first_column
    return torch.linalg.qr(columns)[0]


V = orthogonal(6, seed=1)  # right singular vectors of the embedding layer
U = orthogonal(4, seed=2, first_column=torch.ones(4))  # its left ones: the top one is constant (see "h + mean(h)")
W = orthogonal(4, seed=3)


def linear(left: torch.Tensor, singular_values, right: torch.Tensor) -> nn.Linear:
    """A float64 linear layer with weight ``left[:, :k] · diag(singular_values) · right[:, :k]ᵀ`` (largest value
    first): layers that share singular vectors compose and add with a known norm, that of the top direction."""
    values = torch.tensor(singular_values, dtype=torch.float64)
    weight = left[:, :len(values)] * values @ right[:, :len(values)].t()
    layer = nn.Linear(weight.shape[1], weight.shape[0], dtype=torch.float64)
    with torch.no_grad():
        layer.weight.copy_(weight)
    return layer


def embedding_layer() -> nn.Linear:
    """``h = A·x`` with ``‖A‖ = 3``, reached at ``x = V[:, 0]``, ``h ∝ U[:, 0]``."""
    return linear(U, [3.0, 2.0, 1.0, 0.5], V)


class Net(nn.Module):
    """A backbone ``combine(x, *layers)``: torch.fx traces through ``combine``, the layers stay leaves."""

    def __init__(self, combine, *layers: nn.Module):
        super().__init__()
        self.combine = combine
        self.layers = nn.ModuleList(layers)

    def forward(self, x):
        return self.combine(x, *self.layers)


def of_h(fn):
    """``combine`` that computes ``h = A·x`` once (the first layer, on the flattened image), then ``fn(h, *others)``."""
    return lambda x, a, *others: fn(a(x.flatten(1)), *others)


def add_in_place(h):
    h += h
    return h


def concatenated(x, a, g):
    x = x.flatten(1)
    return torch.cat([a(x), g(x)], dim=1)


def conv_batchnorm() -> nn.Sequential:
    """A convolution and an eval-mode BatchNorm with running statistics far from the identity."""
    conv, bn = nn.Conv2d(2, 3, 3, padding=1), nn.BatchNorm2d(3)
    with torch.no_grad():
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.1, 2.0)
        bn.weight.uniform_(0.5, 2.0)
    return nn.Sequential(conv, bn, nn.Flatten())


CASES = {  # name: (backbone factory, image size, normalisation std, bound / true constant at most); truth in comments
    # compositions of layers with shared singular vectors: the product of the norms is the norm of the product
    "B(A x)": (lambda: Net(of_h(lambda h, b: b(h)), embedding_layer(), linear(W, [2.0, 1.0, 0.5], U)),
               IMAGE, [1.0], EXACT),  # 2·3
    "A x, std 0.5": (lambda: Net(of_h(lambda h: h), embedding_layer()), IMAGE, [0.5], EXACT),  # 3 / 0.5
    "x, std (0.5, 0.25)": (lambda: Net(lambda x: x.flatten(1)), (2, 1, 3), [0.5, 0.25], EXACT),  # 1 / min std
    # an operand counts once per use, however the sum is spelled
    "h + h": (lambda: Net(of_h(lambda h: h + h), embedding_layer()), IMAGE, [1.0], EXACT),  # 2·3
    "torch.add(h, h)": (lambda: Net(of_h(lambda h: torch.add(h, h)), embedding_layer()), IMAGE, [1.0], EXACT),
    "h.add(h)": (lambda: Net(of_h(lambda h: h.add(h)), embedding_layer()), IMAGE, [1.0], EXACT),
    "h.add_(h)": (lambda: Net(of_h(lambda h: h.add_(h)), embedding_layer()), IMAGE, [1.0], EXACT),
    "h += h": (lambda: Net(of_h(add_in_place), embedding_layer()), IMAGE, [1.0], EXACT),
    # residuals: C = U diag(±1.5, …) Uᵀ stretches A's top direction, so ‖(I ± C)A‖ = (1 + 1.5)·3 = 1 + ‖C‖ times ‖A‖
    "h + C h": (lambda: Net(of_h(lambda h, c: h + c(h)), embedding_layer(), linear(U, [1.5, 1.0, 0.5, 0.25], U)),
                IMAGE, [1.0], EXACT),
    "h - C h": (lambda: Net(of_h(lambda h, c: h - c(h)), embedding_layer(), linear(U, [-1.5, -1.0, -0.5], U)),
                IMAGE, [1.0], EXACT),
    # the mean is repeated 4× by broadcasting: (I + 11ᵀ/4) doubles the constant top direction of h: 2·3
    "h + mean(h)": (lambda: Net(of_h(lambda h: h + h.mean(1, keepdim=True)), embedding_layer()),
                    IMAGE, [1.0], EXACT),
    # concatenations: sqrt(2)·3 for two copies of h; G shares A's right singular vectors: sqrt(3² + 4²) = 5
    "cat([h, h])": (lambda: Net(of_h(lambda h: torch.cat([h, h], dim=1)), embedding_layer()), IMAGE, [1.0], EXACT),
    "stack([h, h])": (lambda: Net(of_h(lambda h: torch.stack((h, h), 1).flatten(1)), embedding_layer()),
                      IMAGE, [1.0], EXACT),
    "cat([A x, G x])": (lambda: Net(concatenated, embedding_layer(), linear(W, [4.0, 1.0, 0.5], V)),
                        IMAGE, [1.0], EXACT),
    # products with a number: |c|·3
    "h * 2": (lambda: Net(of_h(lambda h: h * 2), embedding_layer()), IMAGE, [1.0], EXACT),
    "-3 * h": (lambda: Net(of_h(lambda h: -3 * h), embedding_layer()), IMAGE, [1.0], EXACT),
    "torch.mul(h, -3)": (lambda: Net(of_h(lambda h: torch.mul(h, -3)), embedding_layer()), IMAGE, [1.0], EXACT),
    "h / 4": (lambda: Net(of_h(lambda h: h / 4), embedding_layer()), IMAGE, [1.0], EXACT),
    "h.div(4)": (lambda: Net(of_h(lambda h: h.div(4)), embedding_layer()), IMAGE, [1.0], EXACT),
    "-h": (lambda: Net(of_h(lambda h: -h), embedding_layer()), IMAGE, [1.0], EXACT),
    # convolutions on 12×12 maps: the circulant bound is above the norm by boundary effects only (measured 1.016
    # for seed 0 and ≤ 1.034 over seeds 0–5 alone, 1.025 and ≤ 1.029 with the BatchNorm); a strided convolution
    # is bounded through its polyphase form, so the stride is in the bound (3×3 and 4×4 kernels with stride 2:
    # ≤ 1.04 over seeds 0–5; the bound ignoring the stride was 1.34–1.53 for 3×3 and 2× on a trained GloRo CNN)
    "conv": (lambda: nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.Flatten()), (2, 12, 12), [1.0, 1.0], 1.04),
    "conv, batchnorm": (conv_batchnorm, (2, 12, 12), [1.0, 1.0], 1.04),
    "conv stride 2": (lambda: nn.Sequential(nn.Conv2d(2, 3, 3, stride=2, padding=1), nn.Flatten()), (2, 12, 12),
                      [1.0, 1.0], 1.05),
    "conv 4×4 stride 2": (lambda: nn.Sequential(nn.Conv2d(2, 3, 4, stride=2, padding=1), nn.Flatten()),
                          (2, 12, 12), [1.0, 1.0], 1.05),
    # average pooling, Schur's test: exact for disjoint windows (1/2, 1/4); overlapping windows lose weight at
    # the zero-padded border (measured 1.040 on 12×12)
    "avgpool 2×2": (lambda: nn.Sequential(nn.AvgPool2d(2), nn.Flatten()), (1, 4, 4), [1.0], EXACT),
    "adaptive avgpool 1×1": (lambda: nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten()), (2, 4, 4), [1.0, 1.0],
                             EXACT),
    "mean over pixels": (lambda: Net(lambda x: x.mean((2, 3))), (2, 4, 4), [1.0, 1.0], EXACT),
    "avgpool 3×3 stride 1": (lambda: nn.Sequential(nn.AvgPool2d(3, stride=1, padding=1), nn.Flatten()), (1, 12, 12),
                             [1.0], 1.05),
}


def model_of(backbone: nn.Module, size, std=(1.0,)) -> ProtoModel:
    """``backbone`` in an eval-mode float64 ProtoModel normalising with mean 0 and ``std``."""
    backbone = backbone.double().eval()
    with torch.no_grad():
        features = backbone(torch.zeros(1, *size, dtype=torch.float64)).shape[1]
    normalize = Normalize([0.0] * len(std), std)
    return ProtoModel(backbone, create_head("linear", features, 2), normalize).double().eval()


def embedding_matrix(model: ProtoModel, size) -> torch.Tensor:
    """The matrix of an affine embedding, column by column in float64: ``embed(eᵢ) − embed(0)``."""
    basis = torch.eye(math.prod(size), dtype=torch.float64).view(-1, *size)
    with torch.no_grad():
        return (model.embed(basis) - model.embed(torch.zeros_like(basis[:1]))).t()


@pytest.mark.parametrize("case", CASES)
def test_bound_of_a_linear_embedding_is_its_norm_up_to_the_stated_factor(case):
    make, size, std, factor = CASES[case]
    model = model_of(make(), size, std)
    truth, bound = spectral_norm(embedding_matrix(model, size)), lipschitz_upper_bound(model, size)
    assert truth <= bound <= factor * truth


def test_concatenation_of_unrelated_maps_is_bounded_by_the_root_sum_of_squares():
    a, g = nn.Linear(6, 4), nn.Linear(6, 3)
    model = model_of(Net(concatenated, a, g), IMAGE)
    norm_a, norm_g = spectral_norm(a.weight.detach()), spectral_norm(g.weight.detach())
    truth = spectral_norm(embedding_matrix(model, IMAGE))  # ‖[A; G]‖
    bound = lipschitz_upper_bound(model, IMAGE)
    assert bound == pytest.approx(math.hypot(norm_a, norm_g), rel=1e-5)
    # ‖[A; G]‖ ≥ max(‖A‖, ‖G‖) ≥ sqrt((‖A‖² + ‖G‖²) / 2): the rule is never more than sqrt(2) too large
    assert max(norm_a, norm_g) <= truth <= bound <= math.sqrt(2) * truth


MAX_POOLS = {  # name: (pool, image size, the pixel in the most windows, how many windows hold it)
    "2×2": (nn.MaxPool2d(2), (1, 4, 4), (1, 1), 1),
    "2×2 stride 1": (nn.MaxPool2d(2, stride=1), (1, 4, 4), (1, 1), 4),
    "3×3 stride 1": (nn.MaxPool2d(3, stride=1), (1, 5, 5), (2, 2), 9),
    "3×3 stride 2 padding 1": (nn.MaxPool2d(3, stride=2, padding=1), (1, 5, 5), (1, 1), 4),
    "adaptive 5×5 → 2×2": (nn.AdaptiveMaxPool2d(2), (1, 5, 5), (2, 2), 4),  # windows [0, 3) and [2, 5)
}


@pytest.mark.parametrize("case", MAX_POOLS)
def test_max_pool_bound_is_attained_by_raising_the_pixel_in_the_most_windows(case):
    pool, size, pixel, windows = MAX_POOLS[case]
    model = model_of(nn.Sequential(pool, nn.Flatten()), size)
    flat = torch.zeros(1, *size, dtype=torch.float64)
    bump = flat.clone()
    bump[(0, 0, *pixel)] = 1.0
    with torch.no_grad():  # every window holding the pixel has max 1 instead of 0, and ‖bump − flat‖ = 1
        attained = float((model.embed(bump) - model.embed(flat)).norm())
    bound = lipschitz_upper_bound(model, size)
    assert attained == pytest.approx(math.sqrt(windows))
    assert attained <= bound <= EXACT * attained


BACKBONES = [  # name, wrap options, input size
    ("flatten", {"embed_dim": 8}, (1, 28, 28)),
    ("mlp", {"width": 64}, (1, 28, 28)),
    ("kp_cnn_mnist", {}, (1, 28, 28)),
    ("kp_cnn_cifar", {"in_chans": 3, "embed_dim": 12}, (3, 32, 32)),  # BatchNorm, dropout, a neck
    ("test_resnet", {"in_chans": 1}, (1, 28, 28)),  # residual blocks, max- and average pooling
]


def trained_statistics_model(name, options, size):
    """A model whose BatchNorm running statistics are not the identity (a few train-mode passes), in eval mode."""
    model = robustproto.wrap(name, head="glvq", num_classes=10, **options)
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model.embed(torch.rand(16, *size) * 2)
    return model.eval()


@pytest.mark.parametrize("name,options,size", BACKBONES, ids=[b[0] for b in BACKBONES])
def test_bound_of_a_shipped_backbone_is_above_its_local_constant(name, options, size):
    """Soundness only: the true constants of these backbones are unknown, and the composition rule is far above
    them (the cases above check each rule's factor). Power iteration approaches ``‖J(x)‖₂`` from below, and the
    norm of the Jacobian at any point is at most the Lipschitz constant."""
    model = trained_statistics_model(name, options, size)
    x = torch.rand(1, *size)
    v = torch.randn_like(x)
    for _ in range(10):
        v = v / v.norm()
        _, jv = torch.func.jvp(model.embed, (x,), (v,))
        (v,) = torch.func.vjp(model.embed, x)[1](jv)
    assert lipschitz_upper_bound(model, size) >= float(jv.detach().norm())


def test_bound_of_a_wrapped_linear_embedding_is_exact():
    model = robustproto.wrap("flatten", head="glvq", num_classes=3, embed_dim=5, std=[0.5])
    expected = spectral_norm(model.neck.weight.detach().double()) / 0.5
    assert expected <= lipschitz_upper_bound(model, (1, 28, 28)) <= EXACT * expected


def proto(backbone: nn.Module, features: int) -> ProtoModel:
    return ProtoModel(backbone, create_head("linear", features, 2), Normalize([0.0], [1.0]))


def test_batchnorm_is_folded_into_the_convolution_before_it():
    conv, bn = nn.Conv2d(1, 2, 1, bias=False), nn.BatchNorm2d(2)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([3.0, 1.0]).view(2, 1, 1, 1))
        bn.running_var.copy_(torch.tensor([1.0, 0.01]))
        bn.weight.copy_(torch.tensor([1.0, 1.0]))
    model = proto(nn.Sequential(conv, bn, nn.Flatten()), 2 * 4 * 4)
    scale = 1 / torch.sqrt(bn.running_var + bn.eps)
    # y_c = w_c s_c x: the exact norm is ‖(w_c s_c)_c‖, tighter than ‖w‖·max s (≈ 31.6)
    expected = float(torch.tensor([3.0, 1.0]).mul(scale).norm())
    assert lipschitz_upper_bound(model, (1, 4, 4)) == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("backbone,size,words", [
    (lambda: nn.Sequential(nn.Conv2d(1, 1, 3), nn.Upsample(scale_factor=2), nn.Flatten()), (1, 4, 4), "Upsample"),
    (lambda: Net(of_h(lambda h: h * h), embedding_layer()), IMAGE, "mul"),
    (lambda: Net(of_h(lambda h, b: h * b.bias), embedding_layer(), linear(U, [1.0], U)), IMAGE, "mul"),  # a tensor
    (lambda: Net(of_h(lambda h: 2 / h), embedding_layer()), IMAGE, "truediv"),
    (lambda: Net(of_h(lambda h: torch.div(h, 2, rounding_mode="floor")), embedding_layer()), IMAGE, "div"),
    (lambda: Net(of_h(lambda h: torch.add(h, h, alpha=2)), embedding_layer()), IMAGE, "alpha"),
], ids=["Upsample", "h * h", "h * tensor", "2 / h", "floor division", "add alpha"])
def test_unsupported_operations_raise_naming_them(backbone, size, words):
    with pytest.raises(NotImplementedError, match=words):
        lipschitz_upper_bound(model_of(backbone(), size), size)


def test_a_backbone_returning_several_tensors_is_refused():
    with pytest.raises(NotImplementedError, match="returns tuple"):
        lipschitz_upper_bound(proto(Net(of_h(lambda h: (h, h)), embedding_layer()), 4), IMAGE)


def test_bound_leaves_the_model_as_it_was():
    model = robustproto.wrap("kp_cnn_cifar", head="glvq", num_classes=10, in_chans=3)
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    lipschitz_upper_bound(model, (3, 32, 32))
    assert model.training and model.backbone.convs[1].training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_the_normalisation_gives_its_own_constant_and_an_unknown_one_is_refused():
    model = robustproto.wrap("flatten", head="linear", num_classes=2, std=[0.25], img_size=4)
    assert model.normalize.lipschitz_constant() == 4.0
    assert lipschitz_upper_bound(model, (1, 4, 4)) == pytest.approx(4.0, rel=1e-5)  # flatten: the identity

    class Standardize(nn.Module):  # a normalisation that states no constant
        def forward(self, x):
            return (x - x.mean()) / x.std()

    model.normalize = Standardize()
    with pytest.raises(NotImplementedError, match="no bound for the normalisation Standardize"):
        lipschitz_upper_bound(model, (1, 4, 4))


# --- LipschitzEstimate: the same bound, differentiable, for training ----------------------------------------------

@pytest.mark.parametrize("case", ["B(A x)", "h + C h", "cat([A x, G x])", "conv, batchnorm", "avgpool 2×2"])
def test_estimate_converges_to_the_certified_bound_where_the_layer_norms_are_exact(case):
    """The same walk with power-iteration norms: equal to the bound where it uses exact norms (matrices), and
    below it by at most the circulant slack where it bounds a convolution."""
    make, size, std, factor = CASES[case]
    model = model_of(make(), size, std).float()
    estimate = LipschitzEstimate(model, size, iterations=300)
    bound = lipschitz_upper_bound(model, size)
    value = float(estimate().detach())
    assert bound / factor <= value <= bound * (1 + 1e-5)


@pytest.mark.parametrize("name,options,size", BACKBONES, ids=[b[0] for b in BACKBONES])
def test_estimate_is_differentiable_seeded_and_leaves_the_model_as_found(name, options, size):
    model = trained_statistics_model(name, options, size).train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    first, twin = LipschitzEstimate(model, size), LipschitzEstimate(model, size)
    value = first()
    assert torch.equal(value, twin())  # the vectors start from a fixed seed: every process holds the same ones
    value.backward()
    layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.BatchNorm2d, nn.Linear))]
    assert all(m.weight.grad is not None for m in layers)  # a folded BatchNorm too: the bound moves with γ
    assert layers[0].weight.grad.abs().sum() > 0  # the first layer is never behind a zero-initialised one
    assert model.training and all(m.training for m in model.modules())
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    converged = LipschitzEstimate(model, size, iterations=100)
    assert float(converged().detach()) <= lipschitz_upper_bound(model, size) * (1 + 1e-5)


def test_estimate_refuses_what_the_bound_refuses_when_built():
    with pytest.raises(NotImplementedError, match="reads the image-dependent input more than once"):
        LipschitzEstimate(proto(Net(of_h(lambda h: h * h), embedding_layer()), 4), IMAGE)


def test_estimate_keeps_its_direction_through_a_zero_layer():
    """A residual branch's last BatchNorm starts at γ = 0 (timm's zero_init_last): its folded convolution is the
    zero map, which sends every vector to 0; once γ grows, the estimate must see the layer again."""
    model = model_of(conv_batchnorm(), (2, 12, 12), [1.0, 1.0]).float()
    batchnorm = model.backbone[1]
    saved = batchnorm.weight.detach().clone()
    with torch.no_grad():
        batchnorm.weight.zero_()
    estimate = LipschitzEstimate(model, (2, 12, 12), iterations=5)
    assert float(estimate().detach()) == 0
    with torch.no_grad():
        batchnorm.weight.copy_(saved)
    for _ in range(60):
        value = float(estimate().detach())
    assert value >= lipschitz_upper_bound(model, (2, 12, 12)) / 1.04
