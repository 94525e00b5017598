"""Certified robustness: per test point a radius within which no L2 perturbation changes the prediction.

Global bound (Khalid & Paaßen 2025; for the ``linear`` head the multi-class margin bound of Hein &
Andriushchenko 2017 with a global Lipschitz constant): the head certifies a radius ``m(z)`` in
embedding space (``Head.margin``: the distance from ``z`` to the decision boundary of the predicted
class), and the embedding is ``L``-Lipschitz from pixels (``robustproto.lipschitz_upper_bound``, the
normalisation inside the model included), so no perturbation with ``‖δ‖₂ < m(z)/L`` moves ``z`` across
that boundary: radius ``m(z)/L``.

Local bound (Hein & Andriushchenko 2017, Theorem 2.1 with Proposition 2.2) for a one-hidden-layer
network ``f(x) = W σ(U x + b) + c`` with ``σ'`` increasing (the ``mlp`` backbone, softplus, with a linear
neck and/or the ``linear`` head, which compose to one ``W``): the guarantee is
``max_R min{ min_{j≠c} (f_c − f_j)(x) / max_{y∈B(x,R)} ‖∇f_c(y) − ∇f_j(y)‖, R }``; Proposition 2.2 bounds
the denominator, which grows with ``R``, so the maximum is where the two terms cross, found by a
bisection over ``R`` per point. Both radii are certificates; the reported radius is the larger.

Misclassified points get radius 0.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import torch
from torch import nn

__all__ = ["certify", "DEFAULT_RADII"]

DEFAULT_RADII = (0.1, 0.25, 0.5, 1.0, 1.5, 2.0)
_SAFETY = 1.0 + 1e-4  # float32 rounding in the local bound's quadratic forms


def _head_margin(model: nn.Module, z: torch.Tensor) -> torch.Tensor:
    try:
        return model.head.margin(z)
    except NotImplementedError as exc:  # a head without margin: one clear line, not a traceback
        raise ValueError(str(exc).splitlines()[0]) from None


def certify(
    model: nn.Module,
    data,
    norm: str = "L2",
    radii: Sequence[float] = DEFAULT_RADII,
    n_samples: int | None = None,
    batch_size: int = 256,
    local: bool = True,
    bisection_steps: int = 20,
    model_name: str | None = None,
    dataset_name: str | None = None,
) -> dict[str, Any]:
    """Certified L2 radii of a :class:`~robustproto.ProtoModel` on ``data`` (as :func:`robustproto.evaluate` takes it).

    Returns a report: ``radii`` (one per point, in data order, 0 for misclassified), ``radii_global``,
    ``radii_local`` (``None`` unless the model is a one-hidden-layer softplus network with a linear
    head), ``lipschitz_constant``, ``certified_accuracy`` ``{radius: fraction of points correct with
    radius ≥ it}``, ``median_radius`` (over all points), ``clean_accuracy``.
    """
    from .evaluate import _collect, _median, _model_name, normalize_norm
    from .lipschitz import lipschitz_upper_bound

    if normalize_norm(norm) != "L2":
        raise ValueError(f"certify: norm '{norm}' is not supported; the certificates are L2 radii (--norm L2)")
    for attr in ("head", "embed", "normalize"):
        if not hasattr(model, attr):
            raise ValueError(f"certify needs a robustproto ProtoModel (head, embed, normalize), got {type(model).__name__}")
    radii = sorted({float(r) for r in radii})
    x, y = _collect(data, n_samples, batch_size)
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
        lipschitz = float(lipschitz_upper_bound(model, tuple(x.shape[1:])))
        preds, margins = [], []
        with torch.no_grad():
            for chunk in x.split(batch_size):
                z = model.embed(chunk.to(device))
                preds.append(model.head(z).argmax(1).cpu())
                margins.append(_head_margin(model, z).double().cpu())
        pred, margin = torch.cat(preds), torch.cat(margins)
        correct = pred == y
        radius_global = torch.where(correct, margin / lipschitz, torch.zeros_like(margin))
        radius_local = None
        if local:
            net = _one_hidden_layer(model, x[:batch_size].to(device))
            if net is not None:
                radius_local = torch.cat([_local_radii(net, chunk.to(device), bisection_steps).cpu()
                                          for chunk in x.split(batch_size)])
                radius_local = torch.where(correct, radius_local, torch.zeros_like(radius_local))
    finally:
        for m, training in modes.items():
            m.training = training
    radius = radius_global if radius_local is None else torch.maximum(radius_global, radius_local)
    n = len(y)
    return {
        "model": model_name or _model_name(model),
        "dataset": dataset_name or "tensors",
        "n_samples": n,
        "norm": "L2",
        "clean_accuracy": float(correct.double().mean()),
        "method": "global Lipschitz bound" + (" and local cross-Lipschitz bound (Hein & Andriushchenko 2017, "
                                              "Thm 2.1 + Prop 2.2), the larger" if radius_local is not None else ""),
        "lipschitz_constant": lipschitz,
        "certified_accuracy": {f"{r:g}": float((correct & (radius >= r)).double().mean()) for r in radii},
        "median_radius": _median(radius),
        "median_radius_global": _median(radius_global),
        "median_radius_local": _median(radius_local) if radius_local is not None else None,
        "radii": radius.tolist(),
        "radii_global": radius_global.tolist(),
        "radii_local": radius_local.tolist() if radius_local is not None else None,
    }


class _OneHiddenLayer:
    """``f(x) = W σ(U x + b) + c`` read off a ProtoModel, with the normalisation folded into ``U`` and ``b``."""

    def __init__(self, model: nn.Module, hidden: nn.Linear, act: nn.Softplus, weight: torch.Tensor):
        self.model, self.hidden, self.act = model, hidden, act
        std = model.normalize.std.flatten().double()
        pixels = hidden.in_features // len(std)
        per_input = std.repeat_interleave(pixels)  # (x − mean)/std per channel, flattened channel-major
        self.u = hidden.weight.detach().double() / per_input  # (H, d) in pixel units
        self.w = weight.double()  # (K, H)
        self.gram = self.u @ self.u.t()
        self.row_norms = self.u.norm(dim=1)

    def act_derivative(self, t: torch.Tensor) -> torch.Tensor:
        """σ' of torch's softplus: sigmoid(βt), exactly 1 where it switches to the identity; increasing."""
        beta, threshold = self.act.beta, self.act.threshold
        return torch.where(beta * t > threshold, torch.ones_like(t), torch.sigmoid(beta * t))


def _one_hidden_layer(model: nn.Module, probe: torch.Tensor) -> _OneHiddenLayer | None:
    """The model as ``W σ(U x + b) + c`` if it is one (checked numerically on ``probe``), else ``None``."""
    backbone, head, neck = model.backbone, model.head, model.neck
    hidden, act, fc = getattr(backbone, "hidden", None), getattr(backbone, "act", None), getattr(head, "fc", None)
    if not (isinstance(hidden, nn.Linear) and type(act) is nn.Softplus and isinstance(fc, nn.Linear)):
        return None
    if not isinstance(neck, (nn.Identity, nn.Linear)):
        return None
    weight = fc.weight if isinstance(neck, nn.Identity) else fc.weight @ neck.weight
    with torch.no_grad():
        features = act(hidden(model.normalize(probe).flatten(1)))
        if not torch.allclose(backbone(model.normalize(probe)), features, rtol=1e-4, atol=1e-5):
            return None
        if not torch.allclose(model(probe), head(neck(features)), rtol=1e-4, atol=1e-5):
            return None
    return _OneHiddenLayer(model, hidden, act, weight.detach())


@torch.no_grad()
def _local_radii(net: _OneHiddenLayer, x: torch.Tensor, steps: int) -> torch.Tensor:
    """Theorem 2.1 with Proposition 2.2 per point (radius of the predicted class), bisection over R."""
    pre = net.hidden(net.model.normalize(x).flatten(1)).double()  # ⟨u_r, x⟩ + b_r
    scores = net.model(x).double()
    pred = scores.argmax(1)
    out = torch.zeros(len(x), dtype=torch.float64, device=x.device)
    k = scores.shape[1]
    for c in pred.unique().tolist():
        idx = (pred == c).nonzero().squeeze(1)
        a = pre[idx]
        gaps, plus, minus = [], [], []
        for j in range(k):
            if j == c:
                continue
            v = net.w[j] - net.w[c]
            beta = v[:, None] * v[None, :] * net.gram
            plus.append(beta.clamp_min(0))
            minus.append(beta.clamp_max(0))
            gaps.append(scores[idx, c] - scores[idx, j])

        def guarantee(radius: torch.Tensor) -> torch.Tensor:
            """min_j (f_c − f_j) / (Prop. 2.2 bound at R = radius), per point."""
            spread = radius[:, None] * net.row_norms[None, :]
            hi, lo = net.act_derivative(a + spread), net.act_derivative(a - spread)
            best = torch.full_like(radius, math.inf)
            for gap, bp, bm in zip(gaps, plus, minus):
                squared = ((hi @ bp) * hi).sum(1) + ((lo @ bm) * lo).sum(1)
                bound = squared.clamp_min(0).sqrt() * _SAFETY
                ratio = torch.where(bound > 0, gap.clamp_min(0) / bound, torch.full_like(gap, math.inf))
                best = torch.minimum(best, ratio)
            return best

        # g(R) falls with R and min{g(R), R} peaks where g(R) = R ≤ g(0): bisection on [0, g(0)]
        lo_r = torch.zeros(len(idx), dtype=torch.float64, device=x.device)
        hi_r = guarantee(lo_r).clamp(max=math.sqrt(x[0].numel()))  # never beyond the diameter of [0, 1]^d
        for _ in range(steps):
            mid = (lo_r + hi_r) / 2
            ok = guarantee(mid) >= mid
            lo_r = torch.where(ok, mid, lo_r)
            hi_r = torch.where(ok, hi_r, mid)
        out[idx] = lo_r
    return out


def certify_summary(report: Mapping[str, Any]) -> str:
    """One line for the CLI."""
    acc = ", ".join(f"{r}: {v:.3f}" for r, v in report["certified_accuracy"].items())
    return (f"clean accuracy {report['clean_accuracy']:.4f}; median certified L2 radius {report['median_radius']:.4g}; "
            f"certified accuracy at radius {acc}")
