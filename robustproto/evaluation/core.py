""":func:`evaluate`: validate the request, attack every norm's attacks on the correctly classified points, and
assemble the report (its fields and guarantees are described in :mod:`robustproto.evaluation`)."""

from __future__ import annotations

import copy
import functools
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import nn

from ..attacks import (STANDARD_AUTOATTACK, ParsedAttack, build_attack, default_loss, is_standard_autoattack,
                       max_distance, parse_attack)
from ..config import DEFAULT_THRESHOLDS, normalize_norm
from ..errors import UsageError
from ..utils import eval_mode, model_device
from .distances import distance_summary, median, per_point, robust_accuracy_at
from .masking import masking_warnings
from .report import model_name as name_of, save_example_grid, save_robustness_curves
from .runner import ABS_TOL, REL_TOL, AttackRunner, collect, predict, sweep

__all__ = ["evaluate"]


def _plan(attacks, eps, norm) -> dict[str, tuple[list[str], list[float]]]:
    """{norm: (attack names, ε list)} from a flat list + one norm, or from mappings keyed by norm."""
    if isinstance(attacks, str):
        attacks = [attacks]
    if isinstance(attacks, Mapping):
        by_norm = {normalize_norm(k): list(v if not isinstance(v, str) else [v]) for k, v in attacks.items()}
    else:
        by_norm = {normalize_norm(norm): list(attacks)}
    if isinstance(eps, Mapping):
        eps_by_norm = {normalize_norm(k): v for k, v in eps.items()}
    else:
        eps_by_norm = {k: eps for k in by_norm}
    plan = {}
    for n, names in by_norm.items():
        if not names:
            raise UsageError(f"attack: no attack given for norm {n}")
        values = sorted({float(e) for e in (eps_by_norm.get(n) or [])})
        if any(e < 0 or not math.isfinite(e) for e in values):
            raise UsageError(f"eps: budgets must be finite and ≥ 0, got {values}")
        plan[n] = (list(names), values)
    return plan


@dataclass(frozen=True)
class _Job:
    """One validated :func:`evaluate` call: the attacks per norm (``(name, parsed)``, options as given), the ε grid
    per norm, the thresholds, the bisection steps, and what to name, draw and log."""

    attacks: Mapping[str, list[tuple[str, ParsedAttack]]]
    eps: Mapping[str, list[float]]
    thresholds: Mapping[str, float]
    bisection_steps: int
    model_name: str | None
    dataset_name: str | None
    plot: str | Path | None
    save_examples: str | Path | None
    log: Callable[[str], None] | None
    partial_report: Callable[[dict[str, Any]], None] | None


def evaluate(
    model: nn.Module,
    data,
    attacks: Sequence[str] | Mapping[str, Sequence[str]] = ("fgsm",),
    eps: Sequence[float] | Mapping[str, Sequence[float]] | None = None,
    norm: str = "Linf",
    n_samples: int | None = None,
    batch_size: int = 128,
    attack_options: Mapping[str, Mapping[str, Any]] | None = None,
    thresholds: Mapping[str, float] | None = None,
    bisection_steps: int = 0,
    strict: bool = True,
    seed: int = 0,
    model_name: str | None = None,
    dataset_name: str | None = None,
    plot: str | Path | None = None,
    save_examples: str | Path | None = None,
    log: Callable[[str], None] | None = None,
    partial_report: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Attack ``model`` on ``data`` and return the report (see :mod:`robustproto.evaluation` for every field).

    Args:
        model: a classifier on images in [0, 1] returning class scores (any ``nn.Module``); it is
            evaluated in eval mode and restored afterwards.
        data: a DataLoader, a Dataset of ``(image, label)`` or an ``(images, labels)`` tensor pair.
        attacks: names from :data:`~robustproto.attacks.ATTACKS` (``pgd-20``, ``pgd-100`` set the steps), all run
            in ``norm``; or ``{norm: [names]}`` to evaluate several norms in one report.
        eps: the budgets (pixel units) of the robustness curves, or ``{norm: [budgets]}``.
            Minimal attacks need none (their curve is read off their distances).
        n_samples: evaluate the first N points (default: all).
        attack_options: ``{attack: {option: value}}`` over the defaults in ``ATTACKS[name].defaults``
            (e.g. ``{"square": {"n_queries": 1000}}``); recorded in ``settings``.
        thresholds: ``{norm: t}`` for the threshold accuracy (default t₂ = 1.5, t∞ = 0.3).
        bisection_steps: per-sample bisection steps on ε refining a fixed-budget attack's minimal distance
            (Saralajew et al.'s median-δ); each step costs up to one more attack run, so the default 0 runs a
            fixed-budget attack once per ε and its distances are the smallest adversarial over the ε grid (an
            upper bound of the minimal distance, as ``settings["fixed_budget_distances"]`` says).
        strict: raise :class:`~robustproto.errors.AttackError` on an invalid attack output (else warn and count it
            as not broken).
        seed: seeds every attack's randomness (random starts, Square) inside a forked RNG, so two identical
            calls give identical reports and the caller's RNG state is left as it was.
        plot, save_examples: PNG paths for the robustness curves and a grid of adversarial examples.
        log: called with one line per finished attack (e.g. ``print``).
        partial_report: called after every attack but the last with the report of the attacks finished so far,
            whose ``unfinished`` lists the others (``name/norm``); ``robustproto eval`` writes it, so an evaluation
            stopped midway keeps its finished attacks.

    Bad names, options and values are :class:`~robustproto.errors.UsageError` (a ``ValueError``), raised before
    any data is read.
    """
    plan = _plan(attacks, eps, norm)
    options = dict(attack_options or {})
    parsed = {n: [(name, parse_attack(name, options, norm=n)) for name in names] for n, (names, _) in plan.items()}
    for n, entries in parsed.items():
        if len({name for name, _ in entries}) != len(entries):
            raise UsageError(f"attack: a name is given twice for norm {n}")
        for name, attack in entries:
            if not attack.spec.minimal and not plan[n][1] and not bisection_steps:
                raise UsageError(f"attack '{name}' has a fixed budget: give eps (e.g. --eps 0.1,0.3) or "
                                 "bisection_steps > 0 to search its minimal distance")
    thresholds = {**DEFAULT_THRESHOLDS, **{normalize_norm(k): float(v) for k, v in (thresholds or {}).items()}}
    for key, value, minimum in (("batch_size", batch_size, 1), ("n_samples", n_samples, 1),
                                ("bisection_steps", bisection_steps, 0)):
        if value is not None and value < minimum:
            raise UsageError(f"{key}: must be ≥ {minimum}, got {value}")
    job = _Job(parsed, {n: grid for n, (_, grid) in plan.items()}, thresholds, bisection_steps, model_name,
               dataset_name, plot, save_examples, log, partial_report)

    x, y = collect(data, n_samples, batch_size)
    device = model_device(model)
    grads = {p: p.requires_grad for p in model.parameters()}
    for p in grads:  # attacks need input gradients only; weight gradients would be wasted work
        p.requires_grad_(False)
    devices = [device] if device.type == "cuda" else []
    try:
        with eval_mode(model), torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            return _evaluate(model, x, y, AttackRunner(model, batch_size, device, strict), job)
    finally:
        for p, flag in grads.items():
            p.requires_grad_(flag)


def _settings(job: _Job, loss: str, strict: bool) -> dict[str, Any]:
    """The report's ``settings`` before the attacks are recorded in it."""
    steps = job.bisection_steps
    return {"attacks": {}, "bisection_steps": steps,
            "fixed_budget_distances": (
                f"refined per point by {steps} bisection steps on eps" if steps
                else "the smallest adversarial over the eps grid, not refined (an upper bound of the minimal "
                     "distance; pass bisection_steps > 0 for Saralajew et al.'s median-delta)"),
            "loss_auto": loss,
            "verification": f"re-run on the returned images; tolerance {ABS_TOL:g} + {REL_TOL:g}·eps, excess "
                            f"within it projected; strict={strict}",
            "infinity_in_json": "the string \"inf\""}


def _record(name: str, norm: str, attack: ParsedAttack, num_classes: int, warnings: list[str]) -> dict[str, Any]:
    """What ``settings["attacks"]`` says about one attack; a weakened AutoAttack is labelled and warned about."""
    key, spec, opts = attack
    recorded = {"attack": key, "norm": norm, "minimal": spec.minimal, "white_box": spec.white_box,
                "about": spec.summary, **opts}
    if key == "autoattack":
        standard = is_standard_autoattack(opts, num_classes)
        recorded["version"] = "standard" if standard else "weakened (not standard)"
        if not standard:
            warnings.append(f"{name} ({norm}): run with {opts}, weaker than the standard AutoAttack "
                            f"({STANDARD_AUTOATTACK}); do not report it as AutoAttack standard")
    return recorded


def _evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, runner: AttackRunner, job: _Job) -> dict[str, Any]:
    n = len(y)
    t0 = time.perf_counter()
    correct = predict(model, x, runner.batch_size, runner.device) == y
    clean_seconds = time.perf_counter() - t0
    with torch.no_grad():
        num_classes = int(model(x[:1].to(runner.device)).shape[1])
    cx, cy = x[correct], y[correct]
    loss = default_loss(model)
    settings = _settings(job, loss, runner.strict)
    results: list[dict[str, Any]] = []
    distances: dict[str, dict[str, torch.Tensor]] = {}
    failures: dict[str, dict[str, int]] = {}
    distance_seconds: dict[str, dict[str, float]] = {}
    examples: list[tuple[str, torch.Tensor]] = []

    class_share = float(torch.bincount(y).max()) / n
    white_box = {(name, norm): attack.spec.white_box for norm, entries in job.attacks.items()
                 for name, attack in entries}
    unfinished = [f"{name}/{norm}" for norm, entries in job.attacks.items() for name, _ in entries]

    def report() -> dict[str, Any]:
        median_distance, threshold_accuracy, found = distance_summary({k: d for k, d in distances.items() if d},
                                                                      job.thresholds)
        warnings = runner.warnings + masking_warnings(results, white_box, n, class_share, x.shape[1:], loss)
        return {
            "model": job.model_name or name_of(model),
            "dataset": job.dataset_name or "tensors",
            "n_samples": n,
            "clean_accuracy": float(correct.double().mean()),
            "results": results,
            "median_distance": median_distance,
            "threshold_accuracy": threshold_accuracy,
            "minimal_attack_failures": failures,
            "warnings": warnings,
            "distance_seconds": distance_seconds,
            "clean_seconds": clean_seconds,
            "settings": settings,
            "distances": {k: {a: v.tolist() for a, v in d.items()} for k, d in found.items()},
            **({"unfinished": list(unfinished)} if unfinished else {}),
        }

    for run_norm, entries in job.attacks.items():
        grid = job.eps[run_norm]
        distances[run_norm], failures[run_norm], distance_seconds[run_norm] = {}, {}, {}
        for name, attack in entries:
            if attack.options.get("loss") == "auto":
                attack = attack._replace(options={**attack.options, "loss": loss})
            spec, opts, label = attack.spec, attack.options, f"{name} ({run_norm})"
            settings["attacks"][f"{name}/{run_norm}"] = _record(name, run_norm, attack, num_classes, runner.warnings)
            build = functools.partial(build_attack, name, model, norm=run_norm, num_classes=num_classes, options=opts)
            if spec.minimal:
                t = time.perf_counter()
                out = runner.run(build(max_distance(run_norm, x.shape[1:])), cx, cy, None, run_norm, label)
                seconds = time.perf_counter() - t
                dist = per_point(out.distance, correct)
                failures[run_norm][name] = int((~out.success).sum())
                distance_seconds[run_norm][name] = seconds
                results += [{"attack": name, "norm": run_norm, "eps": e, "robust_accuracy": robust_accuracy_at(dist, e),
                             "seconds": seconds, "from": "minimal distances (one run)"} for e in grid]
                examples.append((label, out.examples))
            else:
                top = grid[-1] if grid else max_distance(run_norm, x.shape[1:])
                found = sweep(runner, build, cx, cy, grid, run_norm, label, job.bisection_steps, top)
                results += [{"attack": name, "norm": run_norm, "eps": e,
                             "robust_accuracy": int(len(cy) - out.success.sum()) / n, "seconds": seconds,
                             **({"loss": opts["loss"]} if "loss" in opts else {})} for e, out, seconds in found.runs]
                dist = per_point(found.distance, correct)
                distance_seconds[run_norm][name] = found.search_seconds
                if found.last is not None:
                    examples.append((f"{label} eps={top:g}", found.last.examples))
            distances[run_norm][name] = dist
            if job.log:
                line = f"{label}: median distance {median(dist):.4g}"
                if grid:
                    line += f", robust accuracy at eps={grid[-1]:g}: {results[-1]['robust_accuracy']:.4f}"
                job.log(line)
            unfinished.remove(f"{name}/{run_norm}")
            if unfinished and job.partial_report:
                job.partial_report(copy.deepcopy(report()))  # a snapshot: the lists grow with the next attack

    final = report()
    if job.plot:
        save_robustness_curves(final, job.plot)
    if job.save_examples:
        save_example_grid(x[correct], examples, job.save_examples)
    return final
