"""``glvq``: Generalized LVQ, prototypes compared by squared Euclidean distance."""

from __future__ import annotations

import torch
from torch import nn

from robustproto import Head, squared_euclidean
from robustproto.errors import UsageError

from ._geometry import kmeans, nearest_prototype_margin

ACTIVATIONS = ("identity", "sigmoid")
INIT_SEED = 0  # k-means starts and random tangents of init_from_data: the same data gives the same init


class GLVQ(Head):
    """Generalized LVQ (Sato & Yamada 1996) as evaluated by Saralajew, Holdijk, Rees & Villmann 2019,
    "Robustness of generalized learning vector quantization models against adversarial attacks".

    ``prototypes_per_class`` prototypes per class, stored class-major (prototype ``p`` belongs
    to class ``p // prototypes_per_class``). Class score ``f_j(z) = −min_{c(w)=j} d(z, w)``;
    the prediction is the class of the nearest prototype. The loss is the mean of
    ``φ(μ)``, ``μ = (d⁺ − d⁻) / (d⁺ + d⁻) ∈ [−1, 1]`` (their Eq. 3), with ``d⁺`` the distance to
    the nearest prototype of the correct class and ``d⁻`` to the nearest of a wrong class;
    ``μ = 0`` when both are 0. ``φ`` is the identity (the paper's choice) or
    ``sigmoid(beta · μ)``.

    ``detach_denominator`` keeps μ's value and treats its denominator ``d⁺ + d⁻`` as a constant in the
    gradient, which is then ``(∇d⁺ − ∇d⁻) / (d⁺ + d⁻)``. Why: GLVQ's own gradient has a part that only
    shrinks |μ|. For a misclassified point (μ > 0) μ falls towards 0 when the embedding moves away from every
    prototype at once, so while most training points are misclassified (early in training a deep backbone on
    a hard data set) the backbone can lower the loss by carrying all embeddings far from the prototypes, where
    |μ| and its gradients vanish (measured on CIFAR-10: ``benchmarks/glvq_escape.py``). Without the
    denominator's part the gradient moves an embedding only along ``w⁻ − w⁺``, towards its own class.

    Distances are squared Euclidean in float32, also under autocast. GMLVQ and GTLVQ
    subclass this head and override :meth:`distances`.

    Options:
        prototypes_per_class: prototypes per class (default 1).
        activation: ``"identity"`` or ``"sigmoid"``.
        beta: slope of the sigmoid activation.
        detach_denominator: μ's denominator held constant in the gradient (default False: GLVQ's gradient).

    ``init_from_data`` places the prototypes at the class means (one per class) or at the
    centres of a seeded per-class k-means; a class without samples keeps its init.
    ``margin(z)``, relative to the predicted class with ``w⁺`` the nearest prototype, is
    ``min_{w⁻} (‖z − w⁻‖² − ‖z − w⁺‖²) / (2‖w⁺ − w⁻‖)`` over wrong-class prototypes ``w⁻``:
    the exact L2 distance to the decision boundary with one prototype per class, a
    certified lower bound with several. ``class_margin(z, y)`` is the same bound with ``w⁺`` the
    nearest prototype of class ``y``, signed (negative where ``z`` is closer to another class).
    """

    def __init__(self, embed_dim: int, num_classes: int, *, prototypes_per_class: int = 1,
                 activation: str = "identity", beta: float = 1.0, detach_denominator: bool = False):
        super().__init__(embed_dim, num_classes)
        if num_classes < 2:
            raise UsageError(f"{type(self).__name__} needs at least 2 classes, got num_classes={num_classes}")
        if int(prototypes_per_class) < 1:
            raise UsageError(f"prototypes_per_class must be at least 1, got {prototypes_per_class}")
        if activation not in ACTIVATIONS:
            raise UsageError(f"activation must be one of {', '.join(ACTIVATIONS)}, got {activation!r}")
        if beta <= 0:
            raise UsageError(f"beta must be positive, got {beta}")
        if not isinstance(detach_denominator, bool):
            raise UsageError(f"detach_denominator must be true or false, got {detach_denominator!r}")
        self.prototypes_per_class = int(prototypes_per_class)
        self.detach_denominator = detach_denominator
        self.activation = activation
        self.beta = float(beta)
        num_prototypes = num_classes * self.prototypes_per_class
        self.prototypes = nn.Parameter(torch.randn(num_prototypes, embed_dim) * 0.01)
        self.register_buffer("prototype_labels", torch.arange(num_classes).repeat_interleave(self.prototypes_per_class),
                             persistent=False)

    def distances(self, z: torch.Tensor) -> torch.Tensor:
        """Float32 distances ``(B, P)`` from each embedding to each prototype."""
        return squared_euclidean(z, self.prototypes)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        d = self.distances(z)
        return -d.view(d.shape[0], self.num_classes, self.prototypes_per_class).amin(2)

    def mu(self, scores: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The relative distance difference ``μ (B,)`` of the scores of :meth:`forward`; negative when correct."""
        d = -scores.float()
        correct = nn.functional.one_hot(y, self.num_classes).bool()
        d_plus = d.gather(1, y.unsqueeze(1)).squeeze(1)
        d_minus = d.masked_fill(correct, float("inf")).amin(1)
        total = d_plus + d_minus
        # 0/0 (z on a prototype of each side) is a tie: μ = 0, with a zero instead of a NaN gradient
        safe_total = torch.where(total > 0, total, torch.ones_like(total))
        if self.detach_denominator:
            safe_total = safe_total.detach()
        return torch.where(total > 0, (d_plus - d_minus) / safe_total, torch.zeros_like(total))

    def loss(self, z: torch.Tensor, scores: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        mu = self.mu(scores, y)
        if self.activation == "sigmoid":
            mu = torch.sigmoid(self.beta * mu)
        return mu.mean()

    @torch.no_grad()
    def init_from_data(self, z: torch.Tensor, y: torch.Tensor) -> None:
        z = z.detach().float().to(self.prototypes.device)
        y = y.to(self.prototypes.device)
        generator = torch.Generator().manual_seed(INIT_SEED)
        prototypes = self.prototypes.view(self.num_classes, self.prototypes_per_class, self.embed_dim)
        for c in range(self.num_classes):
            members = z[y == c]
            if len(members):
                prototypes[c] = kmeans(members, self.prototypes_per_class, generator).to(prototypes.dtype)

    def margin_gradient_points(self) -> torch.Tensor:
        """``ΩᵀΩ w`` for every prototype ``w`` (here Ω = I), see :func:`nearest_prototype_margin`."""
        return self.prototypes

    def margin(self, z: torch.Tensor) -> torch.Tensor:
        return nearest_prototype_margin(self.distances(z), self.prototype_labels, self.margin_gradient_points())

    def class_margin(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return nearest_prototype_margin(self.distances(z), self.prototype_labels, self.margin_gradient_points(), y)
