"""The built-in timm backbones (plugins/backbones), created through timm after loading the plugins."""

from __future__ import annotations

import pytest
import timm
import torch
from torch import nn

import robustproto
from robustproto.errors import UsageError

MNIST = ((0.1307,), (0.3081,))
CIFAR = ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
PIXELS = ((0.0,), (1.0,))
# name: (input shape, num_features, (mean, std))
BACKBONES = {
    "flatten": ((1, 28, 28), 784, PIXELS),
    "mlp": ((1, 28, 28), 1024, PIXELS),
    "kp_cnn_mnist": ((1, 28, 28), 16, MNIST),
    "kp_cnn_cifar": ((3, 32, 32), 64, CIFAR),
    "resnet18_cifar": ((3, 32, 32), 512, CIFAR),
    "madry_cnn_mnist": ((1, 28, 28), 1024, PIXELS),
    "preact_resnet18_cifar": ((3, 32, 32), 512, CIFAR),
    "gloro_2c2f_mnist": ((1, 28, 28), 100, PIXELS),
    "gloro_4c3f_mnist": ((1, 28, 28), 512, PIXELS),
    "gloro_6c2f_cifar": ((3, 32, 32), 512, CIFAR),
}


@pytest.fixture(scope="module", autouse=True)
def _backbones():
    robustproto.load_backbones()


@pytest.mark.parametrize("name", BACKBONES)
def test_timm_interface(name):
    shape, features, (mean, std) = BACKBONES[name]
    x = torch.rand(2, *shape)
    model = timm.create_model(name, num_classes=10).eval()
    assert model(x).shape == (2, 10)
    assert model.get_classifier().out_features == 10
    assert model.pretrained_cfg["mean"] == mean and model.pretrained_cfg["std"] == std
    assert tuple(model.pretrained_cfg["input_size"]) == shape
    model.reset_classifier(3)
    assert model(x).shape == (2, 3)
    model.reset_classifier(0)
    feats = model(x)
    assert feats.shape == (2, features) == (2, model.num_features)
    torch.testing.assert_close(feats, model.forward_head(model.forward_features(x), pre_logits=True).flatten(1))
    headless = timm.create_model(name, num_classes=0)
    assert headless(x).shape == (2, features)


@pytest.mark.parametrize("name", BACKBONES)
def test_no_pretrained_weights_is_a_clear_error(name):
    with pytest.raises(UsageError, match="no pretrained weights"):
        timm.create_model(name, pretrained=True)  # ok-offline: these backbones have no weights to fetch


def test_flatten_is_the_pixels():
    x = torch.rand(2, 3, 8, 8)
    model = timm.create_model("flatten", num_classes=0, in_chans=3, img_size=8)
    assert model.num_features == 192 and torch.equal(model(x), x.flatten(1))


def test_mlp_options():
    model = timm.create_model("mlp", num_classes=0, width=32, softplus_beta=5.0, in_chans=3, img_size=16)
    x = torch.rand(2, 3, 16, 16)
    expected = nn.functional.softplus(model.hidden(x.flatten(1)), beta=5.0)
    assert model.num_features == 32 and torch.equal(model(x), expected)
    with pytest.raises(TypeError, match="depth"):
        timm.create_model("mlp", depth=3)


def test_mlp_dropout_acts_on_hidden_units_in_training_only():
    model = timm.create_model("mlp", num_classes=0, width=64, drop_rate=0.5)
    x = torch.rand(4, 1, 28, 28)
    hidden = nn.functional.softplus(model.hidden(x.flatten(1)), beta=10.0)
    assert torch.equal(model.eval()(x), hidden)
    dropped = model.train()(x)
    zeros = dropped == 0
    assert 0.3 < zeros.float().mean() < 0.7  # about half the units dropped, the rest scaled by 1 / (1 - p)
    assert torch.allclose(dropped[~zeros], 2 * hidden[~zeros])


def test_kp_cnns_follow_the_paper():
    mnist = timm.create_model("kp_cnn_mnist", num_classes=0)
    convs = [m for m in mnist.modules() if isinstance(m, nn.Conv2d)]
    assert [c.kernel_size for c in convs] == [(3, 3)] * 2 and [c.out_channels for c in convs] == [32, 64]
    assert not any(isinstance(m, nn.BatchNorm2d) for m in mnist.modules())
    assert sum(isinstance(m, nn.MaxPool2d) for m in mnist.modules()) == 2
    cifar = timm.create_model("kp_cnn_cifar", num_classes=0)
    assert [c.out_channels for c in cifar.modules() if isinstance(c, nn.Conv2d)] == [32, 64, 128]
    assert sum(isinstance(m, nn.BatchNorm2d) for m in cifar.modules()) == 3
    assert cifar.drop.p == 0.5
    # other image sizes (Imagenette-160 in the paper) change only the FC's input
    big = timm.create_model("kp_cnn_cifar", num_classes=0, img_size=64, drop_rate=0.0)
    assert big.eval()(torch.rand(2, 3, 64, 64)).shape == (2, 64) and big.drop.p == 0.0


def test_resnet18_cifar_stem():
    model = timm.create_model("resnet18_cifar", num_classes=0)
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
    assert isinstance(model.maxpool, nn.Identity)
    reference = timm.create_model("resnet18", num_classes=0)
    x = torch.rand(2, 3, 32, 32)
    # same blocks, but the stem keeps the resolution: 32/8 = 4 instead of 32/32 = 1
    assert model.forward_features(x).shape == (2, 512, 4, 4)
    assert reference.forward_features(x).shape == (2, 512, 1, 1)
    assert sum(p.numel() for p in model.layer1.parameters()) == sum(p.numel() for p in reference.layer1.parameters())
    assert [info["reduction"] for info in model.feature_info] == [1, 1, 2, 4, 8]


# the adversarial-training backbones: (input shape, features, parameters with a 10-class linear layer, tolerance)
ADVERSARIAL_TRAINING = {
    "madry_cnn_mnist": ((1, 28, 28), 1024, 3.3e6, 0.05),  # Madry et al.'s MNIST challenge CNN: 3,274,634
    "preact_resnet18_cifar": ((3, 32, 32), 512, 11.2e6, 0.02),  # Wong et al.'s / Rice et al.'s PreActResNet18
}


@pytest.mark.parametrize("name", ADVERSARIAL_TRAINING)
def test_adversarial_training_backbones_through_wrap(name):
    shape, features, params, tolerance = ADVERSARIAL_TRAINING[name]
    model = robustproto.wrap(name, head="linear", num_classes=10, in_chans=shape[0]).eval()
    assert model.embed_dim == features
    x = torch.rand(2, *shape)
    assert model.embed(x).shape == (2, features) and model(x).shape == (2, 10)
    assert abs(sum(p.numel() for p in model.parameters()) - params) <= tolerance * params


def test_madry_cnn_follows_the_paper():
    model = timm.create_model("madry_cnn_mnist", num_classes=0)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [c.kernel_size for c in convs] == [(5, 5)] * 2 and [c.out_channels for c in convs] == [32, 64]
    assert [c.padding for c in convs] == [(2, 2)] * 2  # "SAME": 28 → 14 → 7 after the two max-pools
    assert model.embed.in_features == 7 * 7 * 64 and model.embed.out_features == 1024
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert (model(torch.rand(4, 1, 28, 28)) >= 0).all()  # the features are the ReLU of the 1024-unit layer
    # kp_cnn_mnist is unchanged by the options madry_cnn_mnist uses
    assert isinstance(timm.create_model("kp_cnn_mnist", num_classes=0).embed_act, nn.Identity)


def test_preact_resnet18_blocks_and_lipschitz_bound():
    model = timm.create_model("preact_resnet18_cifar", num_classes=0)
    stages = [model.layer1, model.layer2, model.layer3, model.layer4]
    assert [len(s) for s in stages] == [2, 2, 2, 2]
    assert [s[0].conv1.stride for s in stages] == [(1, 1), (2, 2), (2, 2), (2, 2)]
    assert [s[0].shortcut is None for s in stages] == [True, False, False, False]
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
    # pre-activation: a block's first module is its BatchNorm, applied to the sum of the previous block
    assert isinstance(next(iter(model.layer2[0].children())), nn.BatchNorm2d)
    wrapped = robustproto.wrap(model, head="linear", num_classes=10).eval()
    bound = robustproto.lipschitz_upper_bound(wrapped, (3, 32, 32))  # loose: pre-conv BatchNorms are not folded
    assert 0 < bound < float("inf")


# GloRo's networks: (convolutions as (out, kernel, stride), parameters with a 10-class dense layer as in klasleino/gloro)
GLORO = {
    "gloro_2c2f_mnist": ([(16, 4, 2), (32, 4, 2)], 166_406),
    "gloro_4c3f_mnist": ([(32, 3, 1), (32, 4, 2), (64, 3, 1), (64, 4, 2)], 1_974_762),
    "gloro_6c2f_cifar": ([(32, 3, 1), (32, 3, 1), (32, 4, 2), (64, 3, 1), (64, 3, 1), (64, 4, 2)], 2_250_378),
}


@pytest.mark.parametrize("name", GLORO)
def test_gloro_cnns_follow_the_paper_and_are_certifiable(name):
    convs, params = GLORO[name]
    shape = BACKBONES[name][0]
    model = timm.create_model(name, num_classes=10)
    layers = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.out_channels, c.kernel_size[0], c.stride[0]) for c in layers] == convs
    assert sum(p.numel() for p in model.parameters()) == params
    # downsampling by strided convolutions only: nothing the bound treats loosely or cannot follow
    assert not any(isinstance(m, (nn.BatchNorm2d, nn.MaxPool2d)) for m in model.modules())
    wrapped = robustproto.wrap(name, head="glvq", num_classes=10, in_chans=shape[0])
    assert 0 < robustproto.lipschitz_upper_bound(wrapped, shape) < float("inf")
