"""ProtoModel: normalise → timm backbone → optional linear neck → head, and :func:`wrap`, which builds one.

The plugin factories it uses (:func:`robustproto.registry.create_backbone`, ``create_head``) live in the
registry module, below this one.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

from .errors import UsageError
from .head import Head
from .registry import create_backbone, create_head, head_registry

__all__ = ["Normalize", "ProtoModel", "wrap"]


class Normalize(nn.Module):
    """``(x − mean) / std`` per channel, so the model takes images in [0, 1] and attack ε are in pixels."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        if len(mean) != len(std):
            raise UsageError(f"mean has {len(mean)} channels but std has {len(std)}")
        if any(s <= 0 for s in std):
            raise UsageError(f"std must be positive, got {list(std)}")
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(x − mean) / std`` per channel; a wrong channel count is a clear error."""
        if x.ndim != 4 or x.shape[1] != self.mean.shape[1]:
            raise UsageError(
                f"expected images of shape (B, {self.mean.shape[1]}, H, W) in [0, 1], got {tuple(x.shape)}; "
                "pass in_chans= to match the data"
            )
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)

    def lipschitz_constant(self) -> float:
        """The Lipschitz constant of this map in the L2 norm, ``1 / min std``: what
        :func:`robustproto.lipschitz_upper_bound` takes for the normalisation."""
        return 1.0 / float(self.std.min())

    def extra_repr(self) -> str:
        """The statistics, for ``print(model)``."""
        return f"mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()}"


class ProtoModel(nn.Module):
    """A classifier on images in [0, 1]: ``head(neck(backbone(normalize(x))))``.

    Attributes:
        normalize: per-channel normalisation, inside the model.
        backbone: a timm model built with ``num_classes=0`` (pooled features).
        neck: ``nn.Linear`` to ``embed_dim`` or ``nn.Identity``.
        head: a :class:`robustproto.Head`.
        spec: what :func:`wrap` was called with, enough to rebuild the model.
    """

    def __init__(self, backbone: nn.Module, head: Head, normalize: Normalize, neck: nn.Module | None = None,
                 spec: dict[str, Any] | None = None):
        super().__init__()
        self.normalize = normalize
        self.backbone = backbone
        self.neck = neck if neck is not None else nn.Identity()
        self.head = head
        self.spec = dict(spec or {})

    @property
    def num_classes(self) -> int:
        return self.head.num_classes

    @property
    def embed_dim(self) -> int:
        return self.head.embed_dim

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Embeddings ``(B, embed_dim)`` of images in [0, 1]."""
        return self.neck(self.backbone(self.normalize(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class scores ``(B, num_classes)`` of images in [0, 1]."""
        return self.head(self.embed(x))


def _feature_dim(backbone: nn.Module) -> int:
    dim = getattr(backbone, "head_hidden_size", None) or getattr(backbone, "num_features", None)
    if not dim:
        raise UsageError(
            f"cannot tell the feature size of {type(backbone).__name__}: a timm model has `num_features`; "
            "set embed_dim and make sure the backbone returns (B, features)"
        )
    return int(dim)


def _input_channels(backbone: nn.Module) -> int:
    for module in backbone.modules():
        if isinstance(module, nn.Conv2d):
            return module.in_channels
    cfg = getattr(backbone, "pretrained_cfg", None) or {}
    return int(cfg.get("input_size", (3,))[0])


def _normalisation(backbone: nn.Module, in_chans: int, mean, std) -> tuple[list[float], list[float]]:
    cfg = getattr(backbone, "pretrained_cfg", None) or {}
    mean = list(mean if mean is not None else cfg.get("mean", (0.0,) * in_chans))
    std = list(std if std is not None else cfg.get("std", (1.0,) * in_chans))
    # a 3-channel statistic on a 1-channel model (e.g. ImageNet stats, MNIST data): average, as timm does
    if len(mean) != in_chans:
        mean = [sum(mean) / len(mean)] * in_chans
    if len(std) != in_chans:
        std = [sum(std) / len(std)] * in_chans
    return [float(m) for m in mean], [float(s) for s in std]


def wrap(
    backbone: str | nn.Module,
    head: str = "linear",
    num_classes: int = 10,
    embed_dim: int | None = None,
    head_options: dict[str, Any] | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    **backbone_kwargs: Any,
) -> ProtoModel:
    """Put a head on a timm backbone.

    Args:
        backbone: a timm model name (``"resnet18"``, or one registered by a backbone
            plugin such as ``"flatten"``) or an already-built timm ``nn.Module``, e.g.
            a pretrained one: its classifier is removed with ``reset_classifier(0)``.
        head: a head plugin name (``robustproto plugins`` lists them).
        num_classes: number of classes.
        embed_dim: embedding size; a linear neck maps the backbone's features to it.
            ``None`` keeps the feature size, unless the head prefers its own size
            (the repulsive head wants ``10 × num_classes``).
        head_options: keyword options of the head.
        mean, std: per-channel normalisation; default: the backbone's ``pretrained_cfg``.
        **backbone_kwargs: passed to ``timm.create_model`` (``in_chans=1``,
            ``img_size=32``, ``drop_rate=0.1``, ...).
    """
    head_options = dict(head_options or {})
    if isinstance(backbone, str):
        backbone_name = backbone
        net = create_backbone(backbone, **backbone_kwargs)
    elif isinstance(backbone, nn.Module):
        if backbone_kwargs:
            raise UsageError(
                f"backbone options {sorted(backbone_kwargs)} only apply to a timm model name; "
                "build the module with them instead"
            )
        net = backbone
        if getattr(net, "num_classes", 0) and hasattr(net, "reset_classifier"):
            net.reset_classifier(0)
        backbone_name = (getattr(net, "pretrained_cfg", None) or {}).get("architecture") or type(net).__name__
    else:
        raise TypeError(f"backbone must be a timm model name or an nn.Module, not {type(backbone).__name__}")

    in_chans = int(backbone_kwargs.get("in_chans") or _input_channels(net))
    mean, std = _normalisation(net, in_chans, mean, std)
    features = _feature_dim(net)
    if embed_dim is None:
        embed_dim = head_registry.get(head).preferred_embed_dim(num_classes, **head_options)
    neck = nn.Linear(features, embed_dim) if embed_dim is not None and embed_dim != features else None
    head_module = create_head(head, embed_dim or features, num_classes, **head_options)
    spec = {
        "backbone": backbone_name,
        "backbone_kwargs": dict(backbone_kwargs),
        "head": head,
        "head_options": head_options,
        "num_classes": int(num_classes),
        "embed_dim": embed_dim,
        "mean": mean,
        "std": std,
    }
    return ProtoModel(net, head_module, Normalize(mean, std), neck, spec)
