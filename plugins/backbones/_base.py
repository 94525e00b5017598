"""What the built-in backbones share: timm's classifier interface on a feature vector, and their builder."""

from __future__ import annotations

from typing import Any

import torch
from timm.models import build_model_with_cfg
from torch import nn

from robustproto.errors import UsageError

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
MNIST_MEAN = (0.1307,)
MNIST_STD = (0.3081,)


def cfg(input_size: tuple[int, int, int], mean: tuple[float, ...], std: tuple[float, ...], **kwargs: Any) -> dict:
    """A timm pretrained cfg without weights: it carries the input size and normalisation."""
    return {
        "num_classes": 10, "input_size": input_size, "crop_pct": 1.0, "interpolation": "bilinear",
        "mean": mean, "std": std, "classifier": "fc", **kwargs,
    }


def _names_weights(pretrained_cfg: Any) -> bool:
    """Whether a pretrained cfg passed to ``timm.create_model`` locates weights (a file, folder, URL or Hub repo)."""
    if hasattr(pretrained_cfg, "to_dict"):
        pretrained_cfg = pretrained_cfg.to_dict()
    return isinstance(pretrained_cfg, dict) and any(pretrained_cfg.get(k) for k in ("file", "url", "hf_hub_id",
                                                                                     "state_dict"))


def build(model_cls: type[nn.Module], variant: str, pretrained: bool, **kwargs: Any) -> nn.Module:
    """``timm.models.build_model_with_cfg`` for a model that ships no pretrained weights: ``pretrained=True`` needs
    weights named by the caller's pretrained cfg, as ``timm.create_model("local-dir:DIR", pretrained=True)`` and
    ``"hf-hub:REPO"`` pass for a folder written by ``robustproto export``."""
    if pretrained and not _names_weights(kwargs.get("pretrained_cfg")):
        raise UsageError(f"'{variant}' has no pretrained weights: create it with pretrained=False "
                         "(train it, or load your own checkpoint)")
    return build_model_with_cfg(model_cls, variant, pretrained, **kwargs)


class FeatureVectorNet(nn.Module):
    """Base of timm-style models whose ``forward_features`` already returns ``(B, num_features)``.

    Gives timm's classifier interface: ``num_classes``, ``num_features``, ``get_classifier``,
    ``reset_classifier``, ``forward_head(x, pre_logits=False)``; with ``num_classes=0`` the
    model returns its features. Subclasses build their layers and define ``forward_features``.
    """

    def __init__(self, num_features: int, num_classes: int):
        super().__init__()
        self.num_features = self.head_hidden_size = int(num_features)
        self.reset_classifier(num_classes)

    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        # global_pool is accepted for timm's signature: the features are a vector, nothing to pool
        self.num_classes = int(num_classes)
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))
