"""Why plain GLVQ stalls on CIFAR-10 in the Khalid & Paaßen recipe (issue 13): the first training steps of
``recipes/khalid-cifar10-glvq.toml``, measured every ``--every`` steps, for the recipe and a few variants.

    python benchmarks/glvq_escape.py --data-dir runs/data/cifar10-jpg [--steps 300] [--only 'sgd*']

GLVQ's loss is the mean of ``μ = (d⁺ − d⁻) / (d⁺ + d⁻)``. While most training points are misclassified (μ > 0),
moving every embedding away from all prototypes pulls each μ towards 0 and so lowers the mean: the loss rewards
an escape, after which ``|μ|`` and GLVQ's gradients are tiny. This script shows whether and when that happens.
Each variant trains ``kp_cnn_cifar`` + GLVQ from the same seed on the same ``--train-samples`` images (plain
steps of the head's loss, the recipe's optimiser and lr, no schedule: the cosine decay of a 12-epoch run changes
the lr by under 1 % in the steps measured) and records:

- on ``--points`` test images, model in eval mode: accuracy, median ``|μ|``, the norm of the mean embedding
  (how far the embeddings moved together), the median distance of an embedding from that mean (their spread),
  the prototypes' mean norm and the smallest gap between two prototypes;
- over the training batches since the last record (train mode, the loss's own view): the share with ``μ > 0``.

It writes ``--results`` (``benchmarks/results/khalid_cifar10_cpu/glvq-escape.json``); ``reproduce.py`` renders it.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import sys
from pathlib import Path

import torch
from torch.utils.data import DataLoader

import robustproto
from robustproto.training import build_model, create_optimizer, init_head_from_data
from robustproto.training.setup import load_data

ROOT = Path(__file__).resolve().parent.parent
RECIPE = ROOT / "recipes" / "khalid-cifar10-glvq.toml"
# each variant: the TrainConfig overrides it makes to the recipe (the paper gives no optimiser or lr); head_opt's
# entries are added to the recipe's
VARIANTS = {
    "recipe": {},
    "sgd": {"optimizer": "sgd", "lr": 0.01},
    "adamw-wd0.05": {"optimizer": "adamw", "weight_decay": 0.05},
    "lr1e-4": {"lr": 1e-4},
    "sigmoid-beta10": {"head_opt": {"activation": "sigmoid", "beta": 10.0}},
    "detach-denominator": {"head_opt": {"detach_denominator": True}},  # recipes/khalid-cifar10-glvq-detached.toml
}


@torch.no_grad()
def measure(model: robustproto.ProtoModel, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    z = model.embed(x)
    scores = model.head(z)
    prototypes = model.head.prototypes
    gaps = torch.pdist(prototypes)
    return {"test_acc": float((scores.argmax(1) == y).float().mean()),
            "median_abs_mu": float(model.head.mu(scores, y).abs().median()),
            "mean_embedding_norm": float(z.mean(0).norm()),
            "median_spread": float((z - z.mean(0)).norm(dim=1).median()),
            "prototype_norm": float(prototypes.norm(dim=1).mean()),
            "min_prototype_gap": float(gaps.min())}


def trace(overrides: dict, data_dir: str, dataset: str | None, steps: int, every: int, train_samples: int,
          points: int) -> list[dict]:
    """The records of one variant: step 0 (after the head's data init) and every ``every`` steps."""
    recipe = robustproto.load_recipe(RECIPE)
    common = {"data_dir": data_dir, "max_train_samples": train_samples, "max_test_samples": points,
              **({"dataset": dataset} if dataset else {})}
    head_opt = {**recipe.train_config(common).head_opt, **overrides.get("head_opt", {})}
    cfg = recipe.train_config({**common, **overrides, "head_opt": head_opt})
    torch.manual_seed(cfg.seed)
    train_data, test_data = load_data(cfg)
    model = build_model(cfg, train_data)
    init_head_from_data(model, train_data, cfg.init_samples)
    optimizer = create_optimizer(cfg, model)
    x_test = torch.stack([test_data[i][0] for i in range(len(test_data))])
    y_test = test_data.labels
    loader = DataLoader(train_data, batch_size=cfg.batch_size, shuffle=True, drop_last=True,
                        generator=torch.Generator().manual_seed(cfg.seed))
    model.eval()
    records = [{"step": 0, **measure(model, x_test, y_test), "train_share_mu_positive": None}]
    step, positive, seen = 0, 0, 0
    while step < steps:
        for x, y in loader:
            model.train()
            z = model.embed(x)
            scores = model.head(z)
            loss = model.head.loss(z, scores, y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            step += 1
            with torch.no_grad():
                positive += int((model.head.mu(scores, y) > 0).sum())
                seen += len(y)
            if step % every == 0:
                model.eval()
                records.append({"step": step, **measure(model, x_test, y_test),
                                "train_share_mu_positive": positive / seen})
                positive, seen = 0, 0
                print(json.dumps(records[-1]), flush=True)
            if step >= steps:
                break
    return records


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=ROOT / "runs" / "data" / "cifar10-jpg")
    parser.add_argument("--dataset", default="imagefolder",
                        help="the recipe's dataset read from elsewhere ('' keeps the recipe's cifar10)")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--every", type=int, default=50)
    parser.add_argument("--train-samples", type=int, default=20000)
    parser.add_argument("--points", type=int, default=500, help="test images measured")
    parser.add_argument("--only", default="*", help=f"glob on the variants: {', '.join(VARIANTS)}")
    parser.add_argument("--results", type=Path,
                        default=ROOT / "benchmarks" / "results" / "khalid_cifar10_cpu" / "glvq-escape.json")
    args = parser.parse_args(argv)
    names = [n for n in VARIANTS if fnmatch.fnmatch(n, args.only)]
    if not names:
        parser.error(f"--only {args.only!r} matches none of {', '.join(VARIANTS)}")
    results = json.loads(args.results.read_text()) if args.results.is_file() else {}
    for name in names:
        print(f"== {name}", flush=True)
        results[name] = {"overrides": VARIANTS[name], "train_samples": args.train_samples, "points": args.points,
                         "records": trace(VARIANTS[name], str(args.data_dir.resolve()), args.dataset or None,
                                          args.steps, args.every, args.train_samples, args.points)}
        args.results.parent.mkdir(parents=True, exist_ok=True)
        args.results.write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
