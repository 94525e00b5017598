"""``mlp``: a one-hidden-layer softplus network, as in Hein & Andriushchenko 2017."""

from __future__ import annotations

import torch
from timm.layers import to_2tuple
from timm.models import generate_default_cfgs, register_model
from torch import nn

from ._base import FeatureVectorNet, build, cfg


class SoftplusMLP(FeatureVectorNet):
    """``flatten → Linear(in_chans·H·W, width) → Softplus(beta) → Dropout(drop_rate)``; the hidden
    layer is the feature.

    Hein & Andriushchenko ("Formal guarantees on the robustness of a classifier against
    adversarial manipulation", 2017) use one hidden layer of 1024 units with the softplus
    ``log(1 + exp(β t)) / β``, β = 10, a smooth ReLU, so that their Lipschitz bounds
    (Theorem 2.1, the Cross-Lipschitz regularizer) apply. Options: ``width`` (1024),
    ``softplus_beta`` (10), ``drop_rate`` (0; dropout on the hidden units, the paper's dropout
    baseline, active in training mode only), ``in_chans`` (1), ``img_size`` (28). Its cfg has mean 0 and
    std 1: like the paper's network it sees the pixels in [0, 1], so closed-form bounds
    on its weights are bounds in pixel units.
    """

    def __init__(self, num_classes: int = 10, in_chans: int = 1, img_size: int | tuple[int, int] = 28,
                 width: int = 1024, softplus_beta: float = 10.0, drop_rate: float = 0.0):
        height, width_px = to_2tuple(img_size)
        super().__init__(width, num_classes)
        self.in_chans = in_chans
        self.hidden = nn.Linear(in_chans * height * width_px, width)
        self.act = nn.Softplus(beta=softplus_beta)
        self.drop = nn.Dropout(drop_rate)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.act(self.hidden(x.flatten(1))))


default_cfgs = generate_default_cfgs({
    "mlp": cfg((1, 28, 28), (0.0,), (1.0,), fixed_input_size=True, first_conv=None),
})


@register_model
def mlp(pretrained: bool = False, **kwargs) -> SoftplusMLP:
    """One hidden softplus layer (Hein & Andriushchenko 2017)."""
    return build(SoftplusMLP, "mlp", pretrained, **kwargs)
