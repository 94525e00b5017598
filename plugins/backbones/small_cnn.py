"""``kp_cnn_mnist``, ``kp_cnn_cifar``: the small CNN embeddings of Khalid & Paaßen 2025."""

from __future__ import annotations

from typing import Sequence

import torch
from timm.layers import to_2tuple
from timm.models import generate_default_cfgs, register_model
from torch import nn

from robustproto.errors import UsageError

from ._base import CIFAR10_MEAN, CIFAR10_STD, MNIST_MEAN, MNIST_STD, FeatureVectorNet, build, cfg


class KPCNN(FeatureVectorNet):
    """The convolutional backbone of Khalid & Paaßen 2025, "Adversarial robustness by combining
    prototype models with Lipschitz training": per stage a 3×3 conv, optional batch norm,
    ReLU and 2×2 max-pool; then optional dropout and a fully connected layer to the feature
    size, whose output (no activation) is the embedding the prototype head sees.

    The paper gives neither channel widths nor padding: we choose widths 32/64 (MNIST) and
    32/64/128 (CIFAR-10) and padding 1, so each stage halves the image (28 → 7, 32 → 4).

    Args:
        widths: output channels of the conv stages.
        feature_dim: size of the final fully connected layer (``num_features``).
        batch_norm: batch norm after each conv (the CIFAR-10 variant).
        drop_rate: dropout before the fully connected layer (0.5 in the CIFAR-10 variant).
    """

    def __init__(self, widths: Sequence[int], feature_dim: int, batch_norm: bool, drop_rate: float = 0.0,
                 num_classes: int = 10, in_chans: int = 1, img_size: int | tuple[int, int] = 28):
        super().__init__(feature_dim, num_classes)
        self.in_chans = in_chans
        layers: list[nn.Module] = []
        channels = in_chans
        for width in widths:
            layers += [nn.Conv2d(channels, width, 3, padding=1)]
            layers += [nn.BatchNorm2d(width)] if batch_norm else []
            layers += [nn.ReLU(inplace=True), nn.MaxPool2d(2)]
            channels = width
        self.convs = nn.Sequential(*layers)
        height, width_px = (s // 2 ** len(widths) for s in to_2tuple(img_size))
        if height < 1 or width_px < 1:
            raise UsageError(f"img_size={img_size} is too small for {len(widths)} 2×2 max-pools")
        self.drop = nn.Dropout(drop_rate)
        self.embed = nn.Linear(channels * height * width_px, feature_dim)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.embed(self.drop(self.convs(x).flatten(1)))


default_cfgs = generate_default_cfgs({
    "kp_cnn_mnist": cfg((1, 28, 28), MNIST_MEAN, MNIST_STD, fixed_input_size=True, first_conv="convs.0"),
    "kp_cnn_cifar": cfg((3, 32, 32), CIFAR10_MEAN, CIFAR10_STD, fixed_input_size=True, first_conv="convs.0"),
})


@register_model
def kp_cnn_mnist(pretrained: bool = False, **kwargs) -> KPCNN:
    """Khalid & Paaßen's MNIST CNN: two conv + ReLU + max-pool stages (32, 64), FC to 16."""
    model_args = dict(widths=(32, 64), feature_dim=16, batch_norm=False)
    return build(KPCNN, "kp_cnn_mnist", pretrained, **dict(model_args, **kwargs))


@register_model
def kp_cnn_cifar(pretrained: bool = False, **kwargs) -> KPCNN:
    """Khalid & Paaßen's CIFAR-10 CNN: three conv + BN + ReLU + max-pool stages (32, 64, 128), dropout 0.5, FC to 64."""
    model_args = dict(widths=(32, 64, 128), feature_dim=64, batch_norm=True, drop_rate=0.5)
    return build(KPCNN, "kp_cnn_cifar", pretrained, **dict(model_args, **kwargs))
