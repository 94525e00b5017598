"""Geometry shared by the built-in heads: exact margins of linear and nearest-prototype rules, k-means, bases."""

from __future__ import annotations

import torch

from robustproto import affine_margin, squared_euclidean


def pairwise_l2(v: torch.Tensor) -> torch.Tensor:
    """Exact L2 distances ``(P, P)`` between rows of ``v`` in its dtype, at least float32 (also under autocast).

    Differences are taken directly (not ``‖a‖² − 2a·b + ‖b‖²``) because near-duplicate rows
    must give a near-zero distance, not the rounding error of two large squared norms.
    """
    v = v.to(torch.promote_types(v.dtype, torch.float32))
    with torch.autocast(device_type=v.device.type, enabled=False):
        return torch.cdist(v, v, compute_mode="donot_use_mm_for_euclid_dist")


def linear_margin(scores: torch.Tensor, weight: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
    """Exact L2 distance from each ``z`` to the decision boundary of ``argmax(scores)``, ``scores = z Wᵀ + b``.

    ``min_{j≠c} (f_c − f_j) / ‖w_c − w_j‖`` with ``c`` the predicted class and ``w_k`` the rows of ``weight``;
    with ``target`` (B,) ``c`` is that class instead, and the distance is signed (negative past the boundary).
    """
    chosen = scores.argmax(1, keepdim=True) if target is None else target.unsqueeze(1)
    g = (scores.gather(1, chosen) - scores).scatter(1, chosen, float("inf"))  # f_c − f_c is no boundary
    return affine_margin(g, pairwise_l2(weight)[chosen.squeeze(1)], signed=target is not None)


def kmeans(x: torch.Tensor, k: int, generator: torch.Generator, iterations: int = 10) -> torch.Tensor:
    """``k`` centres of the rows of ``x`` (m, n): k-means++ seeding, then Lloyd iterations.

    k-means++ (each new start drawn with probability ∝ squared distance to the chosen ones)
    avoids starting two centres in one cluster. With fewer distinct samples than centres
    some start on the same sample; a centre whose cluster empties keeps its position, so
    the result never contains NaN.
    """
    if k == 1:
        return x.mean(0, keepdim=True)
    first = torch.randint(x.shape[0], (1,), generator=generator)
    centres = x[first.to(x.device)]
    for _ in range(k - 1):
        weights = squared_euclidean(x, centres).amin(1).cpu()
        weights = weights if weights.sum() > 0 else torch.ones_like(weights)  # all samples already chosen
        pick = torch.multinomial(weights, 1, generator=generator)
        centres = torch.cat([centres, x[pick.to(x.device)]])
    for _ in range(iterations):
        assign = squared_euclidean(x, centres).argmin(1)
        counts = torch.bincount(assign, minlength=k)
        sums = torch.zeros_like(centres).index_add_(0, assign, x)
        filled = counts > 0
        centres[filled] = sums[filled] / counts[filled].unsqueeze(1).to(x.dtype)
    return centres


def orthonormal_basis(x: torch.Tensor, rank: int, generator: torch.Generator) -> torch.Tensor:
    """An ``(n, rank)`` orthonormal basis led by the principal directions of the rows of ``x`` (m, n).

    ``x`` is already centred. When it spans fewer than ``rank`` directions (few samples) the
    basis is completed with random orthonormal directions.
    """
    n = x.shape[1]
    principal = torch.linalg.svd(x, full_matrices=False).Vh.t() if x.shape[0] else x.new_zeros(n, 0)
    filler = torch.randn(n, rank, generator=generator).to(x)
    # QR keeps the span of the leading columns: the data directions come first, random ones fill up
    q = torch.linalg.qr(torch.cat([principal[:, :rank], filler], dim=1)).Q
    return q[:, :rank]


def nearest_prototype_margin(distances: torch.Tensor, labels: torch.Tensor, gradient_points: torch.Tensor,
                             target: torch.Tensor | None = None) -> torch.Tensor:
    """L2 distance from each ``z`` to the decision boundary of a nearest-prototype classifier.

    For distances ``d(z, w) = ‖Ω(z − w)‖²`` (Ω = I: squared Euclidean) the difference
    ``g(z) = d(z, w⁻) − d(z, w⁺)`` is affine in ``z`` with gradient ``2 ΩᵀΩ (w⁺ − w⁻)``, so the
    distance to the bisector of the nearest prototype ``w⁺`` and a wrong-class prototype
    ``w⁻`` is ``g / ‖∇g‖``; the minimum over ``w⁻`` is returned. Reaching another class
    means crossing one of these bisectors, so this is a lower bound of the true radius; it
    is exact with one prototype per class (the boundary of the Voronoi cell of ``w⁺`` is
    then the class boundary), up to float32 rounding.

    Args:
        distances: ``(B, P)`` distances ``d(z, w_p)``.
        labels: ``(P,)`` class of each prototype.
        gradient_points: ``(P, n)`` the points ``ΩᵀΩ w_p`` (the prototypes for Ω = I).
        target: ``(B,)`` a class per ``z``: ``w⁺`` is then the nearest prototype of that class, not the
            nearest of all, and the distance is signed (negative where ``z`` is past a bisector), the form a
            training penalty hinges on. With one prototype per class and ``z`` classified ``target`` it is the
            distance above; otherwise a bound with the sign of "classified as ``target``".
    """
    if target is None:
        nearest = distances.argmin(1)
    else:
        nearest = distances.masked_fill(labels.unsqueeze(0) != target.unsqueeze(1), float("inf")).argmin(1)
    chosen = labels[nearest]
    g = distances - distances.gather(1, nearest.unsqueeze(1))
    g = g.masked_fill(labels.unsqueeze(0) == chosen.unsqueeze(1), float("inf"))  # same class: no boundary
    grad_norm = 2.0 * pairwise_l2(gradient_points)[nearest]
    return affine_margin(g, grad_norm, signed=target is not None)
