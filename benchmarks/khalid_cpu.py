"""Khalid & Paaßen finished (issue 13): does their Lipschitz penalty bind, and does Lipschitz-GLVQ become the most
robust of the four combinations once the penalty is scale-aware?

    python benchmarks/khalid_cpu.py [--data-dir ../shared/data] [--only 'glvq*']
    python benchmarks/khalid_cpu.py --data cifar10 --dataset imagefolder --data-dir runs/data/cifar10-jpg

MNIST (``--data mnist``): six runs of the paper's small CNN (``kp_cnn_mnist``, 16 features) on a fixed subset of
``--train-samples`` (12 000) training images for ``--epochs`` (8) epochs, each with its recipe's optimiser and batch:

- ``linear``, ``glvq``: no penalty (``recipes/khalid-mnist-{linear,glvq}.toml``);
- ``linear-lipschitz``, ``glvq-lipschitz``: the paper's penalty, Gaussian neighbours and an absolute ``L = 1``;
- ``linear-lipschitz-scaled``, ``glvq-lipschitz-scaled``: the scale-aware recipes (power-iteration neighbours,
  ``D`` relative to the prototype gap or the embedding's RMS norm, relative ``L``).

CIFAR-10 (``--data cifar10``): the paper's four (``kp_cnn_cifar``, 64 features) on all 50 000 training images for
12 epochs, long enough for the paper's ca. 70 % clean accuracy, and the two GLVQ ones again with GLVQ's
``detach_denominator`` (``glvq-detached``, ``glvq-lipschitz-detached``: the faithful GLVQ runs stall, see
``benchmarks/glvq_escape.py``); ``--dataset``/``--data-dir`` as ``robustproto train`` takes them (the JPEG copy of
``../shared/data/cifar10-jpg.zip`` unpacked is an ``imagefolder``).

For each run it writes to ``--results`` (``benchmarks/results/khalid_<data>_cpu``):

- ``NAME.analysis.json``: per epoch the test accuracy and the share of neighbours that violated the penalty's
  condition (``reg/lipschitz/violations`` of the run's ``metrics.jsonl``); after training, on ``--points`` test
  images, the paper's ratio ``D/d`` for Gaussian neighbours (the recipe's σ, squared distances, unclipped), the
  Jacobian's squared Frobenius norm per pixel ``‖J‖²_F / n`` (Hutchinson, the quantity a Gaussian neighbour
  measures) and its squared spectral norm ``‖J‖²₂`` (power iteration, the quantity an attack sees), and for GLVQ
  the squared gap δ² between the closest prototypes of different classes;
- ``NAME.fgsm.json``: ``robustproto eval`` with the recipe's FGSM curves (CE and margin) on 1000 test points;
- ``NAME.attacks.json``: ``robustproto eval`` with margin PGD-40, Square (5000 queries) and the standard AutoAttack
  at L∞ ``--eps`` (MNIST 0.1, CIFAR-10 0.01) on ``--attack-points`` (200) test points.

Finished steps are skipped (a trained run, an existing analysis or report), so the script can be rerun or split
with ``--only`` across processes. ``benchmarks/reproduce.py`` renders the results into REPRODUCTION.md.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import subprocess
import sys
from pathlib import Path

import torch

import robustproto
from robustproto.certify import local_gains
from robustproto.show import run_data
from robustproto_plugins.regularizers.lipschitz import squared_prototype_separation

ROOT = Path(__file__).resolve().parent.parent
FOUR = ("linear", "glvq", "linear-lipschitz", "glvq-lipschitz")
# per data set: the runs, the paper's neighbour noise σ (pixel units), the attacks' ε, training images and epochs
DATA = {"mnist": {"runs": (*FOUR, "linear-lipschitz-scaled", "glvq-lipschitz-scaled"), "sigma": 0.1, "eps": "0.1",
                  "train_samples": 12000, "epochs": 8},
        # 0.01 ≈ 2.6/255, a point of the paper's FGSM curve (at 0.03 ≈ 7.7/255 the strong attacks leave a plain CNN
        # at 0 %): FGSM and the strong attacks meet at one ε that still tells models apart
        "cifar10": {"runs": (*FOUR, "glvq-detached", "glvq-lipschitz-detached"), "sigma": 0.03, "eps": "0.01",
                    "train_samples": None, "epochs": 12}}
HUTCHINSON_VECTORS = 16
POWER_ITERATIONS = 30


def run_cli(*args: str) -> None:
    print("$ robustproto", " ".join(args), flush=True)
    subprocess.run([sys.executable, "-m", "robustproto", *args], check=True, cwd=ROOT)


def epochs_done(run: Path) -> list[dict]:
    log = run / "metrics.jsonl"
    return [json.loads(line) for line in log.read_text().splitlines()] if log.is_file() else []


@torch.no_grad()
def jacobian_measures(model: robustproto.ProtoModel, x: torch.Tensor, sigma: float) -> dict[str, float]:
    """The paper's ``D/d`` for Gaussian neighbours of standard deviation ``sigma``, ``‖J‖²_F / n``, ``‖J‖²₂`` (means
    over the images of ``x``)."""
    generator = torch.Generator().manual_seed(0)
    z = model.embed(x)
    noise = sigma * torch.randn(x.shape, generator=generator)
    big_d = (model.embed(x + noise) - z).pow(2).sum(1)
    small_d = noise.flatten(1).pow(2).sum(1)
    pixels = x[0].numel()
    frobenius_sq = torch.zeros(len(x))
    for _ in range(HUTCHINSON_VECTORS):  # E‖Jv‖² = ‖J‖²_F for v ~ N(0, I)
        v = torch.randn(x.shape, generator=generator)
        _, jv = torch.func.jvp(model.embed, (x,), (v,))
        frobenius_sq += jv.pow(2).sum(1) / HUTCHINSON_VECTORS
    spectral = local_gains(model, x, POWER_ITERATIONS, generator)
    return {"points": len(x), "D_over_d": float(big_d.mean() / small_d.mean()),
            "mean_D": float(big_d.mean()), "mean_d": float(small_d.mean()),
            "frobenius_sq_per_pixel": float(frobenius_sq.mean() / pixels),
            "spectral_sq": float(spectral.pow(2).mean()),
            "embedding_rms_sq": float(z.pow(2).sum(1).mean())}


def prototype_gap_sq(model: robustproto.ProtoModel) -> float | None:
    """δ², the smallest squared distance between prototypes of different classes, as the ``lipschitz`` regularizer's
    ``scale='prototypes'`` measures it (None: the head has no prototypes)."""
    if getattr(model.head, "prototypes", None) is None:
        return None
    with torch.no_grad():
        return float(squared_prototype_separation(model.head))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", choices=tuple(DATA), default="mnist", help="which recipes: khalid-<data>-*")
    parser.add_argument("--dataset", default=None, help="the recipes' dataset read from elsewhere (e.g. imagefolder)")
    parser.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--only", default="*", help="glob on the run names, e.g. 'glvq*'")
    parser.add_argument("--epochs", type=int, default=None, help="default: MNIST 8, CIFAR-10 12")
    parser.add_argument("--train-samples", type=int, default=None, help="default: MNIST 12000, CIFAR-10 all")
    parser.add_argument("--points", type=int, default=500, help="test images for the Jacobian measures")
    parser.add_argument("--attack-points", type=int, default=200, help="test images for PGD, Square, AutoAttack")
    parser.add_argument("--eps", default=None,
                        help="L∞ budget of PGD, Square and AutoAttack (MNIST 0.1, CIFAR-10 0.01)")
    parser.add_argument("--runs", type=Path, default=None, help="default: runs/khalid-<data>-cpu")
    parser.add_argument("--results", type=Path, default=None, help="default: benchmarks/results/khalid_<data>_cpu")
    args = parser.parse_args(argv)
    setting = DATA[args.data]
    epochs = args.epochs or setting["epochs"]
    train_samples = args.train_samples or setting["train_samples"]
    runs = args.runs or ROOT / "runs" / f"khalid-{args.data}-cpu"
    results = args.results or ROOT / "benchmarks" / "results" / f"khalid_{args.data}_cpu"
    names = [n for n in setting["runs"] if fnmatch.fnmatch(n, args.only)]
    if not names:
        parser.error(f"--only {args.only!r} matches none of {', '.join(setting['runs'])}")
    results.mkdir(parents=True, exist_ok=True)
    data_dir = str(args.data_dir.resolve())
    data = ["--data-dir", data_dir, *(["--dataset", args.dataset] if args.dataset else [])]
    for name in names:
        recipe, run = f"recipes/khalid-{args.data}-{name}.toml", runs / name
        # the CLI runs in ROOT: a run under it is named relative to it, so reports name no folder of this machine
        run_arg = str(run.relative_to(ROOT) if run.is_relative_to(ROOT) else run)
        if len(epochs_done(run)) < epochs:
            run_cli("train", "--config", recipe, *data, "--max-test-samples", "1000", "--epochs", str(epochs),
                    *(["--max-train-samples", str(train_samples)] if train_samples else []),
                    *(["--resume", run_arg] if (run / "state").exists() else ["--output", run_arg]))
        if not (results / f"{name}.analysis.json").is_file():
            model = robustproto.load(run)
            test = run_data(run, "test", args.dataset, data_dir, args.points)  # at the run's image size
            x = torch.stack([test[i][0] for i in range(len(test))])
            analysis = {"run": name, "recipe": recipe, "train_samples": train_samples,
                        "reg": json.loads((run / "config.json").read_text())["reg"],
                        "epochs": [{"epoch": e["epoch"], "test_acc": e["test_acc"], "train_acc": e["train_acc"],
                                    "violations": e.get("reg/lipschitz/violations")} for e in epochs_done(run)],
                        "after_training": jacobian_measures(model, x, setting["sigma"]),
                        "prototype_gap_sq": prototype_gap_sq(model)}
            (results / f"{name}.analysis.json").write_text(json.dumps(analysis, indent=1) + "\n")
        if not (results / f"{name}.fgsm.json").is_file():
            run_cli("eval", "--config", recipe, "--model", run_arg, *data, "--n-samples", "1000",
                    "--report", str(results / f"{name}.fgsm.json"))
        if not (results / f"{name}.attacks.json").is_file():
            run_cli("eval", "--config", recipe, "--model", run_arg, *data, "--n-samples", str(args.attack_points),
                    "--eps", args.eps or setting["eps"], "--attack", "pgd-40@margin", "--attack", "square",
                    "--attack", "autoattack", "--report", str(results / f"{name}.attacks.json"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
