"""Overhead of ``robustproto.evaluate`` over torchattacks called directly: PGD-20 (L∞) on the same model and data,
with robustproto on its DEFAULT settings (what ``robustproto eval --attack pgd-20 --eps E`` runs).

Two models with the same decisions (a nearest-class-mean classifier on MNIST pixels):

- ``linear``: written as a linear head (``w_c = μ_c``, ``b_c = −‖μ_c‖²/2``); its scores are softmax logits,
  so the default loss is cross-entropy: one PGD run, the same work as the direct loop (target ≤ 1.10×);
- ``glvq``: the same classifier as a GLVQ head; prototype scores saturate cross-entropy, so the default is the
  per-point worst of the margin and the CE loss: the margin PGD on every correct point, then CE-PGD on the
  points it left. That is more work than one CE-PGD by design; its ratio is reported, with the target
  (1 + share of points the margin run left) × 1.10.

Both sides run interleaved and repeated (best of ``--repeats``) in one process:

- direct: ``torchattacks.PGD(model, eps, alpha=2.5·eps/20, steps=20)`` on every image in batches, then one
  forward pass for the robust accuracy (what a user would write by hand);
- robustproto: ``robustproto.evaluate(model, (x, y), attacks=["pgd-20"], eps=[eps])`` with every other
  argument at its default (no bisection), which also runs the clean pass, attacks only the correctly
  classified points and re-checks every output.

Prints a table and writes benchmarks/results/eval_speed.json.

    python benchmarks/eval_speed.py [--n 1000] [--batch-size 128] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import robustproto


def direct(model, x, y, eps, batch_size) -> float:
    import torchattacks

    attack = torchattacks.PGD(model, eps=eps, alpha=2.5 * eps / 20, steps=20, random_start=True)
    correct = 0
    for i in range(0, len(y), batch_size):
        bx, by = x[i:i + batch_size], y[i:i + batch_size]
        adv = attack(bx, by)
        with torch.no_grad():
            correct += int((model(adv).argmax(1) == by).sum())
    return correct / len(y)


def through_robustproto(model, x, y, eps, batch_size) -> dict:
    return robustproto.evaluate(model, (x, y), attacks=["pgd-20"], eps=[eps], batch_size=batch_size)


def class_mean_models(x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.nn.Module]:
    """The nearest-class-mean classifier on pixels, as a GLVQ head and as the equivalent linear head."""
    glvq = robustproto.wrap("flatten", head="glvq", num_classes=10, mean=[0.0], std=[1.0])
    linear = robustproto.wrap("flatten", head="linear", num_classes=10, mean=[0.0], std=[1.0])
    with torch.no_grad():
        glvq.head.init_from_data(glvq.embed(x), y)
        means = glvq.head.prototypes.detach()
        # argmax_c (w_c·z + b_c) with w_c = μ_c, b_c = −‖μ_c‖²/2 is argmin_c ‖z − μ_c‖²
        linear.head.fc.weight.copy_(means)
        linear.head.fc.bias.copy_(-0.5 * (means * means).sum(1))
    return {"linear": linear.eval(), "glvq": glvq.eval()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--eps", type=float, default=0.1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "eval_speed.json"))
    args = parser.parse_args()

    from robustproto.data import load_split

    data = load_split("mnist-small", "test", max_samples=args.n)
    x = torch.stack([data[i][0] for i in range(len(data))])
    y = data.labels.clone()
    train = load_split("mnist-small", "train")
    models = class_mean_models(torch.stack([train[i][0] for i in range(len(train))]), train.labels)

    rows = {}
    for head, model in models.items():
        with torch.no_grad():
            clean = float((model(x).argmax(1) == y).double().mean())
        times = {"torchattacks": [], "robustproto": []}
        accuracy, report = {}, None
        for _ in range(args.repeats):  # interleaved, so load changes on a shared machine hit both sides alike
            torch.manual_seed(0)
            start = time.perf_counter()
            accuracy["torchattacks"] = direct(model, x, y, args.eps, args.batch_size)
            times["torchattacks"].append(time.perf_counter() - start)
            start = time.perf_counter()
            report = through_robustproto(model, x, y, args.eps, args.batch_size)
            times["robustproto"].append(time.perf_counter() - start)
            accuracy["robustproto"] = report["results"][0]["robust_accuracy"]
        best = {k: min(v) for k, v in times.items()}
        loss = report["results"][0]["loss"]
        target = 1.10
        if loss == "ce+margin":  # the CE run covers the points the margin run left: more work by design
            margin_only = robustproto.evaluate(model, (x, y), attacks=["pgd-20@margin"], eps=[args.eps])
            left = margin_only["results"][0]["robust_accuracy"] / clean
            target = round((1 + left) * 1.10, 3)
        rows[head] = {"clean_accuracy": clean, "loss": loss, "seconds": times, "best_seconds": best,
                      "robust_accuracy": accuracy, "ratio": best["robustproto"] / best["torchattacks"],
                      "target": target}

    print(f"PGD-20 L∞ eps={args.eps} on {len(y)} mnist-small test images, nearest-class-mean classifier on pixels, "
          f"batch {args.batch_size}, best of {args.repeats}, {torch.get_num_threads()} threads; robustproto on its "
          "default settings (attacks only the correctly classified points, re-checks every output)")
    print(f"{'head':<8}{'default loss':<14}{'torchattacks s':>16}{'robustproto s':>15}{'ratio':>8}{'target':>8}"
          f"{'acc (ta)':>10}{'acc (rp)':>10}")
    for head, r in rows.items():
        print(f"{head:<8}{r['loss']:<14}{r['best_seconds']['torchattacks']:>16.3f}{r['best_seconds']['robustproto']:>15.3f}"
              f"{r['ratio']:>8.3f}{r['target']:>8.3f}{r['robust_accuracy']['torchattacks']:>10.4f}"
              f"{r['robust_accuracy']['robustproto']:>10.4f}")
    result = {"model": "flatten + nearest class mean (mnist-small train)", "n": len(y), "batch_size": args.batch_size,
              "eps": args.eps, "repeats": args.repeats, "threads": torch.get_num_threads(), "heads": rows}
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
