"""``kp_cnn_mnist``, ``kp_cnn_cifar``: the small CNN embeddings of Khalid & Paaßen 2025; ``madry_cnn_mnist``: the
MNIST CNN of Madry et al. 2018 (the same stages with 5×5 convs and a ReLU after the fully connected layer)."""

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
        kernel_size: of every conv (3; odd), padded to keep the size ("SAME").
        embed_act: a ReLU after the fully connected layer (Madry et al.'s CNN), so the embedding is its output.
    """

    def __init__(self, widths: Sequence[int], feature_dim: int, batch_norm: bool, drop_rate: float = 0.0,
                 num_classes: int = 10, in_chans: int = 1, img_size: int | tuple[int, int] = 28,
                 kernel_size: int = 3, embed_act: bool = False):
        super().__init__(feature_dim, num_classes)
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise UsageError(f"kernel_size must be odd (padded to keep the size), got {kernel_size}")
        self.in_chans = in_chans
        layers: list[nn.Module] = []
        channels = in_chans
        for width in widths:
            layers += [nn.Conv2d(channels, width, kernel_size, padding=kernel_size // 2)]
            layers += [nn.BatchNorm2d(width)] if batch_norm else []
            layers += [nn.ReLU(inplace=True), nn.MaxPool2d(2)]
            channels = width
        self.convs = nn.Sequential(*layers)
        height, width_px = (s // 2 ** len(widths) for s in to_2tuple(img_size))
        if height < 1 or width_px < 1:
            raise UsageError(f"img_size={img_size} is too small for {len(widths)} 2×2 max-pools")
        self.drop = nn.Dropout(drop_rate)
        self.embed = nn.Linear(channels * height * width_px, feature_dim)
        self.embed_act = nn.ReLU() if embed_act else nn.Identity()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.embed_act(self.embed(self.drop(self.convs(x).flatten(1))))


default_cfgs = generate_default_cfgs({
    "kp_cnn_mnist": cfg((1, 28, 28), MNIST_MEAN, MNIST_STD, fixed_input_size=True, first_conv="convs.0"),
    "kp_cnn_cifar": cfg((3, 32, 32), CIFAR10_MEAN, CIFAR10_STD, fixed_input_size=True, first_conv="convs.0"),
    # Madry et al.'s model sees the pixels in [0, 1] unnormalised: mean 0, std 1
    "madry_cnn_mnist": cfg((1, 28, 28), (0.0,), (1.0,), fixed_input_size=True, first_conv="convs.0"),
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


@register_model
def madry_cnn_mnist(pretrained: bool = False, **kwargs) -> KPCNN:
    """Madry, Makelov, Schmidt, Tsipras & Vladu 2018 ("Towards deep learning models resistant to adversarial
    attacks"), MNIST challenge model: conv 32 5×5 + ReLU + 2×2 max-pool, conv 64 5×5 + ReLU + 2×2 max-pool ("SAME"
    padding: 28 → 14 → 7), fully connected 3136 → 1024 + ReLU; the 1024 ReLU units are the features (about 3.3 M
    parameters with a 10-class linear layer). Like theirs, it sees the pixels in [0, 1] unnormalised (the cfg's
    mean 0, std 1)."""
    model_args = dict(widths=(32, 64), feature_dim=1024, batch_norm=False, kernel_size=5, embed_act=True)
    return build(KPCNN, "madry_cnn_mnist", pretrained, **dict(model_args, **kwargs))
