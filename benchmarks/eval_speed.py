"""Overhead of ``robustproto.evaluate`` over torchattacks called directly: PGD-20 (L∞) on the same model and data.

Both sides, interleaved and repeated (best of ``--repeats``), in one run:

- direct: ``torchattacks.PGD(model, eps, alpha=2.5·eps/20, steps=20)`` on every image in batches, then one
  forward pass for the robust accuracy (what a user would write by hand);
- robustproto: ``robustproto.evaluate(model, (x, y), attacks=["pgd-20"], eps=[eps], bisection_steps=0)``, which
  also runs the clean pass, attacks only the correctly classified points and re-checks every output.

Prints a table and the overhead ratio (target ≤ 1.10) and writes benchmarks/results/eval_speed.json.

    python benchmarks/eval_speed.py [--backbone flatten] [--n 512] [--batch-size 128] [--repeats 3]
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


def through_robustproto(model, x, y, eps, batch_size) -> float:
    report = robustproto.evaluate(model, (x, y), attacks=["pgd-20"], eps=[eps], batch_size=batch_size,
                                  bisection_steps=0)
    return report["results"][0]["robust_accuracy"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="flatten")
    parser.add_argument("--head", default="glvq")
    parser.add_argument("--n", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--eps", type=float, default=0.1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "eval_speed.json"))
    args = parser.parse_args()

    from robustproto.data import load_split

    data = load_split("mnist-small", "test", max_samples=args.n)
    x = torch.stack([data[i][0] for i in range(len(data))])
    y = data.labels.clone()
    model = robustproto.wrap(args.backbone, head=args.head, num_classes=10)
    with torch.no_grad():
        model.head.init_from_data(model.embed(x), y)
    model.eval()
    with torch.no_grad():
        clean = float((model(x).argmax(1) == y).double().mean())

    times = {"torchattacks": [], "robustproto": []}
    accuracy = {}
    for _ in range(args.repeats):  # interleaved, so load changes on a shared machine hit both sides alike
        for name, run in (("torchattacks", direct), ("robustproto", through_robustproto)):
            torch.manual_seed(0)
            start = time.perf_counter()
            accuracy[name] = run(model, x, y, args.eps, args.batch_size)
            times[name].append(time.perf_counter() - start)
    best = {k: min(v) for k, v in times.items()}
    ratio = best["robustproto"] / best["torchattacks"]
    print(f"PGD-20 L∞ eps={args.eps} on {len(y)} mnist-small test images, {args.backbone}+{args.head}, "
          f"batch {args.batch_size}, best of {args.repeats}, {torch.get_num_threads()} threads; clean accuracy "
          f"{clean:.3f} (robustproto attacks only the correct points, the direct loop all of them)")
    print(f"{'path':<14}{'seconds':>10}{'robust acc':>12}")
    for name in times:
        print(f"{name:<14}{best[name]:>10.3f}{accuracy[name]:>12.4f}")
    print(f"overhead ratio robustproto / torchattacks: {ratio:.3f} (target ≤ 1.10)")
    result = {"backbone": args.backbone, "head": args.head, "n": len(y), "batch_size": args.batch_size,
              "eps": args.eps, "clean_accuracy": clean, "repeats": args.repeats, "threads": torch.get_num_threads(), "seconds": times,
              "best_seconds": best, "robust_accuracy": accuracy, "ratio": ratio, "target": 1.10}
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
