"""The report as files and pictures: valid JSON (∞ as ``"inf"``) written atomically, robustness curves over ε,
a grid of adversarial examples, and the name a report gives a model.

Matplotlib is imported only when a picture is drawn (headless Agg, no pyplot state).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from ..errors import UsageError
from ..utils import atomic_write

__all__ = ["model_name", "report_json", "robustness_figure", "save_example_grid", "save_robustness_curves",
           "to_jsonable", "write_report"]


def model_name(model: nn.Module) -> str:
    """``backbone+head`` from a :class:`~robustproto.ProtoModel`'s spec, else the model's class name."""
    spec = getattr(model, "spec", None) or {}
    if spec.get("backbone") and spec.get("head"):
        return f"{spec['backbone']}+{spec['head']}"
    return type(model).__name__


def to_jsonable(obj: Any) -> Any:
    """``obj`` with JSON-safe values: ±∞ as the strings ``"inf"``/``"-inf"``, NaN as ``None``, keys as strings,
    tuples as lists."""
    if isinstance(obj, float):
        if math.isinf(obj):
            return "inf" if obj > 0 else "-inf"
        return None if math.isnan(obj) else obj
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    return obj


def report_json(report: Mapping[str, Any]) -> str:
    """The report as valid JSON: ∞ becomes the string ``"inf"``, NaN ``null``."""
    return json.dumps(to_jsonable(report), indent=2, allow_nan=False)


def write_report(report: Mapping[str, Any], path: str | Path) -> Path:
    """Write :func:`report_json` atomically (temp file, then rename)."""
    text = report_json(report)
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))
    return Path(path)


def robustness_figure(report: Mapping[str, Any] | Sequence[Mapping[str, Any]], labels: Sequence[str] | None = None):
    """A matplotlib Figure (Agg, no pyplot state): robust accuracy over ε, one line per attack and norm.

    Given several reports (e.g. one per trained model, as in Fig. 2 of Khalid & Paaßen), their curves
    share the axes, one panel per norm, each line labelled ``label: attack`` (``labels`` default to the
    reports' ``model`` names; the attack is left out when every report ran the same single attack).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    reports = [report] if isinstance(report, Mapping) else list(report)
    if not reports:
        raise UsageError("robustness curves: no report given")
    names = list(labels) if labels is not None else [str(r.get("model", "")) for r in reports]
    if len(names) != len(reports):
        raise UsageError(f"robustness curves: {len(names)} labels for {len(reports)} reports")
    attacks = {r["attack"] for rep in reports for r in rep["results"]}
    fig = Figure(figsize=(6.4, 4.8), dpi=100)
    FigureCanvasAgg(fig)
    norms = sorted({r["norm"] for rep in reports for r in rep["results"]})
    axes = fig.subplots(1, max(1, len(norms)), squeeze=False)[0]
    for ax, run_norm in zip(axes, norms or ["Linf"]):
        lines: dict[str, list] = {}
        for name, rep in zip(names, reports):
            for r in rep["results"]:
                if r["norm"] == run_norm:
                    label = r["attack"] if len(reports) == 1 else name if len(attacks) == 1 else f"{name}: {r['attack']}"
                    lines.setdefault(label, []).append((r["eps"], r["robust_accuracy"]))
        for label, points in lines.items():
            points.sort()
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", markersize=3, label=label)
        ax.set_xlabel(f"ε ({run_norm}, pixel units)")
        ax.set_ylabel("robust accuracy")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        if lines:
            ax.legend(fontsize=8)
    if len(reports) == 1:
        title = f"{reports[0].get('model', '')} on {reports[0].get('dataset', '')} (n={reports[0].get('n_samples')})"
    else:
        title = f"{', '.join(sorted(attacks))} on {', '.join(sorted({str(r.get('dataset', '')) for r in reports}))}"
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def save_robustness_curves(report: Mapping[str, Any] | Sequence[Mapping[str, Any]], path: str | Path,
                           labels: Sequence[str] | None = None) -> Path:
    """Write :func:`robustness_figure` (one report, or several on shared axes) as a PNG (640×480 pixels)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    robustness_figure(report, labels).savefig(path, format="png")
    return path


def save_example_grid(clean: torch.Tensor, examples: list[tuple[str, torch.Tensor]], path, columns: int = 8) -> None:
    """Clean images (first row) and, per attack, the adversarial found for them (or the clean one if none)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    k = min(columns, len(clean))
    if k == 0:
        return
    rows = [("clean", clean[:k])] + [(label, images[:k]) for label, images in examples]
    fig = Figure(figsize=(1.2 * k + 1.5, 1.3 * len(rows)), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(rows), k, squeeze=False)
    for i, (label, images) in enumerate(rows):
        for j in range(k):
            ax = axes[i][j]
            img = images[j].detach().cpu().float()
            ax.imshow((img[0] if img.shape[0] == 1 else img.permute(1, 2, 0)).numpy(), cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[i][0].set_ylabel(label, fontsize=7, rotation=0, ha="right", va="center")
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
