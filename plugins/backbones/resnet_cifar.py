"""``resnet18_cifar``: ResNet-18 with the CIFAR stem (3×3 stride-1 conv, no max-pool)."""

from __future__ import annotations

from timm.models import generate_default_cfgs, register_model
from timm.models.resnet import BasicBlock, ResNet
from torch import nn

from ._base import CIFAR10_MEAN, CIFAR10_STD, build, cfg


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


default_cfgs = generate_default_cfgs({
    "resnet18_cifar": cfg((3, 32, 32), CIFAR10_MEAN, CIFAR10_STD, pool_size=(4, 4), first_conv="conv1"),
})


@register_model
def resnet18_cifar(pretrained: bool = False, **kwargs) -> CifarResNet:
    """ResNet-18 (BasicBlock, [2, 2, 2, 2]) with a 3×3 stride-1 stem and no max-pool, for 32×32 images."""
    model_args = dict(block=BasicBlock, layers=(2, 2, 2, 2))
    return build(CifarResNet, "resnet18_cifar", pretrained, **dict(model_args, **kwargs))
