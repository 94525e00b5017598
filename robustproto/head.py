"""The contract of a classification head, and the distance helpers prototype heads share."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["CAPABILITY_FLAGS", "HOOK_CAPABILITIES", "Head", "affine_margin", "squared_euclidean", "working_dtype"]


class Head(nn.Module):
    """Base class of every head plugin (entry-point group ``robustproto.heads``).

    A head turns embeddings ``z`` of shape ``(B, embed_dim)`` into class scores.
    To add one, subclass it in your own package and register the class::

        [project.entry-points."robustproto.heads"]
        myhead = "my_package.heads:MyHead"

    or, inside one process (a notebook, a script, a test), ``robustproto.register_head("myhead",
    MyHead)``. Either way the class is checked against this contract when it loads, as pluggy
    checks hook implementations against their specs: a head that breaks it is listed with its
    error by ``robustproto plugins`` and asking for it raises :class:`robustproto.PluginError`.

    Required (a head that does not implement ``forward`` and ``loss`` is refused):

    - ``__init__(self, embed_dim: int, num_classes: int, **options)``: ``options``
      come from ``--head-opt key=value`` (strings are parsed as Python literals by
      the CLI) or ``head_options=`` of :func:`robustproto.wrap`. Reject unknown
      options with a ``TypeError`` naming them (a plain keyword signature does).
    - ``forward(z) -> (B, num_classes)`` scores whose argmax is the prediction.
      Prototype heads return negative distances, computed in float32 even under
      autocast and in float64 on a float64 model (use :func:`squared_euclidean`).
    - ``loss(z, scores, y) -> scalar``: the training loss of a batch (mean over it).

    Optional hooks, each with one capability flag the core reads (``supports_margin``,
    ``supports_init_from_data``, ``supports_after_step``). A subclass that overrides a
    hook gets its flag set to ``True`` automatically; set the flag yourself to say
    otherwise (a head whose margin depends on its options sets ``self.supports_margin``
    per instance). Declaring a hook that is not implemented (the flag ``True`` on the class, the
    method still ``Head``'s) is refused when the plugin loads, and so is a flag that is not a bool:

    - ``init_from_data(z, y)``: called once before training with embeddings of a
      first pass over (a subset of) the training data, e.g. class means, k-means
      or SVD tangents. Must cope with a class that has no sample (keep its init).
    - ``after_step()``: called after every optimiser step (under ``torch.no_grad``),
      e.g. to renormalise a metric or orthonormalise tangents.
    - ``margin(z) -> (B,)``: a certified lower bound of the L2 distance, in
      embedding space, from each ``z`` to the decision boundary of the predicted
      class (used by ``robustproto certify``). Return 0 where the bound is unknown.
    - ``class_margin(z, y) -> (B,)``: the same bound for the region of class ``y`` instead of
      the predicted class, signed: ``> 0`` only where ``z`` is classified ``y`` with no other
      class within that distance, ``≤ 0`` where it is not classified ``y`` (how far past the
      boundary, where the head knows it). Differentiable in ``z`` and the head's parameters:
      regularizers that train the certified radius (``lipschitz-margin``) hinge on it. Where
      the predicted class is ``y`` it equals ``margin(z)``.
    - ``preferred_embed_dim(num_classes, **options) -> int | None`` (classmethod):
      the embedding size the head wants when the user gives none (a linear neck is
      then added); ``None`` keeps the backbone's feature size.

    Optional capability:

    - ``scores_affine_in_embedding: bool`` (class attribute, default ``False``): set it
      to ``True`` only if ``forward(z) == z @ W.T + b`` exactly, for every ``z``, with
      ``(W, b) = affine_map()``, up to floating-point rounding of that expression: no
      activation, normalisation or other non-linearity of ``z``. ``certify`` then
      treats the head as the last linear layer of the network, which lets it apply
      bounds that need the gradient of every score (Hein & Andriushchenko's local
      bound on a one-hidden-layer backbone). A head that declares it falsely gets
      certificates that can exceed the true radius.
    - ``affine_map() -> (weight (num_classes, embed_dim), bias (num_classes,))``: the
      ``W`` and ``b`` above, as tensors on the head's device and in its dtype;
      implemented by the heads that declare ``scores_affine_in_embedding``.

    - ``scores_are_logits: bool`` (class attribute, default ``False``): ``True`` when the
      scores are softmax logits, i.e. the head is trained with cross-entropy on them, which
      sets their scale. Evaluation then attacks with cross-entropy by default; on other
      heads (prototype scores are distances with no natural scale, on which cross-entropy
      saturates) the default is the per-point worst of cross-entropy and the margin.

    - ``supports_soft_targets: bool`` (class attribute, default ``False``): ``True`` when ``loss(z, scores, y)``
      also accepts soft targets, ``y`` a float tensor ``(B, num_classes)`` whose rows are probability
      distributions (each ≥ 0, summing to 1), besides integer labels ``(B,)``, and on a one-hot ``y`` gives the
      loss of its labels. ``--mixup``/``--cutmix`` train only heads that declare it.

    Optional attributes: ``prototypes`` ``(P, embed_dim)`` and ``prototype_labels``
    ``(P,)`` let ``robustproto show prototypes`` draw them (``prototype_labels`` may be
    omitted when there is one prototype per class, in class order).

    Numerics: no NaN on zero distances, duplicate prototypes or a class missing
    from a batch.
    """

    supports_margin: bool = False
    supports_class_margin: bool = False
    supports_init_from_data: bool = False
    supports_after_step: bool = False
    scores_affine_in_embedding: bool = False
    scores_are_logits: bool = False
    supports_soft_targets: bool = False

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        for hook, flag in HOOK_CAPABILITIES.items():
            if flag not in cls.__dict__ and hook in cls.__dict__:  # overridden here and not declared: declare it
                setattr(cls, flag, True)

    def __init__(self, embed_dim: int, num_classes: int):
        super().__init__()
        self.embed_dim = int(embed_dim)
        self.num_classes = int(num_classes)

    def forward(self, z: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        """Class scores ``(B, num_classes)`` of embeddings ``z``; argmax is the prediction."""
        raise NotImplementedError(f"{type(self).__name__} must implement forward(z)")

    def loss(self, z: torch.Tensor, scores: torch.Tensor, y: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        """The training loss of a batch (a scalar, the mean over it)."""
        raise NotImplementedError(f"{type(self).__name__} must implement loss(z, scores, y)")

    @classmethod
    def preferred_embed_dim(cls, num_classes: int, **options) -> int | None:
        """The embedding size the head wants when the user gives none (a linear neck is then added); ``None``
        keeps the backbone's feature size."""
        return None

    def init_from_data(self, z: torch.Tensor, y: torch.Tensor) -> None:
        """Data-dependent initialisation; the default does nothing."""

    def after_step(self) -> None:
        """Projection after an optimiser step; the default does nothing."""

    def margin(self, z: torch.Tensor) -> torch.Tensor:
        """Per ``z`` a certified lower bound of the L2 distance, in embedding space, to the decision boundary of the predicted class (only with ``supports_margin``)."""
        raise NotImplementedError(
            f"head '{type(self).__name__}' gives no certified margin; certify a model with a head that "
            "implements margin(z) (`robustproto plugins` lists the heads; built in: linear, glvq, gmlvq, repulsive)"
        )

    def class_margin(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per ``z`` the signed certified L2 distance, in embedding space, to the boundary of class ``y``'s region (only with ``supports_class_margin``)."""
        raise NotImplementedError(
            f"head '{type(self).__name__}' gives no class margin; use a head that implements class_margin(z, y) "
            "(built in: linear, glvq, gmlvq, repulsive with metric l2 or loss cosine)"
        )

    def affine_map(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(W, b)`` with ``forward(z) == z @ W.T + b``; only for heads with ``scores_affine_in_embedding``."""
        raise NotImplementedError(
            f"head '{type(self).__name__}' does not declare scores_affine_in_embedding, so it has no affine_map()"
        )


# each optional hook of Head and the capability flag that declares it
HOOK_CAPABILITIES = {"margin": "supports_margin", "class_margin": "supports_class_margin",
                     "init_from_data": "supports_init_from_data",
                     "after_step": "supports_after_step", "affine_map": "scores_affine_in_embedding"}
# every capability flag of Head: a bool on the class (an instance may refine it, as repulsive's supports_margin)
CAPABILITY_FLAGS = (*HOOK_CAPABILITIES.values(), "scores_are_logits", "supports_soft_targets")


def working_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """The dtype head arithmetic runs in: the tensors' promoted dtype, at least float32 (half and bfloat16 under
    autocast go to float32; float64, as on ``certify``'s float64 copy of a model, stays float64)."""
    dtype = torch.float32
    for t in tensors:
        dtype = torch.promote_types(dtype, t.dtype)
    return dtype


def squared_euclidean(z: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean distances ``(B, P)`` between rows of ``z`` (B, D) and ``w`` (P, D).

    Computed as ``‖z‖² − 2 z·w + ‖w‖²`` with autocast off (a B×P×D broadcast is two
    orders of magnitude slower), in the promoted dtype of ``z`` and ``w`` but at least
    float32: half and bfloat16 inputs (autocast) are computed in float32, float64 inputs
    stay float64 (``certify`` evaluates margins on a float64 copy of the model).
    Clamped at 0 so rounding never gives a negative distance (whose square root would
    be NaN).
    """
    dtype = working_dtype(z, w)
    with torch.autocast(device_type=z.device.type, enabled=False):
        z = z.to(dtype)
        w = w.to(dtype)
        d = (z * z).sum(1, keepdim=True) - 2.0 * z @ w.t() + (w * w).sum(1).unsqueeze(0)
    return d.clamp_min(0.0)


def affine_margin(g: torch.Tensor, grad_norm: torch.Tensor, signed: bool = False) -> torch.Tensor:
    """Distance to the zero set of an affine function: ``g / ‖∇g‖`` with ``0/0 = 0``.

    ``g`` (B, M) are the values at ``z`` of affine functions that are positive while
    the prediction holds; ``grad_norm`` (B, M) or (M,) the norms of their gradients.
    The minimum over the M functions is returned, ``inf`` where no function
    constrains (``‖∇g‖ = 0`` and ``g > 0``). Negative ``g`` count as 0 (the distance from a
    point past the boundary), unless ``signed``: then ``g / ‖∇g‖`` is kept negative, the signed
    distance a training penalty needs (0 where ``‖∇g‖ = 0`` and ``g ≤ 0``, so no NaN or infinite gradient).
    """
    grad_norm = grad_norm.expand_as(g)
    safe = grad_norm > 0
    unconstrained = (g > 0) & (~safe | torch.isinf(g))  # e.g. a same-class prototype, masked with g = inf
    # divide only finite values by positive ones: an unselected 0·inf in the backward pass would be a NaN
    numerator = torch.where(torch.isfinite(g), g, torch.zeros_like(g))
    numerator = numerator if signed else numerator.clamp_min(0.0)
    ratio = numerator / torch.where(safe, grad_norm, torch.ones_like(grad_norm))
    ratio = torch.where(safe, ratio, torch.zeros_like(g))
    ratio = torch.where(unconstrained, torch.full_like(g, float("inf")), ratio)
    return ratio.min(dim=1).values
