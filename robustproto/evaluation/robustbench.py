"""RobustBench's evaluation rules, so a robustproto model can be set beside a line of its leaderboard.

RobustBench (Croce et al. 2021) scores a CIFAR-10 model by its clean accuracy and its accuracy under the
standard AutoAttack on the first 10,000 points of the test set, in order, at ε = 8/255 (Linf) or 0.5 (L2), in
pixel units of the 32×32 images. :func:`evaluate_robustbench` runs exactly that with robustproto's
``autoattack`` at its defaults (the standard suite with 100-step components, see
:data:`~robustproto.attacks.STANDARD_AUTOATTACK`) and returns the usual report together with
:func:`claim`, the JSON RobustBench keeps per model in ``model_info/cifar10/<threat model>/<Name>.json``.

Supported: CIFAR-10 in torchvision's format (``--dataset cifar10``, the files RobustBench itself loads), threat
models Linf and L2. Refused with a :class:`~robustproto.errors.UsageError`: RobustBench's corruptions threat
model (CIFAR-10-C), ImageNet (its score needs RobustBench's fixed list of 5,000 validation images and its
preprocessing, which robustproto does not reproduce) and every other dataset.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from torch import nn

from ..data import load_split
from ..errors import UsageError
from ..utils import model_device
from .core import evaluate
from .report import model_name as name_of
from .runner import collect

__all__ = ["CLAIM_KEYS", "EPS", "N_POINTS", "claim", "evaluate_robustbench", "override_note", "robustbench_data"]

# the CIFAR-10 test set, all of it in order: RobustBench's `n_examples=10000`
N_POINTS = 10_000
# RobustBench's budget per threat model: the value attacked and the string its model_info files write
EPS = {"Linf": (8 / 255, "8/255"), "L2": (0.5, "0.5")}
# the keys of a model_info file, in their order (e.g. model_info/cifar10/Linf/Wang2023Better_WRN-28-10.json)
CLAIM_KEYS = ("link", "name", "authors", "additional_data", "number_forward_passes", "dataset", "venue",
              "architecture", "eps", "clean_acc", "reported", "autoattack_acc", "footnote", "unreliable")
ATTACK = "autoattack"


def robustbench_data(dataset: str, data_dir: str | None, img_size: int | None = None):
    """The whole CIFAR-10 test set in its file order, unaugmented (RobustBench's points are its first 10,000).

    ``img_size`` is the trained run's: a model trained on resized images is refused, because RobustBench
    attacks the 32×32 images themselves and ε is in their pixels."""
    if dataset != "cifar10":  # an image folder could hold ImageNet or a re-encoded CIFAR-10: neither is the same test
        raise UsageError(f"dataset: --protocol robustbench supports CIFAR-10 in torchvision's files only, got "
                         f"'{dataset}' (ImageNet is not supported: its score needs RobustBench's list of 5,000 "
                         "validation images and its preprocessing); pass --dataset cifar10 --data-dir DIR (the "
                         "folder that holds cifar-10-batches-py)")
    if img_size not in (None, 32):
        raise UsageError(f"img_size: the model was trained on CIFAR-10 resized to {img_size}×{img_size}; "
                         "RobustBench attacks the 32×32 images (ε in their pixels): evaluate a run trained without "
                         "--img-size")
    return load_split(dataset, "test", data_dir, max_samples=None, augment="none")


def override_note(norm: str, attacks: Mapping[str, Any], eps: Mapping[str, Any], n_samples: int | None,
                  attack_options: Mapping[str, Any]) -> str:
    """The one line that says what the protocol replaces of the recipe and flags (attacks, budgets, subset)."""
    given = [name for name, value in (("attack", any(attacks.values())), ("eps", any(eps.values())),
                                      ("n_samples", n_samples is not None), ("attack_opt", bool(attack_options)))
             if value]
    replaced = f" (replacing the given {', '.join(given)})" if given else ""
    return (f"protocol robustbench: standard AutoAttack at {norm} eps={EPS[norm][1]} on the first {N_POINTS} "
            f"CIFAR-10 test points{replaced}")


def claim(report: Mapping[str, Any], model: nn.Module, norm: str) -> dict[str, Any]:
    """RobustBench's model_info JSON for a :func:`evaluate_robustbench` report: the keys of :data:`CLAIM_KEYS`
    in their order, filled where robustproto knows the value (``dataset``, ``architecture`` as backbone+head,
    ``number_forward_passes`` (a robustproto model is one deterministic forward pass), ``eps`` as RobustBench
    writes it, ``clean_acc`` and ``autoattack_acc`` as percentages with two decimals), empty strings for the
    paper's text fields and ``None`` for its judgments (``additional_data``, ``unreliable``); then one extra key,
    ``robustproto``, with the exact evaluation (threat model, ε, points, the attack's recorded settings)."""
    row = next(r for r in report["results"] if r["attack"] == ATTACK and r["norm"] == norm)
    values = {"number_forward_passes": 1, "dataset": "cifar10", "architecture": name_of(model),
              "eps": EPS[norm][1], "clean_acc": f"{100 * report['clean_accuracy']:.2f}",
              "autoattack_acc": f"{100 * row['robust_accuracy']:.2f}"}
    info = {key: values.get(key, None if key in ("additional_data", "unreliable") else "") for key in CLAIM_KEYS}
    info["robustproto"] = {
        "protocol": "robustbench", "threat_model": norm, "eps": row["eps"], "n_points": report["n_samples"],
        "points": f"the first {report['n_samples']} of the test set, in order", "model": report["model"],
        "attack": report["settings"]["attacks"][f"{ATTACK}/{norm}"], "warnings": list(report["warnings"]),
    }
    return info


def evaluate_robustbench(model: nn.Module, data, norm: str = "Linf", batch_size: int = 128,
                         model_name: str | None = None, dataset_name: str | None = None,
                         plot: str | Path | None = None, save_examples: str | Path | None = None,
                         log: Callable[[str], None] | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """Run RobustBench's rules on ``model`` and return ``(report, claim)``.

    ``data`` is the CIFAR-10 test set in order (:func:`robustbench_data`, or a Dataset/loader/``(x, y)`` pair of 32×32
    RGB images in [0, 1]); its first :data:`N_POINTS` points are attacked by the standard AutoAttack at
    ``EPS[norm]``. Fewer points, images of another shape or a model without 10 classes are a
    :class:`~robustproto.errors.UsageError`, raised before any attack runs."""
    if norm not in EPS:
        raise UsageError(f"norm: --protocol robustbench evaluates {' or '.join(EPS)}, got '{norm}'")
    x, y = collect(data, N_POINTS, batch_size)
    if len(y) < N_POINTS:
        raise UsageError(f"robustbench: the CIFAR-10 test set has {N_POINTS} points, the data given has {len(y)}; "
                         "pass the full test set (--data-dir with cifar-10-batches-py)")
    if tuple(x.shape[1:]) != (3, 32, 32):
        raise UsageError(f"robustbench: CIFAR-10 images are 3×32×32, got {'×'.join(map(str, x.shape[1:]))}")
    with torch.no_grad():
        was_training = model.training
        classes = int(model.eval()(x[:1].to(model_device(model))).shape[1])
        model.train(was_training)
    if classes != 10:
        raise UsageError(f"robustbench: CIFAR-10 has 10 classes, the model has {classes}")
    report = evaluate(model, (x, y), attacks={norm: [ATTACK]}, eps={norm: [EPS[norm][0]]}, batch_size=batch_size,
                      model_name=model_name, dataset_name=dataset_name, plot=plot, save_examples=save_examples,
                      log=log)
    version = report["settings"]["attacks"][f"{ATTACK}/{norm}"]["version"]
    assert version == "standard", f"robustbench ran a {version} AutoAttack"  # its defaults are the standard suite
    report["settings"]["protocol"] = {"name": "robustbench", "n_points": N_POINTS, "norm": norm,
                                      "eps": EPS[norm][1], "attack": f"{ATTACK} (standard)"}
    return report, claim(report, model, norm)
