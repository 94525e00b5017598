"""``gmlvq``: Generalized Matrix LVQ, GLVQ with a learned linear map Ω before the distance."""

from __future__ import annotations

import math

import torch
from torch import nn

from robustproto import squared_euclidean, working_dtype
from robustproto.errors import UsageError

from .glvq import GLVQ


class GMLVQ(GLVQ):
    """Generalized Matrix LVQ (Schneider, Biehl & Hammer 2009) as in Saralajew et al. 2019, Eq. 4:
    ``d(z, w) = ‖Ω(z − w)‖²`` with a relevance matrix ``Ω`` of shape ``(rank, embed_dim)``
    learned with the prototypes.

    ``Ω`` starts as a scaled identity with Frobenius norm 1 and is renormalised to Frobenius
    norm 1 after every optimiser step (``after_step``), as in the paper. Distances are
    computed as squared Euclidean distances of ``zΩᵀ`` and ``wΩᵀ``, in float32.

    Options: ``rank`` (default ``embed_dim``), and those of :class:`GLVQ`.

    ``margin(z)``: ``g(z) = ‖Ω(z − w⁻)‖² − ‖Ω(z − w⁺)‖²`` is affine in ``z`` with gradient
    ``2ΩᵀΩ(w⁺ − w⁻)``, so ``min_{w⁻} g / ‖∇g‖`` is the exact L2 distance to the decision
    boundary with one prototype per class and a certified lower bound with several.
    """

    def __init__(self, embed_dim: int, num_classes: int, *, rank: int | None = None, **glvq_options):
        super().__init__(embed_dim, num_classes, **glvq_options)
        rank = embed_dim if rank is None else int(rank)
        if rank < 1:
            raise UsageError(f"rank must be at least 1, got {rank}")
        self.rank = rank
        self.omega = nn.Parameter(torch.eye(rank, embed_dim) / math.sqrt(min(rank, embed_dim)))

    def _project(self, v: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=v.device.type, enabled=False):
            dtype = working_dtype(v, self.omega)
            return v.to(dtype) @ self.omega.to(dtype).t()

    def distances(self, z: torch.Tensor) -> torch.Tensor:
        return squared_euclidean(self._project(z), self._project(self.prototypes))

    @torch.no_grad()
    def after_step(self) -> None:
        self.omega.div_(self.omega.norm().clamp_min(1e-12))

    def margin_gradient_points(self) -> torch.Tensor:
        with torch.autocast(device_type=self.omega.device.type, enabled=False):
            dtype = working_dtype(self.prototypes, self.omega)
            omega = self.omega.to(dtype)
            return self.prototypes.to(dtype) @ (omega.t() @ omega)
