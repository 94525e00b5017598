"""Training-step time with each adversarial-training regularizer divided by the step time without one.

The step and the timing are those of `benchmarks/reg_overhead.py` (its `Variant`: `robustproto.TrainStep`,
`robustproto.compute_losses` with the regularizer's `prepare_batch`, backward, optimizer step; resnet18 + GLVQ on
3×32×32 images, one fixed batch, variants interleaved one step per round, median after warm-up, fastest-step ratio
beside it). Targets: `fgsm-rs` ≤ 2.3×, `pgd-at` with K steps ≤ (K + 1.3)× (each attack step is a forward and an
input-gradient backward pass, no weight gradients), `trades` with K steps ≤ (K + 2.3)× (one more forward for p(x)
and the extra inputs doubling the training batch).

    python benchmarks/adv_overhead.py [--batch-size 32] [--rounds 5] [--warmup 1] [--steps 3,10]

Prints a markdown table and writes benchmarks/results/adv_overhead.json (or --json).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from reg_overhead import Variant  # noqa: E402  (the same step, timed the same way)


def variants_of(steps: list[int]) -> dict[str, tuple]:
    """label: (regularizer name and options, or None), target ratio."""
    out = {"none": (None, None), "fgsm-rs": (("fgsm-rs", {}), 2.3)}
    for k in steps:
        out[f"pgd-at K={k}"] = (("pgd-at", {"steps": k}), k + 1.3)
    for k in steps:
        out[f"trades K={k}"] = (("trades", {"steps": k}), k + 2.3)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--steps", default="3,10")
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=Path(__file__).parent / "results" / "adv_overhead.json")
    args = parser.parse_args()

    from accelerate import Accelerator

    accelerator = Accelerator(cpu=True)
    specs = variants_of([int(k) for k in args.steps.split(",")])
    g = torch.Generator().manual_seed(args.seed)
    x = torch.rand(args.batch_size, 3, 32, 32, generator=g)
    y = torch.arange(args.batch_size) % args.classes
    variants = {label: Variant(spec, args.classes, accelerator, args.seed) for label, (spec, _) in specs.items()}
    load_before = os.getloadavg()
    for round_index in range(args.warmup + args.rounds):
        for variant in variants.values():
            seconds = variant.step(x, y)
            if round_index >= args.warmup:
                variant.times.append(seconds)
        print(f"round {round_index + 1}/{args.warmup + args.rounds}", flush=True)
    load_after = os.getloadavg()
    base, best_base = statistics.median(variants["none"].times), min(variants["none"].times)
    results = {label: {"median_seconds": statistics.median(v.times), "ratio": statistics.median(v.times) / base,
                       "best_seconds": min(v.times), "best_ratio": min(v.times) / best_base,
                       "steps_timed": len(v.times), "target": specs[label][1]} for label, v in variants.items()}

    print(f"\nresnet18 + glvq, 3×32×32, batch {args.batch_size}, {torch.get_num_threads()} threads, median of "
          f"{args.rounds} interleaved steps; load average {load_before[0]:.1f} → {load_after[0]:.1f}\n")
    print("| regularizer | median (best) | target | met |\n|---|---|---|---|")
    for label, r in results.items():
        if label != "none":
            print(f"| {label} | {r['ratio']:.2f}× ({r['best_ratio']:.2f}×) | ≤ {r['target']:.1f}× | "
                  f"{'yes' if r['ratio'] <= r['target'] else 'no'} |")
    print(f"| (no regularizer, seconds/step) | {base:.3f} s | | |")

    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({
        "backbone": "resnet18", "head": "glvq", "input": [3, 32, 32], "batch_size": args.batch_size,
        "classes": args.classes, "rounds": args.rounds, "warmup": args.warmup, "threads": torch.get_num_threads(),
        "load_average_before": load_before, "load_average_after": load_after, "results": results,
    }, indent=2) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
