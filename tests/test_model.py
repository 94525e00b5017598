"""robustproto.wrap: every built-in head on timm and built-in backbones; wrapping a built timm module."""

from __future__ import annotations

import pytest
import timm
import torch

import robustproto
from robustproto.errors import UsageError

HEADS = ["linear", "glvq", "gmlvq", "gtlvq", "repulsive"]
# backbone: (timm kwargs, input shape) — small inputs keep the 35 combinations fast on a CPU
BACKBONES = {
    "test_resnet": ({}, (3, 32, 32)),
    "resnet18": ({}, (3, 32, 32)),
    "convnext_atto": ({}, (3, 32, 32)),
    "vit_tiny_patch16_224": ({"img_size": 32}, (3, 32, 32)),
    "flatten": ({"img_size": 16}, (1, 16, 16)),
    "kp_cnn_mnist": ({}, (1, 28, 28)),
    "kp_cnn_cifar": ({}, (3, 32, 32)),
}


@pytest.mark.parametrize("head", HEADS)
@pytest.mark.parametrize("backbone", BACKBONES)
def test_wrap_every_head_on_every_backbone(backbone, head):
    kwargs, shape = BACKBONES[backbone]
    model = robustproto.wrap(backbone, head=head, num_classes=10, **kwargs)
    x = torch.rand(2, *shape, requires_grad=True)
    y = torch.tensor([3, 7])
    z = model.embed(x)
    expected_dim = 100 if head == "repulsive" else model.backbone.num_features  # repulsive: a neck to 10 × classes
    assert z.shape == (2, expected_dim) == (2, model.embed_dim)
    scores = model.head(z)
    assert scores.shape == (2, 10)
    loss = model.head.loss(z, scores, y)
    assert loss.isfinite()
    loss.backward()
    assert x.grad.isfinite().all() and x.grad.abs().sum() > 0  # what attacks need
    assert all(p.grad is not None and p.grad.isfinite().all() for p in model.parameters())


def test_wrap_a_built_timm_module():
    built = timm.create_model("test_resnet", num_classes=5)
    model = robustproto.wrap(built, head="glvq", num_classes=10).eval()
    assert built.num_classes == 0 and model.backbone is built  # its classifier removed, nothing copied
    reference = timm.create_model("test_resnet", num_classes=0)
    reference.load_state_dict(built.state_dict())
    reference.eval()
    x = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(model.embed(x), reference(model.normalize(x)))
    assert model(x).shape == (2, 10)
    assert model.spec["backbone"] == "test_resnet"


def test_normalisation_comes_from_the_backbone():
    model = robustproto.wrap("kp_cnn_cifar", head="linear", num_classes=10)
    torch.testing.assert_close(model.normalize.mean.flatten(), torch.tensor([0.4914, 0.4822, 0.4465]))
    torch.testing.assert_close(model.normalize.std.flatten(), torch.tensor([0.2470, 0.2435, 0.2616]))


def test_wrong_channel_count_is_a_clear_error():
    model = robustproto.wrap("kp_cnn_mnist", head="glvq", num_classes=10)
    with pytest.raises(UsageError, match=r"\(B, 1, H, W\).*in_chans"):
        model(torch.rand(2, 3, 28, 28))
