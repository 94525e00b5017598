"""Running attacks so that every counted adversarial is valid: the data, the clean predictions, verified
attack runs, and the search for a fixed-budget attack's minimal distance.

Every attack output is checked by re-running the model on the returned images (:func:`verify`,
:func:`run_attack`): a perturbation larger than ε, outside [0, 1] or not finite (beyond a float tolerance of
:data:`ABS_TOL` absolute + :data:`REL_TOL` relative) is rejected, and :class:`AttackRunner` makes a rejected
output an :class:`~robustproto.errors.AttackError` (or, not strict, a warning); an excess within the
tolerance is projected back onto the ε-ball and the box before the model is re-run. At ε = 0 the clean image
is the only admissible input, so no attack is called there (some divide by ε).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..attacks import perturbation_norms, project
from ..errors import AttackError, UsageError
from ..utils import model_device

__all__ = ["ABS_TOL", "REL_TOL", "AttackRunner", "Outcome", "Sweep", "collect", "predict", "run_attack", "sweep",
           "verify"]

ABS_TOL = 1e-5
REL_TOL = 1e-5

Attack = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def collect(data, n_samples: int | None, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``n_samples`` images and labels of a DataLoader, a Dataset or an ``(x, y)`` pair, on the CPU:
    float images ``(N, C, H, W)`` in [0, 1] and long labels; anything else is a :class:`UsageError`."""
    if isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(t, torch.Tensor) for t in data):
        x, y = data
        if n_samples is not None:
            x, y = x[:n_samples], y[:n_samples]
    else:
        if isinstance(data, Dataset):
            data = DataLoader(data, batch_size=batch_size, shuffle=False)
        if not isinstance(data, Iterable):
            raise TypeError(f"data must be a DataLoader, a Dataset or an (images, labels) pair, not {type(data).__name__}")
        xs, ys, seen = [], [], 0
        for batch in data:
            bx, by = batch[0], batch[1]
            xs.append(bx.cpu())
            ys.append(torch.as_tensor(by).cpu())
            seen += len(by)
            if n_samples is not None and seen >= n_samples:
                break
        if not xs:
            raise UsageError("no data to evaluate: the loader is empty")
        x, y = torch.cat(xs)[:n_samples], torch.cat(ys)[:n_samples]
    if len(y) == 0:
        raise UsageError("no data to evaluate: n_samples is 0 or the data is empty")
    x = x.float()
    if x.ndim != 4 or len(x) != len(y):
        raise UsageError(f"expected images (N, C, H, W) and N labels, got {tuple(x.shape)} and {tuple(y.shape)}")
    if float(x.min()) < 0 or float(x.max()) > 1:
        raise UsageError("images must be in [0, 1] (the normalisation lives inside the model, so ε is in pixels); "
                         f"got values in [{float(x.min()):.3g}, {float(x.max()):.3g}]")
    return x, y.long()


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int, device=None) -> torch.Tensor:
    """The model's predicted classes for ``x`` (on the CPU), in batches on ``device`` (default: the model's)."""
    device = model_device(model) if device is None else device
    return torch.cat([model(chunk.to(device)).argmax(1).cpu() for chunk in x.split(batch_size)])


@dataclass
class Outcome:
    """What one attack run found on its points (all correctly classified)."""

    success: torch.Tensor   # (n,) bool: verified adversarial
    distance: torch.Tensor  # (n,) float64: its distance, inf where none
    invalid: int            # outputs rejected by the verification
    worst_excess: float     # the largest violation seen (for the error message)
    examples: torch.Tensor  # the verified images (clean where no adversarial), for pictures


def _per_sample(mask: torch.Tensor, ndim: int) -> torch.Tensor:
    return mask.view(-1, *([1] * (ndim - 1)))


def verify(x: torch.Tensor, adv: torch.Tensor, eps: float | None, norm: str) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Check an attack's output; project a float-rounding excess. Returns (images, valid mask, worst excess);
    an invalid image is replaced by the clean one. ``eps=None``: no budget (a minimal attack), only the box."""
    adv = adv.detach().to(x.dtype)
    finite = torch.isfinite(adv.flatten(1)).all(1)
    adv = torch.where(torch.isfinite(adv), adv, x)
    flat = adv.flatten(1)
    box_excess = torch.maximum(-flat.amin(1), flat.amax(1) - 1).clamp_min(0).double()
    adv = adv.clamp(0, 1)
    excess = box_excess
    if eps is not None:
        dist = perturbation_norms(adv - x, norm)
        excess = torch.maximum(excess, (dist - eps).clamp_min(0))
        tol = ABS_TOL + REL_TOL * eps
        over = dist > eps
        if over.any():  # within tolerance: back onto the ε-ball
            adv = torch.where(_per_sample(over, x.ndim), project(x, adv, eps, norm), adv)
    else:
        tol = ABS_TOL
    valid = finite & (excess <= tol)
    adv = torch.where(_per_sample(valid, x.ndim), adv, x)
    worst = float(excess.max()) if len(excess) else 0.0
    return adv, valid, (worst if finite.all() else float("inf"))


def run_attack(attack: Attack, model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float | None, norm: str,
               batch_size: int = 128, device=None) -> Outcome:
    """Attack ``x`` (all correctly classified) in batches; verify every output by re-running the model.

    The model is put back in eval mode after every attack call (torchattacks returns the module it wraps to
    the mode that module had), so verification and every later attack see the eval-mode model."""
    device = model_device(model) if device is None else device
    n = len(y)
    success = torch.zeros(n, dtype=torch.bool)
    distance = torch.full((n,), math.inf, dtype=torch.float64)
    examples = x.clone()
    invalid, worst = 0, 0.0
    for start in range(0, n, batch_size):
        sl = slice(start, start + batch_size)
        bx, by = x[sl].to(device), y[sl].to(device)
        if eps == 0:  # the clean image is the only one in a zero budget (some attacks divide by ε)
            adv = bx
        else:
            with torch.enable_grad():
                adv = attack(bx, by)
            model.eval()
        adv, valid, excess = verify(bx, adv, eps, norm)
        with torch.no_grad():
            fooled = (model(adv).argmax(1) != by) & valid
        invalid += int((~valid).sum())
        worst = max(worst, excess)
        d = perturbation_norms(adv - bx, norm).cpu()
        success[sl] = fooled.cpu()
        distance[sl] = torch.where(fooled.cpu(), d, torch.full_like(d, math.inf))
        examples[sl] = torch.where(_per_sample(fooled, x.ndim), adv, bx).cpu()
    return Outcome(success, distance, invalid, worst, examples)


@dataclass(frozen=True)
class AttackRunner:
    """How every attack of one evaluation runs: the model (in eval mode), batch size and device, and what a
    rejected output does: ``strict`` raises :class:`AttackError`, else a line is added to ``warnings`` and the
    point counts as not broken."""

    model: nn.Module
    batch_size: int = 128
    device: torch.device | None = None
    strict: bool = True
    warnings: list[str] = field(default_factory=list)

    def run(self, attack: Attack, x: torch.Tensor, y: torch.Tensor, eps: float | None, norm: str,
            label: str) -> Outcome:
        """:func:`run_attack`, then the check of its rejected outputs (``label`` names the attack in messages)."""
        outcome = run_attack(attack, self.model, x, y, eps, norm, self.batch_size, self.device)
        if outcome.invalid:
            message = (f"{label} returned {outcome.invalid} image(s) outside its budget or the [0, 1] box (worst "
                       f"excess {outcome.worst_excess:.3g} > tolerance {ABS_TOL:g} + {REL_TOL:g}·ε)")
            if self.strict:
                raise AttackError(message + "; they are not counted as adversarial (pass strict=False to count them "
                                            "as not broken and go on)")
            self.warnings.append(message + "; counted as not broken")
        return outcome


@dataclass
class Sweep:
    """A fixed-budget attack over an ε grid: ``runs`` (ε, outcome, seconds) per budget of the grid,
    ``distance`` per point the smallest adversarial found (∞ where none), refined by bisection if asked,
    ``last`` the run at the largest budget (``None`` without one), ``search_seconds`` the time beyond the grid."""

    runs: list[tuple[float, Outcome, float]]
    distance: torch.Tensor
    last: Outcome | None
    search_seconds: float


def sweep(runner: AttackRunner, build: Callable[[float], Attack], x: torch.Tensor, y: torch.Tensor,
          grid: list[float], norm: str, label: str, bisection_steps: int = 0, top: float | None = None) -> Sweep:
    """Run ``build(eps)`` once per budget of ``grid`` (sorted) on ``x`` (all correctly classified); with
    ``bisection_steps > 0`` refine each point's distance by a per-sample bisection on ε between the largest
    budget that left it and the smallest that broke it. Without a grid the search starts from ``top`` (the
    largest possible distance), which costs one more run. Points that share a bracket share the attack call, so
    bisection round r costs at most 2^r calls."""
    n = len(y)
    dist = torch.full((n,), math.inf, dtype=torch.float64)
    hi = torch.full((n,), math.inf, dtype=torch.float64)  # a budget that broke the point
    lo = torch.zeros(n, dtype=torch.float64)  # a budget that did not
    runs, last = [], None
    for e in grid:
        t = time.perf_counter()
        out = runner.run(build(e), x, y, e, norm, f"{label} at eps={e:g}")
        runs.append((e, out, time.perf_counter() - t))
        hi[out.success & ~torch.isfinite(hi)] = e
        lo[~out.success & (lo < e) & (e < hi)] = e
        dist = torch.minimum(dist, out.distance)
        last = out
    t = time.perf_counter()
    if not grid and bisection_steps:  # no grid: start the search from the largest possible budget
        last = runner.run(build(top), x, y, top, norm, f"{label} at eps={top:g}")
        hi[last.success] = top
        dist = torch.minimum(dist, last.distance)
    active = torch.isfinite(hi)
    for _ in range(bisection_steps if active.any() else 0):
        mid = (lo + hi) / 2
        for value in torch.unique(mid[active]).tolist():
            idx = (active & (mid == value)).nonzero().squeeze(1)
            if value <= 0:
                continue
            out = runner.run(build(value), x[idx], y[idx], value, norm, f"{label} at eps={value:g}")
            hi[idx] = torch.where(out.success, torch.full_like(hi[idx], value), hi[idx])
            lo[idx] = torch.where(out.success, lo[idx], torch.full_like(lo[idx], value))
            dist[idx] = torch.minimum(dist[idx], out.distance)
    return Sweep(runs, dist, last, time.perf_counter() - t)
