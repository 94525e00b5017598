"""``linear``: a linear classifier with softmax cross-entropy, the baseline every prototype head is compared to."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from robustproto import Head

from ._geometry import linear_margin


class LinearHead(Head):
    """Scores ``f(z) = W z + b`` trained with softmax cross-entropy; no options.

    ``margin(z)`` is the exact L2 distance in embedding space to the decision boundary of
    the predicted class ``c``: ``min_j (f_c − f_j) / ‖w_c − w_j‖``, the linear case of the
    instance-specific guarantee of Hein & Andriushchenko 2017 ("Formal guarantees on the
    robustness of a classifier against adversarial manipulation", Theorem 2.1), where the
    bound is tight because the class differences are affine. ``class_margin(z, y)``: the same for
    class ``y``, signed (negative where another class scores higher).

    The scores are affine in ``z`` (``scores_affine_in_embedding``, ``affine_map()`` is
    ``(fc.weight, fc.bias)``), so ``certify`` can also apply Hein & Andriushchenko's local
    bound when the backbone is a one-hidden-layer softplus network. ``margin`` computes in
    the dtype of ``z`` (at least float32, also under autocast).
    """

    scores_affine_in_embedding = True
    scores_are_logits = True  # trained with cross-entropy: evaluation attacks it with CE by default
    supports_soft_targets = True  # F.cross_entropy takes class probabilities as the target too (mixup, cutmix)

    def __init__(self, embed_dim: int, num_classes: int):
        super().__init__(embed_dim, num_classes)
        self.fc = nn.Linear(embed_dim, num_classes)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.fc(z)

    def loss(self, z: torch.Tensor, scores: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy against labels ``y`` ``(B,)`` or soft targets ``y`` ``(B, num_classes)``."""
        return F.cross_entropy(scores.float(), y.float() if y.is_floating_point() else y)

    def affine_map(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.fc.weight, self.fc.bias

    def margin(self, z: torch.Tensor) -> torch.Tensor:
        return linear_margin(self._exact_scores(z), self.fc.weight)

    def class_margin(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return linear_margin(self._exact_scores(z), self.fc.weight, y)

    def _exact_scores(self, z: torch.Tensor) -> torch.Tensor:
        dtype = torch.promote_types(z.dtype, torch.float32)
        with torch.autocast(device_type=z.device.type, enabled=False):
            return F.linear(z.to(dtype), self.fc.weight.to(dtype), self.fc.bias.to(dtype))
