"""``gloro_2c2f_mnist``, ``gloro_4c3f_mnist``, ``gloro_6c2f_cifar``: the CNNs GloRo certifies, built to be certified.

Leino, Wang & Fredrikson 2021 ("Globally-robust neural networks", ICML; klasleino/gloro) train these plain ReLU
CNNs against the product of their layers' spectral norms. They have no BatchNorm (whose batch-dependent train-mode
map the bound cannot follow), no max-pooling (a 2×2 pool costs nothing in the bound, but a 3×3/2 one √4 = 2) and no
residual sums (bounded by ``1 + Lip(branch)`` per block, a product that compounds): downsampling is by strided
convolutions, and :func:`robustproto.lipschitz_upper_bound` composes exactly what the network computes, with the
circulant bound per convolution (Sedghi et al.). The last dense layer of GloRo's networks is the classifier, which
the head replaces here; the layers before it give the embedding, ending in a ReLU as theirs do.

Deviation: GloRo's convolutions pad "same" in TensorFlow, which for an even kernel with stride 2 pads one pixel on
one side and two on the other; here every convolution pads symmetrically (``kernel // 2 − 1`` for even kernels with
stride 2, ``kernel // 2`` otherwise), which gives the same feature-map sizes.
"""

from __future__ import annotations

from typing import Sequence

import torch
from timm.layers import to_2tuple
from timm.models import generate_default_cfgs, register_model
from torch import nn

from ._base import CIFAR10_MEAN, CIFAR10_STD, FeatureVectorNet, build, cfg


class StridedCNN(FeatureVectorNet):
    """Convolutions ``(width, kernel, stride)`` with ReLU, flattened, then dense layers with ReLU.

    Args:
        convs: ``(out channels, kernel size, stride)`` per convolution.
        dense: widths of the dense layers; the last one is ``num_features`` (the embedding, after its ReLU).
        in_chans, img_size: the input.
    """

    def __init__(self, convs: Sequence[tuple[int, int, int]], dense: Sequence[int], num_classes: int = 10,
                 in_chans: int = 1, img_size: int | tuple[int, int] = 28):
        super().__init__(dense[-1], num_classes)
        self.in_chans = in_chans
        layers: list[nn.Module] = []
        channels, (height, width) = in_chans, to_2tuple(img_size)
        for out, kernel, stride in convs:
            padding = kernel // 2 - 1 if kernel % 2 == 0 and stride == 2 else kernel // 2
            layers += [nn.Conv2d(channels, out, kernel, stride=stride, padding=padding), nn.ReLU()]
            height = (height + 2 * padding - kernel) // stride + 1
            width = (width + 2 * padding - kernel) // stride + 1
            channels = out
        self.convs = nn.Sequential(*layers)
        fcs: list[nn.Module] = []
        features = channels * height * width
        for size in dense:
            fcs += [nn.Linear(features, size), nn.ReLU()]
            features = size
        self.dense = nn.Sequential(*fcs)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.dense(self.convs(x).flatten(1))


default_cfgs = generate_default_cfgs({
    # GloRo feeds MNIST pixels in [0, 1] unnormalised, CIFAR-10 standardised per channel
    "gloro_2c2f_mnist": cfg((1, 28, 28), (0.0,), (1.0,), fixed_input_size=True, first_conv="convs.0"),
    "gloro_4c3f_mnist": cfg((1, 28, 28), (0.0,), (1.0,), fixed_input_size=True, first_conv="convs.0"),
    "gloro_6c2f_cifar": cfg((3, 32, 32), CIFAR10_MEAN, CIFAR10_STD, fixed_input_size=True, first_conv="convs.0"),
})


@register_model
def gloro_2c2f_mnist(pretrained: bool = False, **kwargs) -> StridedCNN:
    """GloRo's MNIST model for L2 ε = 0.3: conv 16 4×4/2, conv 32 4×4/2, dense 100 (the embedding)."""
    model_args = dict(convs=((16, 4, 2), (32, 4, 2)), dense=(100,))
    return build(StridedCNN, "gloro_2c2f_mnist", pretrained, **dict(model_args, **kwargs))


@register_model
def gloro_4c3f_mnist(pretrained: bool = False, **kwargs) -> StridedCNN:
    """GloRo's MNIST model for L2 ε = 1.58: conv 32 3×3, conv 32 4×4/2, conv 64 3×3, conv 64 4×4/2, dense 512,
    dense 512 (the embedding)."""
    model_args = dict(convs=((32, 3, 1), (32, 4, 2), (64, 3, 1), (64, 4, 2)), dense=(512, 512))
    return build(StridedCNN, "gloro_4c3f_mnist", pretrained, **dict(model_args, **kwargs))


@register_model
def gloro_6c2f_cifar(pretrained: bool = False, **kwargs) -> StridedCNN:
    """GloRo's CIFAR-10 model for L2 ε = 36/255: conv 32 3×3, conv 32 3×3, conv 32 4×4/2, conv 64 3×3, conv 64 3×3,
    conv 64 4×4/2, dense 512 (the embedding)."""
    model_args = dict(convs=((32, 3, 1), (32, 3, 1), (32, 4, 2), (64, 3, 1), (64, 3, 1), (64, 4, 2)), dense=(512,),
                      in_chans=3, img_size=32)
    return build(StridedCNN, "gloro_6c2f_cifar", pretrained, **dict(model_args, **kwargs))
