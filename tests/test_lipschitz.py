"""robustproto.lipschitz: layer operators for power iteration, the conv norm bound, lipschitz_upper_bound."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import robustproto
from robustproto import Normalize, ProtoModel, create_head, lipschitz_upper_bound
from robustproto.lipschitz import LayerOperator, conv2d_norm_bound, power_iteration_step, rayleigh_sigma

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
def test_upper_bound_holds_on_random_and_gradient_ascended_pairs(name, options, size):
    model = trained_statistics_model(name, options, size)
    bound = lipschitz_upper_bound(model, size)

    def ratio(x, x2):
        return (model.embed(x) - model.embed(x2)).norm(dim=1) / (x - x2).flatten(1).norm(dim=1)

    x = torch.rand(16, *size)
    with torch.no_grad():
        random_ratio = ratio(x, torch.rand_like(x)).max()
    # ascend the ratio from a small step: a local Lipschitz constant, much nearer the bound than random pairs
    delta = (1e-2 * torch.randn_like(x)).requires_grad_(True)
    optimizer = torch.optim.Adam([delta], lr=1e-3)
    for _ in range(15):
        optimizer.zero_grad()
        (-ratio(x, x + delta).sum()).backward()
        optimizer.step()
    with torch.no_grad():
        ascended = ratio(x, x + delta).max()
    assert ascended > random_ratio  # the ascent found steeper pairs, so the check below is a real one
    assert bound >= ascended


def test_bound_of_a_linear_embedding_is_exact():
    model = robustproto.wrap("flatten", head="glvq", num_classes=3, embed_dim=5, std=[0.5])
    expected = spectral_norm(model.neck.weight.detach().double()) / 0.5
    assert lipschitz_upper_bound(model, (1, 28, 28)) == pytest.approx(expected, rel=1e-5)
    assert lipschitz_upper_bound(model, (1, 28, 28)) >= expected


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


class Squares(nn.Module):
    def forward(self, x):
        return (x * x).flatten(1)


@pytest.mark.parametrize("backbone,words", [
    (nn.Sequential(nn.Conv2d(1, 1, 3), nn.Upsample(scale_factor=2), nn.Flatten()), "Upsample"),
    (Squares(), "mul"),
])
def test_unsupported_modules_raise_naming_them(backbone, words):
    with pytest.raises(NotImplementedError, match=words):
        lipschitz_upper_bound(proto(backbone, 16), (1, 4, 4))


def test_bound_leaves_the_model_as_it_was():
    model = robustproto.wrap("kp_cnn_cifar", head="glvq", num_classes=10, in_chans=3)
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    lipschitz_upper_bound(model, (3, 32, 32))
    assert model.training and model.backbone.convs[1].training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
