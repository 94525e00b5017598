"""``resnet18_cifar``: ResNet-18 with the CIFAR stem (3×3 stride-1 conv, no max-pool); ``preact_resnet18_cifar``:
the pre-activation ResNet-18 for 32×32 images of the fast/overfitting adversarial training papers."""

from __future__ import annotations

import torch
from timm.models import generate_default_cfgs, register_model
from timm.models.resnet import BasicBlock, ResNet
from torch import nn

from ._base import CIFAR10_MEAN, CIFAR10_STD, FeatureVectorNet, build, cfg


class CifarResNet(ResNet):
    """timm's :class:`~timm.models.resnet.ResNet` with the stem used for 32×32 images: one 3×3
    stride-1 conv instead of the 7×7 stride-2 conv, and no max-pool, so the four stages see
    32, 16, 8 and 4 pixels. This is the "vanilla ResNet-18" of CIFAR-10 work such as Serban,
    Poll & Visser 2021 ("Deep repulsive prototypes for adversarial robustness").
    """

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        old = self.conv1
        self.conv1 = nn.Conv2d(self.in_chans, old.out_channels, kernel_size=3, stride=1, padding=1, bias=False,
                               device=old.weight.device, dtype=old.weight.dtype)
        nn.init.kaiming_normal_(self.conv1.weight, mode="fan_out", nonlinearity="relu")  # as ResNet.init_weights
        self.maxpool = nn.Identity()
        # the stem no longer downsamples: every tap sees 4× (the stem 2×) more pixels
        self.feature_info[0]["reduction"] = 1
        for info in self.feature_info[1:]:
            info["reduction"] //= 4


class PreActBlock(nn.Module):
    """He, Zhang, Ren & Sun 2016 ("Identity mappings in deep residual networks"): BN, ReLU, 3×3 conv, BN, ReLU,
    3×3 conv, plus the identity, or a 1×1 conv of the pre-activated input where the shape changes."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.relu = nn.ReLU()
        self.shortcut = nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False) \
            if stride != 1 or in_planes != planes else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(x))
        shortcut = x if self.shortcut is None else self.shortcut(out)
        out = self.conv2(self.relu(self.bn2(self.conv1(out))))
        return out + shortcut  # not `+=`: torch.fx (lipschitz_upper_bound) records the sum as such


class PreActResNet(FeatureVectorNet):
    """The PreAct ResNet of Wong, Rice & Kolter 2020 and Rice, Wong & Kolter 2020 (their ``preact_resnet.py``, after
    Kuang Liu's pytorch-cifar): a 3×3 stride-1 stem conv, four stages of :class:`PreActBlock` (64, 128, 256, 512
    channels, strides 1, 2, 2, 2), then BN + ReLU and global average pooling; the 512 pooled values are the
    features.

    ``robustproto.lipschitz_upper_bound`` bounds it, but loosely: a BatchNorm before a conv (the pre-activation
    ``bn1`` of each block, the final ``bn``) cannot be folded into a conv, so it counts with its largest per-channel
    scale ``γ / sqrt(var + ε)``, and its shift does not matter; only ``conv1 → bn2`` inside a block is folded.

    Args:
        layers: blocks per stage ((2, 2, 2, 2): PreAct ResNet-18).
    """

    def __init__(self, layers=(2, 2, 2, 2), num_classes: int = 10, in_chans: int = 3):
        super().__init__(512, num_classes)
        self.in_chans = in_chans
        self.conv1 = nn.Conv2d(in_chans, 64, 3, stride=1, padding=1, bias=False)
        stages, in_planes = [], 64
        for planes, stride, blocks in zip((64, 128, 256, 512), (1, 2, 2, 2), layers):
            stage = []
            for block_stride in [stride] + [1] * (blocks - 1):
                stage.append(PreActBlock(in_planes, planes, block_stride))
                in_planes = planes
            stages.append(nn.Sequential(*stage))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.bn = nn.BatchNorm2d(512)
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer4(self.layer3(self.layer2(self.layer1(self.conv1(x)))))
        return self.flatten(self.pool(self.relu(self.bn(x))))


default_cfgs = generate_default_cfgs({
    "resnet18_cifar": cfg((3, 32, 32), CIFAR10_MEAN, CIFAR10_STD, pool_size=(4, 4), first_conv="conv1"),
    "preact_resnet18_cifar": cfg((3, 32, 32), CIFAR10_MEAN, CIFAR10_STD, first_conv="conv1"),
})


@register_model
def resnet18_cifar(pretrained: bool = False, **kwargs) -> CifarResNet:
    """ResNet-18 (BasicBlock, [2, 2, 2, 2]) with a 3×3 stride-1 stem and no max-pool, for 32×32 images."""
    model_args = dict(block=BasicBlock, layers=(2, 2, 2, 2))
    return build(CifarResNet, "resnet18_cifar", pretrained, **dict(model_args, **kwargs))


@register_model
def preact_resnet18_cifar(pretrained: bool = False, **kwargs) -> PreActResNet:
    """PreAct ResNet-18 for 32×32 images ([2, 2, 2, 2] pre-activation blocks, 3×3 stride-1 stem), 512 features."""
    return build(PreActResNet, "preact_resnet18_cifar", pretrained, **dict(dict(layers=(2, 2, 2, 2)), **kwargs))
