"""``repulsive``: fixed class prototypes spread apart before training (deep repulsive prototypes)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from robustproto import Head, squared_euclidean, working_dtype
from robustproto.errors import UsageError

from ._geometry import linear_margin, nearest_prototype_margin

METRICS = ("l2", "linf")
LOSSES = ("cosine", "distance")
COSINE_EPS = 1e-6  # norms below it are clamped: cosine of a zero embedding is 0, with a finite gradient


def repulsive_prototypes(num_classes: int, dim: int, metric: str = "l2", steps: int = 100, lr: float = 0.01,
                         seed: int = 0) -> torch.Tensor:
    """``(num_classes, dim)`` prototypes pushed apart by projected gradient descent on Eq. 5 of Serban et al.

    Eq. 5, ``min ε^k − r Σ_{i≠j} d(c_i, c_j)``, is solved, as the paper suggests, for the
    centres alone: gradient descent (step ``lr``, which absorbs ``r``) on ``−Σ_{i≠j} d(c_i, c_j)``
    with ``d`` the L2 or L∞ distance. The sum grows without bound in free space, so after
    every step the prototypes are projected back onto a bounded set: the unit sphere for
    ``l2``, the cube ``[−1, 1]^dim`` for ``linf``. They start at seeded random points of that
    set (the paper: 100 epochs with ``μ = 0.01``); the result is deterministic for a seed.
    ``steps=0`` returns the random start.
    """
    if metric not in METRICS:
        raise UsageError(f"metric must be one of {', '.join(METRICS)}, got {metric!r}")
    generator = torch.Generator().manual_seed(int(seed))
    if metric == "l2":
        centres = _onto_bounded_set(torch.randn(num_classes, dim, generator=generator), metric)
    else:
        centres = torch.rand(num_classes, dim, generator=generator) * 2 - 1
    p = 2.0 if metric == "l2" else float("inf")
    with torch.enable_grad():
        for _ in range(int(steps)):
            centres = centres.detach().requires_grad_(True)
            spread = torch.pdist(centres, p=p).sum() * 2  # each unordered pair twice, as Σ_{i≠j}
            (grad,) = torch.autograd.grad(spread, centres)
            centres = _onto_bounded_set(centres.detach() + lr * grad, metric)
    return centres.detach()


def _onto_bounded_set(centres: torch.Tensor, metric: str) -> torch.Tensor:
    """Projection onto the unit sphere (``l2``) or the cube [−1, 1]^dim (``linf``)."""
    return F.normalize(centres, dim=1) if metric == "l2" else centres.clamp(-1.0, 1.0)


class RepulsivePrototypes(Head):
    """Deep repulsive prototypes of Serban, Poll & Visser 2021, "Deep repulsive prototypes for
    adversarial robustness": one fixed prototype per class in a D-dimensional output space
    (default D = 10 × num_classes, added by :func:`robustproto.wrap` as a linear neck),
    spread apart before training by :func:`repulsive_prototypes` and never trained (a buffer).
    The network learns to map each input close to its class prototype; the prediction is
    the nearest prototype.

    The loss. The paper's Eq. 6 writes ``l = Σ (1 − d(f(x), p_y))²``, which only makes sense
    when ``d`` is a similarity equal to 1 at the prototype, as in the hyperspherical prototype
    networks (Mettes et al. 2019) it builds on; with a distance it would push ``f(x)`` to
    distance 1 from its prototype. Two forms are offered:

    - ``loss="cosine"`` (default): ``mean (1 − cos(z, p_y))²``, Eq. 6 with the cosine
      similarity; scores are ``cos(z, p_k)``, so the prediction is the prototype nearest in
      angle. Norms are clamped at 1e-6, so a zero embedding scores 0 with finite gradients.
    - ``loss="distance"``: ``mean d(z, p_y)²`` with ``d`` the L2 or L∞ distance of ``metric``
      (Eq. 6 read as "minimise the distance to the prototype"); scores are ``−d(z, p_k)``.

    Options: ``loss``, ``metric`` (``"l2"`` or ``"linf"``, for the prototypes' repulsion and
    the distance loss), ``output_dim`` (D; must equal ``embed_dim``), ``seed``, ``steps``
    (paper: 100), ``lr`` (paper: 0.01).

    ``margin(z)``: exact L2 distances to the decision boundary where the classifier is a
    nearest-prototype rule of a quadratic form or linear: for ``loss="distance"`` with
    ``metric="l2"`` the bisector formula of GLVQ (one prototype per class); for
    ``loss="cosine"`` the argmax of ``p̂_k · z`` (``p̂`` the unit prototypes; ``‖z‖`` does not
    change the argmax), a linear classifier without bias; ``class_margin(z, y)`` the same for class
    ``y``, signed. The L∞ distance classifier has neither: its boundary between two prototypes is
    piecewise linear with pieces that depend on which coordinate attains the maximum, so no single
    bisector bounds the distance to it.
    """

    def __init__(self, embed_dim: int, num_classes: int, *, loss: str = "cosine", metric: str = "l2",
                 output_dim: int | None = None, seed: int = 0, steps: int = 100, lr: float = 0.01):
        super().__init__(embed_dim, num_classes)
        if loss not in LOSSES:
            raise UsageError(f"loss must be one of {', '.join(LOSSES)}, got {loss!r}")
        if output_dim is not None and int(output_dim) != embed_dim:
            raise UsageError(f"output_dim={output_dim} differs from embed_dim={embed_dim}; give only one of them")
        if int(steps) < 0 or lr <= 0:
            raise UsageError(f"steps must be >= 0 and lr > 0, got steps={steps}, lr={lr}")
        self.loss_kind = loss
        self.metric = metric
        # the L∞ nearest-prototype boundary is not a hyperplane: no certified margin in that configuration
        self.supports_margin = self.supports_class_margin = not (loss == "distance" and metric == "linf")
        self.register_buffer("prototypes", repulsive_prototypes(num_classes, embed_dim, metric, steps, lr, seed))

    @classmethod
    def preferred_embed_dim(cls, num_classes: int, **options) -> int | None:
        return options.get("output_dim") or 10 * num_classes

    def _unit_prototypes(self) -> torch.Tensor:
        prototypes = self.prototypes.to(working_dtype(self.prototypes))
        return prototypes / prototypes.norm(dim=1, keepdim=True).clamp_min(COSINE_EPS)

    def distances(self, z: torch.Tensor) -> torch.Tensor:
        """``(B, K)`` distances ``d(z, p_k)`` of ``metric`` (L2 or L∞, not squared), at least in float32."""
        with torch.autocast(device_type=z.device.type, enabled=False):
            if self.metric == "l2":
                # clamped before the square root, whose gradient is infinite at 0
                return squared_euclidean(z, self.prototypes).clamp_min(1e-12).sqrt()
            dtype = working_dtype(z, self.prototypes)
            return torch.cdist(z.to(dtype), self.prototypes.to(dtype), p=float("inf"))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if self.loss_kind == "distance":
            return -self.distances(z)
        with torch.autocast(device_type=z.device.type, enabled=False):
            z = z.to(working_dtype(z, self.prototypes))
            return (z @ self._unit_prototypes().t()) / z.norm(dim=1, keepdim=True).clamp_min(COSINE_EPS)

    def loss(self, z: torch.Tensor, scores: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        target = scores.float().gather(1, y.unsqueeze(1)).squeeze(1)
        if self.loss_kind == "cosine":
            return (1.0 - target).pow(2).mean()
        return target.pow(2).mean()

    def margin(self, z: torch.Tensor) -> torch.Tensor:
        return self._margin(z, None)

    def class_margin(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self._margin(z, y)

    def _margin(self, z: torch.Tensor, target: torch.Tensor | None) -> torch.Tensor:
        labels = torch.arange(self.num_classes, device=self.prototypes.device)
        if self.loss_kind == "distance" and self.metric == "l2":
            return nearest_prototype_margin(squared_euclidean(z, self.prototypes), labels,
                                            self.prototypes.to(working_dtype(z, self.prototypes)), target)
        if self.loss_kind == "cosine":
            unit = self._unit_prototypes()
            with torch.autocast(device_type=z.device.type, enabled=False):
                scores = z.to(unit.dtype) @ unit.t()
            return linear_margin(scores, unit, target)
        raise NotImplementedError(
            "repulsive head: no certified margin for loss='distance' with metric='linf' (the L∞ nearest-prototype "
            "boundary is not a hyperplane); use metric='l2' or loss='cosine' to certify"
        )
