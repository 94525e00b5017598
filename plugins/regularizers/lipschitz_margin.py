"""``lipschitz-margin``: trains the certified radius ``margin / L`` of any head with a class margin."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from robustproto import RegularizedModel, Regularizer, StepContext
from robustproto.errors import UsageError
from robustproto.lipschitz import LipschitzEstimate

BOUNDS = ("global", "local")


def log_hinge(q: torch.Tensor, floor: float) -> torch.Tensor:
    """``−log q`` for ``floor ≤ q < 1``, 0 for ``q ≥ 1``, continued linearly below ``floor`` (``−log floor +
    (floor − q)/floor``, the tangent at ``floor``): convex, once differentiable, finite for ``q ≤ 0``."""
    log_part = -torch.log(q.clamp(min=floor, max=1.0))
    return log_part + F.relu(floor - q) / floor


class LipschitzMargin(Regularizer):
    """``weight · mean h(r(x) / radius)`` with ``r(x) = m_y(φ(x)) / L``, the certified L2 radius of ``x``, and ``h`` a
    logarithmic hinge (:func:`log_hinge`): 0 once the radius is reached, ``−log(r/radius)`` below it.

    What protects a point is the ratio of its margin in embedding space to the Lipschitz constant of the
    embedding: ``m_y(z)`` (``Head.class_margin``) is a certified distance from ``z = φ(x)`` to the boundary of
    its label's region, ``L`` bounds ``‖φ(x) − φ(x')‖ / ‖x − x'‖``, so no ``‖δ‖₂ < m_y/L`` changes the
    prediction (Khalid & Paaßen 2025's theorem; Tsuzuku et al. 2018 and GloRo, Leino et al. 2021, train the
    same ratio for linear heads). The hinge asks every training point for a radius of ``radius`` pixels,
    and pushes misclassified points (``m_y ≤ 0``) across the boundary as well.

    Why logarithmic. At initialisation ``r`` is a few thousandths of a pixel on MNIST (``kp_cnn_mnist``: ``L`` ≈
    11–40 against local gains of ≈ 0.5), so a plain hinge ``1 − r/radius`` has a gradient ``r/radius`` times
    that of ``log r``: a 200th of the head's own scale-free loss, which then sets the embedding alone (measured:
    the median radius stayed below 0.006 px over 3 epochs, at weight 1 and 10). ``−log(r/radius)`` moves
    ``log m − log L`` at the same rate whatever ``r``; below ``floor·radius`` (and for misclassified points,
    ``r ≤ 0``) it continues as its tangent, a hinge with slope ``1/(floor·radius)``, finite for any ``r``.

    Why rescaling cannot meet it (unlike an absolute Lipschitz target such as ``lipschitz:L=1``): replace
    ``φ`` by ``cφ`` for any ``c > 0`` and move the head with it (prototypes ``cw``; for a linear head ``W/c``,
    which leaves every score unchanged). Squared distances scale by ``c²`` and the bisector distance
    ``(d⁻ − d⁺) / (2‖w⁺ − w⁻‖)`` by ``c²/c = c``; a linear head's ``(f_y − f_j) / ‖w_y − w_j‖`` keeps its
    numerator and loses ``1/c`` in the denominator: ``m_y`` scales by ``c``. Every factor of ``L`` but the
    last layer's is unchanged and that one scales by ``c``: ``L`` scales by ``c``. So ``r = m_y / L`` and the
    penalty are the same for every ``c``: only a change of the decisions in pixel space moves them.

    The bound ``L`` (``bound``):

    - ``global`` (default): :class:`robustproto.lipschitz.LipschitzEstimate`, the bound ``robustproto certify``
      uses (:func:`robustproto.lipschitz_upper_bound`, the same graph walk and rules) with each layer's exact
      norm replaced by a power-iteration estimate whose vectors persist between steps, differentiable in the
      weights: training and certificate agree up to the power iteration's convergence (from below) and the
      certificate's conv bound (2–8 % above a 3×3 convolution's norm). One iteration per step; about one
      single-image forward and backward pass of the embedding per step.
    - ``local``: per sample an estimate of the local gain ``‖J_φ(x)‖₂`` (``iterations`` power-iteration
      steps in embedding space from a random direction, each a vector-Jacobian and a Jacobian-vector product,
      then ``‖Jᵀu‖`` differentiable through a double backward). Smaller than any global bound, so the radius
      it trains is not a certificate: use it to train, and read the certificate from ``robustproto certify``.
      It takes input gradients on the step's graph (``needs_input_grad``): BatchNorm in training mode adds
      the paths through the batch statistics (see ``cross-lipschitz``).

    Options:
        weight: factor of the penalty (1.0; the hinge is unitless: ``−log floor`` ≈ 4.6 at ``r = floor·radius``).
        radius: the certified L2 radius asked of every point, in pixel units (1.0). GloRo trains at a
            radius a little above the one it certifies (0.45 for 0.3 and 1.75 for 1.58 on MNIST).
        bound: ``global`` or ``local``, see above.
        iterations: power-iteration steps per training step (1 for ``global``: the vectors persist; 2 for
            ``local``, whose vectors start afresh per sample).
        floor: where the logarithm turns into its tangent, as a share of ``radius`` (0.01).

    Heads: any head with ``supports_class_margin`` (built in: ``linear``, ``glvq``, ``gmlvq``, ``repulsive``
    with ``metric = l2`` or ``loss = cosine``). ``gtlvq`` has none: its tangent distances have a different
    metric per prototype, so the difference of two is quadratic in ``z`` and no closed-form distance to its
    zero set exists; the L∞ ``repulsive`` head's boundary is piecewise linear with pieces that depend on the
    coordinate attaining the maximum. Both are refused when the regularizer attaches.

    The margin and ratio are computed in float32 with autocast off. ``metrics()``: ``radius_median``, the
    median over the epoch's points of ``max(r, 0)`` (with the training-time ``L``), ``reached``, the share of
    points with ``r ≥ radius``, and ``L``, the last estimate (``global``) or the epoch's mean local gain.
    """

    def __init__(self, weight: float = 1.0, radius: float = 1.0, bound: str = "global", iterations: int | None = None,
                 floor: float = 0.01):
        super().__init__()
        if bound not in BOUNDS:
            raise UsageError(f"lipschitz-margin: bound must be one of {', '.join(BOUNDS)}, got {bound!r}")
        if not weight >= 0:
            raise UsageError(f"lipschitz-margin: weight must be >= 0, got {weight}")
        if not radius > 0:
            raise UsageError(f"lipschitz-margin: radius must be > 0 (pixel units, L2), got {radius}")
        if not 0 < floor < 1:
            raise UsageError(f"lipschitz-margin: floor must be in (0, 1), got {floor}")
        iterations = (1 if bound == "global" else 2) if iterations is None else iterations
        if not isinstance(iterations, int) or iterations < 1:
            raise UsageError(f"lipschitz-margin: iterations must be an integer >= 1, got {iterations!r}")
        self.weight, self.radius, self.bound_kind, self.iterations = float(weight), float(radius), bound, iterations
        self.floor = float(floor)
        self.needs_input_grad = bound == "local"
        self.estimate: LipschitzEstimate | None = None  # built at the first step, at the data's input size
        self._loaded: dict[str, torch.Tensor] = {}  # the estimate's vectors from a checkpoint, until it is built
        self._model: list[RegularizedModel] = []  # a list: the model is not a submodule of the regularizer
        self._radii: list[torch.Tensor] = []
        self._gains: list[torch.Tensor] = []

    def attach(self, model: RegularizedModel) -> None:
        head = model.head
        if not getattr(head, "supports_class_margin", False):
            raise UsageError(f"lipschitz-margin: head '{type(head).__name__}' has no class margin "
                             "(supports_class_margin is False); use linear, glvq, gmlvq, or repulsive with metric l2 "
                             "or loss cosine")
        self._model = [model]

    def _global_bound(self, input_size: tuple[int, ...]) -> torch.Tensor:
        if not self._model:
            raise RuntimeError("lipschitz-margin: attach(model) was not called before training")
        if self.estimate is None or tuple(self.estimate.input_size) != tuple(input_size):
            # traced at the size the data has; keep every vector that still fits (a layer whose input size is
            # unchanged, or one loaded from a checkpoint before the first step)
            fresh = LipschitzEstimate(self._model[0], input_size, self.iterations)
            kept = {**self._loaded, **(dict(self.estimate.named_buffers()) if self.estimate is not None else {})}
            for name, vector in fresh.named_buffers():
                if name in kept and kept[name].shape == vector.shape:
                    vector.copy_(kept[name])
            self.estimate, self._loaded = fresh, {}
        return self.estimate()

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # a checkpoint taken after the first step holds the estimate's vectors, but the estimate is built at the
        # first step (it needs the data's input size): keep them until then
        if self.estimate is None:
            for key in [k for k in state_dict if k.startswith(prefix + "estimate.")]:
                self._loaded[key[len(prefix + "estimate."):]] = state_dict.pop(key)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _local_gain(self, ctx: StepContext) -> torch.Tensor:
        """Per sample ``‖Jᵀu‖`` with ``u`` after ``iterations`` power steps on ``J Jᵀ``: differentiable, ≤ ‖J‖₂."""
        z = ctx.z.float()
        u = F.normalize(torch.randn_like(z), dim=1)
        for _ in range(self.iterations):
            u = u.detach().requires_grad_(True)
            (back,) = torch.autograd.grad(z, ctx.x, u, retain_graph=True, create_graph=True)  # Jᵀu
            # J·(Jᵀu) as the derivative in u of ⟨Jᵀu, w⟩ at w = Jᵀu (the double-vjp trick: no forward mode needed)
            (forward,) = torch.autograd.grad(back, u, back.detach(), retain_graph=True)
            u = F.normalize(forward.detach().flatten(1), dim=1).view_as(z)
        (back,) = torch.autograd.grad(z, ctx.x, u, retain_graph=True, create_graph=True)
        return back.flatten(1).float().norm(dim=1)

    def penalty(self, ctx: StepContext) -> torch.Tensor:
        with torch.autocast(ctx.x.device.type, enabled=False):
            margin = ctx.model.head.class_margin(ctx.z.float(), ctx.y).float()
            if self.bound_kind == "global":
                gain = self._global_bound(tuple(ctx.x.shape[1:]))
            else:
                gain = self._local_gain(ctx)
            radius = margin / gain.clamp_min(1e-12)  # a dead embedding (L = 0) must not divide by zero
            excess = log_hinge(radius / self.radius, self.floor)
        self._radii.append(radius.detach().clamp_min(0).cpu())
        self._gains.append(gain.detach().float().flatten().cpu())
        return self.weight * excess.mean()

    def metrics(self) -> dict[str, float]:
        if not self._radii:
            return {}
        radii, gains = torch.cat(self._radii), torch.cat(self._gains)
        last_global = self.bound_kind == "global"
        self._radii, self._gains = [], []
        return {"radius_median": float(radii.median()), "reached": float((radii >= self.radius).double().mean()),
                "L": float(gains[-1] if last_global else gains.mean())}


__all__ = ["BOUNDS", "LipschitzMargin"]
