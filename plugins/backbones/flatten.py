"""``flatten``: the raw pixels as features, for LVQ on MNIST pixels as in Saralajew et al. 2019."""

from __future__ import annotations

import torch
from timm.layers import to_2tuple
from timm.models import generate_default_cfgs, register_model

from ._base import FeatureVectorNet, build, cfg


class FlattenNet(FeatureVectorNet):
    """Identity on pixels: ``forward_features(x) = x.flatten(1)``, ``in_chans × H × W`` features.

    Saralajew et al. ("Robustness of GLVQ models against adversarial attacks", 2019) train
    GLVQ, GMLVQ and GTLVQ directly on the 784 MNIST pixels; this backbone puts a prototype
    head on the pixels the same way. Its cfg has mean 0 and std 1, so the model sees the
    pixels in [0, 1] unchanged. ``in_chans`` (default 1) and ``img_size`` (default 28) set
    the feature size.
    """

    def __init__(self, num_classes: int = 10, in_chans: int = 1, img_size: int | tuple[int, int] = 28):
        height, width = to_2tuple(img_size)
        super().__init__(in_chans * height * width, num_classes)
        self.in_chans = in_chans

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)


default_cfgs = generate_default_cfgs({
    "flatten": cfg((1, 28, 28), (0.0,), (1.0,), fixed_input_size=True, first_conv=None),
})


@register_model
def flatten(pretrained: bool = False, **kwargs) -> FlattenNet:
    """Raw pixels as features (LVQ on pixels)."""
    return build(FlattenNet, "flatten", pretrained, **kwargs)
