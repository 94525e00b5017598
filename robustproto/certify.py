"""Certified robustness: per test point a radius within which no L2 perturbation changes the prediction.

Global bound (Khalid & Paaßen 2025; for the ``linear`` head the multi-class margin bound of Hein &
Andriushchenko 2017 with a global Lipschitz constant): the head certifies a radius ``m(z)`` in
embedding space (``Head.margin``: the distance from ``z`` to the decision boundary of the predicted
class), and the embedding is ``L``-Lipschitz from pixels (``robustproto.lipschitz_upper_bound``, the
normalisation inside the model included), so no perturbation with ``‖δ‖₂ < m(z)/L`` moves ``z`` across
that boundary: radius ``m(z)/L``.

Local bound (Hein & Andriushchenko 2017, Theorem 2.1 with Proposition 2.2) for a one-hidden-layer
network ``f(x) = W σ(U x + b) + c`` with ``σ'`` increasing (the ``mlp`` backbone, softplus, with a linear
neck and/or a head whose scores are affine in the embedding, ``Head.scores_affine_in_embedding``, which
compose to one ``W``): the guarantee is
``max_R min{ min_{j≠c} (f_c − f_j)(x) / max_{y∈B(x,R)} ‖∇f_c(y) − ∇f_j(y)‖, R }``; Proposition 2.2 bounds
the denominator, which grows with ``R``, so the maximum is where the two terms cross, found by a
bisection over ``R`` per point. Both radii are certificates; the reported radius is the larger.

Rounding. A certificate is a statement about the network in exact arithmetic with the model's weights,
so it is computed on a float64 copy of the model: the embedding, the head's margin (the built-in
``linear`` and ``glvq`` heads follow the dtype of ``z``, :func:`robustproto.squared_euclidean` keeps
float64) and every term of the local bound, with the normalisation folded into ``U`` and ``b``; the
Lipschitz constant carries its own rounding margin (:func:`robustproto.lipschitz_upper_bound`). What
remains is float64 rounding of the margins and of the local bound's quadratic forms: every radius is
divided by ``_SAFETY = 1 + 1e-4``, which covers it wherever a margin exceeds ~1e-12·D times the squared
norms it is computed from (``D`` the embedding size), i.e. everywhere but on the decision boundary. A point
is certified only where the float32 model (the one deployed and attacked) predicts its label and the
float64 copy predicts the same class. The float32 model's own rounding along the way to the radius is not
bounded; the relative allowance covers it where the score gap exceeds ~1e4 times the float32 rounding of
the scores. A head that computes its margin in a lower precision even on the float64 copy (it returns a
float32 margin) is not covered: the report warns.

Misclassified points, and points where the float32 and float64 predictions differ, get radius 0.

Tightness of ``L``. ``L`` is a product of per-layer norms, so it can exceed the embedding's true Lipschitz
constant by far, and every global radius is smaller by that factor. The report measures how much: the local
gain ``‖J(x)‖₂`` (``J`` the Jacobian of the embedding from pixels) at a test point is at most the true constant,
so the largest gain found (:func:`local_gains`, power iteration on ``JᵀJ`` per point) is a lower bound of it,
and ``bound_tightness = L / local_gain_max`` is an upper bound of the factor by which ``L`` overshoots (the true
constant lies between the two). Measured at initialisation (random weights, nothing trained; 64 random images in
[0, 1], 32 for the ResNet; 20 iterations, within 1.3 % of 60–100): ``flatten`` with a linear neck 1 (exact);
``mlp`` 1.3 (one layer: only the softplus slopes below 1 are lost); ``kp_cnn_mnist`` 22; ``kp_cnn_cifar`` 35, 29
with BatchNorm statistics of random images; ``resnet18_cifar`` 48 (67 with such statistics) as timm initialises
it, with the last BatchNorm of every residual branch at 0, and 2.5·10⁷ (5.6·10⁷) with those branches switched
on (``zero_init_last=False``). What makes ``L`` loose: the product over layers, which assumes every layer's
largest singular direction feeds the next one's (``kp_cnn_mnist`` with its ReLUs removed and average pooling,
a linear map, is still 14); the ReLU and max-pooling masks, which pass only part of a layer's input at any one
point (1.4× more on ``kp_cnn_mnist``); and residual sums, bounded by ``1 + Lip(branch)`` per block, a product
over the blocks although the branches' gains do not compound like that. BatchNorm adds nothing of its own: it is
folded into its convolution, exact per layer.
"""

from __future__ import annotations

import copy
import math
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from .config import DEFAULT_RADII, normalize_norm
from .errors import UsageError
from .evaluation import collect, median, model_name as name_of
from .lipschitz import lipschitz_upper_bound
from .utils import eval_mode, model_device

__all__ = ["DEFAULT_RADII", "OneHiddenLayer", "certify", "certify_summary", "local_gains", "local_radii",
           "one_hidden_layer"]

_SAFETY = 1.0 + 1e-4  # relative allowance for the float64 rounding of margins and bounds, see the module docstring


def certify(
    model: nn.Module,
    data,
    norm: str = "L2",
    radii: Sequence[float] = DEFAULT_RADII,
    n_samples: int | None = None,
    batch_size: int = 256,
    local: bool = True,
    bisection_steps: int = 20,
    tightness_samples: int = 256,
    tightness_iterations: int = 20,
    model_name: str | None = None,
    dataset_name: str | None = None,
) -> dict[str, Any]:
    """Certified L2 radii of a :class:`~robustproto.ProtoModel` on ``data`` (as :func:`robustproto.evaluate` takes it).

    Returns a report: ``radii`` (one per point, in data order; 0 where the model misclassifies the point
    or its float32 and float64 predictions differ), ``radii_global``, ``radii_local`` (``None`` unless the
    backbone is a one-hidden-layer softplus network and the head declares ``scores_affine_in_embedding``),
    ``lipschitz_constant``, ``certified_accuracy`` ``{radius: fraction of points correct with radius ≥
    it}``, ``median_radius`` (over all points), ``clean_accuracy`` (of the float32 model), ``warnings``
    (rounding the radii do not cover). ``model`` is left as found: every module's mode and every
    parameter and buffer (the float64 evaluation runs on a copy).

    How tight ``L`` is, on the first ``tightness_samples`` points (0: not measured, the three fields ``None``):
    ``local_gain_max`` and ``local_gain_median`` of the float32 model's local gains ``‖J(x)‖₂`` after
    ``tightness_iterations`` power iterations (:func:`local_gains`, seeded: identical calls give identical
    numbers, the global RNG is not drawn from), and ``bound_tightness = lipschitz_constant / local_gain_max``,
    ≥ 1 up to float32 rounding (1: the bound is attained; ∞ where every gain found is 0).
    """
    if normalize_norm(norm) != "L2":
        raise UsageError(f"certify: norm '{norm}' is not supported; the certificates are L2 radii (--norm L2)")
    for attr in ("head", "embed", "normalize"):
        if not hasattr(model, attr):
            raise UsageError(f"certify needs a robustproto ProtoModel (head, embed, normalize), got {type(model).__name__}")
    if not model.head.supports_margin:
        raise UsageError(f"head '{type(model.head).__name__}' gives no certified margin (supports_margin is False); "
                         "certify a model whose head has one (built in: linear, glvq, gmlvq, repulsive with metric l2 "
                         "or loss cosine)")
    radii = sorted({float(r) for r in radii})
    if any(not math.isfinite(r) or r < 0 for r in radii):
        raise UsageError(f"radii: must be finite and ≥ 0, got {radii}")
    if tightness_samples < 0:
        raise UsageError(f"tightness_samples: must be ≥ 0 (0: no tightness report), got {tightness_samples}")
    if tightness_iterations < 1:
        raise UsageError(f"tightness_iterations: must be ≥ 1, got {tightness_iterations}")
    x, y = collect(data, n_samples, batch_size)
    device = model_device(model)
    with eval_mode(model):
        lipschitz = float(lipschitz_upper_bound(model, tuple(x.shape[1:])))
        exact = copy.deepcopy(model).double()  # copied in eval mode; the original keeps its dtype and buffers
        preds, exact_preds, margins = [], [], []
        with torch.no_grad():
            for chunk in x.split(batch_size):
                chunk = chunk.to(device)
                preds.append(model(chunk).argmax(1).cpu())
                z = exact.embed(chunk.double())
                exact_preds.append(exact.head(z).argmax(1).cpu())
                margins.append(exact.head.margin(z).cpu())
        pred, exact_pred, margin = torch.cat(preds), torch.cat(exact_preds), torch.cat(margins)
        correct = pred == y
        certified = correct & (pred == exact_pred)
        radius_global = torch.where(certified, margin.double() / (lipschitz * _SAFETY),
                                    torch.zeros((), dtype=torch.float64))
        radius_local = None
        if local:
            net = one_hidden_layer(exact, x[:batch_size].to(device).double())
            if net is not None:
                radius_local = torch.cat([local_radii(net, chunk.to(device).double(), bisection_steps).cpu()
                                          for chunk in x.split(batch_size)])
                radius_local = torch.where(certified, radius_local, torch.zeros_like(radius_local))
        gains = None
        if tightness_samples:
            directions = torch.Generator().manual_seed(0)
            gains = torch.cat([local_gains(model, chunk.to(device), tightness_iterations, directions).cpu()
                               for chunk in x[:tightness_samples].split(batch_size)])
    warnings = []
    if margin.dtype != torch.float64:
        warnings.append(f"head '{type(model.head).__name__}' computes its margin in {margin.dtype} even on a "
                        "float64 model: the global radii do not cover that rounding")
    radius = radius_global if radius_local is None else torch.maximum(radius_global, radius_local)
    n = len(y)
    gain_max = float(gains.max()) if gains is not None else None
    return {
        "model": model_name or name_of(model),
        "dataset": dataset_name or "tensors",
        "n_samples": n,
        "norm": "L2",
        "clean_accuracy": float(correct.double().mean()),
        "method": "global Lipschitz bound" + (" and local cross-Lipschitz bound (Hein & Andriushchenko 2017, "
                                              "Thm 2.1 + Prop 2.2), the larger" if radius_local is not None else ""),
        "lipschitz_constant": lipschitz,
        "local_gain_max": gain_max,
        "local_gain_median": median(gains) if gains is not None else None,
        "bound_tightness": None if gain_max is None else lipschitz / gain_max if gain_max > 0 else math.inf,
        "certified_accuracy": {f"{r:g}": float((correct & (radius >= r)).double().mean()) for r in radii},
        "median_radius": median(radius),
        "median_radius_global": median(radius_global),
        "median_radius_local": median(radius_local) if radius_local is not None else None,
        "radii": radius.tolist(),
        "radii_global": radius_global.tolist(),
        "radii_local": radius_local.tolist() if radius_local is not None else None,
        "warnings": warnings,
    }


class OneHiddenLayer:
    """``f(x) = W σ(U x + b) + c`` in float64 pixel units, read off a float64 ProtoModel.

    The normalisation is folded into ``U`` and ``b``, a linear neck into ``W`` and ``c``, and the head
    enters only through its declared :meth:`~robustproto.Head.affine_map`.
    """

    def __init__(self, model: nn.Module, hidden: nn.Linear, act: nn.Softplus, weight: torch.Tensor,
                 bias: torch.Tensor):
        self.act = act
        mean, std = model.normalize.mean.flatten().double(), model.normalize.std.flatten().double()
        pixels = hidden.in_features // len(std)
        # (x − mean)/std per channel, flattened channel-major
        per_input_mean, per_input_std = mean.repeat_interleave(pixels), std.repeat_interleave(pixels)
        weight_hidden = hidden.weight.detach().double()
        self.u = weight_hidden / per_input_std  # (H, d)
        self.b = hidden.bias.detach().double() - self.u @ per_input_mean  # (H,)
        self.w, self.c = weight.double(), bias.double()  # (K, H), (K,)
        self.gram = self.u @ self.u.t()
        self.row_norms = self.u.norm(dim=1)

    def pre_activations(self, x: torch.Tensor) -> torch.Tensor:
        """``U x + b`` (B, H) of float64 images."""
        return x.flatten(1) @ self.u.t() + self.b

    def scores(self, x: torch.Tensor) -> torch.Tensor:
        """``f(x)`` (B, K) of float64 images."""
        return self.act(self.pre_activations(x)) @ self.w.t() + self.c

    def act_derivative(self, t: torch.Tensor) -> torch.Tensor:
        """σ' of torch's softplus: sigmoid(βt), exactly 1 where it switches to the identity; increasing."""
        beta, threshold = self.act.beta, self.act.threshold
        return torch.where(beta * t > threshold, torch.ones_like(t), torch.sigmoid(beta * t))


def one_hidden_layer(model: nn.Module, probe: torch.Tensor) -> OneHiddenLayer | None:
    """The float64 ``model`` as ``W σ(U x + b) + c`` if it is one, else ``None``.

    The head qualifies only by declaring ``scores_affine_in_embedding`` and enters through its
    ``affine_map()``; the backbone is recognised by its ``hidden`` layer and softplus ``act`` and checked
    numerically on ``probe`` (float64 images). A head that declares the capability but whose ``forward``
    differs from its ``affine_map()`` on the probe is a bug in the head: ``RuntimeError``.
    """
    backbone, head, neck = model.backbone, model.head, model.neck
    if not getattr(head, "scores_affine_in_embedding", False):
        return None
    hidden, act = getattr(backbone, "hidden", None), getattr(backbone, "act", None)
    if not (isinstance(hidden, nn.Linear) and type(act) is nn.Softplus and isinstance(neck, (nn.Identity, nn.Linear))):
        return None
    head_weight, head_bias = (t.detach() for t in head.affine_map())
    weight, bias = head_weight, head_bias
    if isinstance(neck, nn.Linear):
        weight, bias = head_weight @ neck.weight.detach(), head_weight @ neck.bias.detach() + head_bias
    net = OneHiddenLayer(model, hidden, act, weight, bias)
    with torch.no_grad():
        features = act(net.pre_activations(probe))
        if not torch.allclose(backbone(model.normalize(probe)), features, rtol=1e-6, atol=1e-8):
            return None
        z = neck(features)
        # the bound uses affine_map(), not forward: a forward that rounds in float32 passes, a non-affine one not
        if not torch.allclose(head(z), z @ head_weight.t() + head_bias, rtol=1e-4, atol=1e-5):
            raise RuntimeError(f"head '{type(head).__name__}' declares scores_affine_in_embedding, but its "
                               "forward(z) is not z @ W.T + b with (W, b) = affine_map()")
    return net


@torch.no_grad()
def local_radii(net: OneHiddenLayer, x: torch.Tensor, steps: int) -> torch.Tensor:
    """Theorem 2.1 with Proposition 2.2 per float64 image (radius of the predicted class), bisection over R."""
    a_all = net.pre_activations(x)  # ⟨u_r, x⟩ + b_r
    scores = net.scores(x)
    pred = scores.argmax(1)
    out = torch.zeros(len(x), dtype=torch.float64, device=x.device)
    k = scores.shape[1]
    for c in pred.unique().tolist():
        idx = (pred == c).nonzero().squeeze(1)
        a = a_all[idx]
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
            """min_j (f_c − f_j) / (Prop. 2.2 bound at R = radius), per point, with the rounding allowance."""
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


def local_gains(model: nn.Module, x: torch.Tensor, iterations: int, generator: torch.Generator) -> torch.Tensor:
    """Per image of ``x`` a lower bound of ‖J(x)‖₂, the local gain of ``model.embed`` (``J`` its Jacobian with
    respect to the pixels), by ``iterations`` steps of power iteration on ``JᵀJ`` from a random direction drawn
    from ``generator`` (on the CPU); ``(B,)`` in ``x``'s dtype and on its device.

    The model is used in the mode it is in and must embed each image independently of the others (eval mode:
    BatchNorm with running statistics, dropout off), so the batch's Jacobian is block diagonal and one product
    gives every image's. For a ReLU network ``J`` is the exact linear map at ``x``; the estimate
    ``sqrt(‖JᵀJ v‖)``, ``‖v‖ = 1``, approaches ``σ_max(J)`` from below. It is 0 where ``J`` is 0.
    """
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        z = model.embed(x)
        # Jᵀu is linear in u; differentiating it in u gives J: both products run on the one recorded forward pass
        cotangent = torch.zeros_like(z, requires_grad=True)
        (pullback,) = torch.autograd.grad(z, x, cotangent, create_graph=True)
        v = torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)
        v = v / _per_image_norm(v)
        gain = torch.zeros(len(x), dtype=x.dtype, device=x.device)
        for _ in range(iterations):
            (jv,) = torch.autograd.grad(pullback, cotangent, v, retain_graph=True)
            (w,) = torch.autograd.grad(z, x, jv, retain_graph=True)
            norm = _per_image_norm(w)
            gain = norm.flatten().sqrt()  # ‖Jv‖ ≤ sqrt(‖JᵀJv‖) ≤ σ_max for a unit v: the better lower bound
            v = torch.where(norm > 0, w / norm.clamp_min(torch.finfo(w.dtype).tiny), v)
    return gain.detach()


def _per_image_norm(t: torch.Tensor) -> torch.Tensor:
    """‖t_i‖₂ of each image, shaped to broadcast against ``t``."""
    return t.flatten(1).norm(dim=1).view(-1, *([1] * (t.dim() - 1)))


def certify_summary(report: Mapping[str, Any]) -> str:
    """One line for the CLI, then one ``warning:`` line per warning of the report."""
    acc = ", ".join(f"{r}: {v:.3f}" for r, v in report["certified_accuracy"].items())
    line = (f"clean accuracy {report['clean_accuracy']:.4f}; median certified L2 radius {report['median_radius']:.4g}; "
            f"certified accuracy at radius {acc}; Lipschitz bound L = {report['lipschitz_constant']:.4g}")
    if report["local_gain_max"] is not None:
        line += (f", ≥ the largest local gain found {report['local_gain_max']:.4g} "
                 f"(ratio {report['bound_tightness']:.3g}×)")
    return "\n".join([line, *(f"warning: {w}" for w in report["warnings"])])
