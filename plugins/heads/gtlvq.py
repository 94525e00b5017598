"""``gtlvq``: Generalized Tangent LVQ, prototypes that are affine subspaces."""

from __future__ import annotations

import torch
from torch import nn

from robustproto import squared_euclidean
from robustproto.errors import UsageError

from ._geometry import orthonormal_basis
from .glvq import GLVQ, INIT_SEED


class GTLVQ(GLVQ):
    """Generalized Tangent LVQ (Saralajew & Villmann 2016) as in Saralajew et al. 2019, Eq. 5: each
    prototype is an affine subspace ``w + Wθ`` with an orthonormal basis ``W`` (embed_dim × r),
    and ``d(z, (w, W)) = min_θ ‖z − w − Wθ‖² = ‖z − w‖² − ‖Wᵀ(z − w)‖²``.

    The distance is computed from ``‖z − w‖²`` and ``zᵀW`` of all tangents in one matmul
    (never a batch × prototypes × embed_dim tensor), in float32, clamped at 0. ``after_step``
    re-orthonormalises every ``W`` (QR), so the formula stays the projection distance.

    Options: ``subspace_dim`` r (default 12, the paper's; clipped to ``embed_dim − 1``, since
    a subspace of the whole space is at distance 0 from everything), and those of :class:`GLVQ`.

    ``init_from_data``: the prototypes as in GLVQ (class means or per-class k-means), then
    each ``W`` from the SVD of the centred samples of its class (of its k-means cluster with
    several prototypes per class), completed with random orthonormal directions when there
    are too few samples.

    No ``margin`` and no ``class_margin``: the tangent distance is not a quadratic form with one
    shared metric (each prototype projects out its own subspace), so the difference of two distances
    is a quadratic in ``z``, its zero set a quadric, and no closed-form distance to it bounds the radius.
    """

    supports_margin = False  # the tangent distance is not affine in z: no certified margin (see above)
    supports_class_margin = False

    def margin(self, z: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError("gtlvq gives no certified margin: the tangent distance is not affine in z")

    def class_margin(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError("gtlvq gives no class margin: the tangent distance is not affine in z")

    def __init__(self, embed_dim: int, num_classes: int, *, subspace_dim: int = 12, **glvq_options):
        super().__init__(embed_dim, num_classes, **glvq_options)
        if int(subspace_dim) < 1 or embed_dim < 2:
            raise UsageError(f"GTLVQ needs subspace_dim >= 1 and embed_dim >= 2, got {subspace_dim} and {embed_dim}")
        self.subspace_dim = min(int(subspace_dim), embed_dim - 1)
        random = torch.randn(len(self.prototypes), embed_dim, self.subspace_dim)
        self.tangents = nn.Parameter(torch.linalg.qr(random).Q)

    def distances(self, z: torch.Tensor) -> torch.Tensor:
        num_prototypes, dim, rank = self.tangents.shape
        with torch.autocast(device_type=z.device.type, enabled=False):
            z, w, tangents = z.float(), self.prototypes.float(), self.tangents.float()
            # Wᵀ(z − w) for every prototype: (B, P·r) from one matmul, minus the (P, r) offsets Wᵀw
            all_tangents = tangents.permute(1, 0, 2).reshape(dim, num_prototypes * rank)
            projected = (z @ all_tangents).view(-1, num_prototypes, rank)
            projected = projected - torch.einsum("pn,pnr->pr", w, tangents)
            d = squared_euclidean(z, w) - projected.pow(2).sum(2)
        return d.clamp_min(0.0)

    @torch.no_grad()
    def after_step(self) -> None:
        q, r = torch.linalg.qr(self.tangents.float())
        # signs of R's diagonal folded back, so each basis vector stays where the optimiser left it
        signs = torch.sign(torch.diagonal(r, dim1=1, dim2=2))
        signs = torch.where(signs == 0, torch.ones_like(signs), signs)
        self.tangents.copy_(q * signs.unsqueeze(1))

    @torch.no_grad()
    def init_from_data(self, z: torch.Tensor, y: torch.Tensor) -> None:
        super().init_from_data(z, y)
        z = z.detach().float().to(self.prototypes.device)
        y = y.to(self.prototypes.device)
        generator = torch.Generator().manual_seed(INIT_SEED + 1)
        ppc = self.prototypes_per_class
        for c in range(self.num_classes):
            members = z[y == c]
            if not len(members):
                continue
            centres = self.prototypes[c * ppc:(c + 1) * ppc].float()
            cluster = squared_euclidean(members, centres).argmin(1)
            for k in range(ppc):
                centred = members[cluster == k] - centres[k]
                basis = orthonormal_basis(centred, self.subspace_dim, generator)
                self.tangents[c * ppc + k] = basis.to(self.tangents.dtype)

