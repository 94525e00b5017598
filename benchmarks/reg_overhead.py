"""Training-step time with each built-in regularizer divided by the step time without one, side by side.

One step is what `robustproto train` runs per batch, through the public step (`robustproto.TrainStep`,
`robustproto.compute_losses`, `accelerator.backward`): forward with the regularizer's extra inputs, head loss
+ penalty, backward, optimizer step, `head.after_step` (for heads that have it). Backbone `resnet18` (timm) on
3×32×32 images (or `--backbone kp_cnn_mnist` on 1×28×28) with a GLVQ head, one fixed batch, K = 10 and K = 100
classes. Variants run interleaved (one
step of each per round), so contention from other processes hits them alike; after warm-up rounds each
variant's median is taken (the ratio of the fastest steps is printed beside it: other processes only ever slow
a step down). `cross-lipschitz exact` needs K backward passes, so it runs fewer rounds (it is shown for
contrast), and only up to --exact-max-classes classes (default 10: at K = 100 one step is ~100 backward passes).

    python benchmarks/reg_overhead.py [--backbone resnet18] [--batch-size 32] [--rounds 7] [--warmup 2]

Prints a markdown table and writes benchmarks/results/reg_overhead.json (reg_overhead_kp_cnn_mnist.json for that
backbone; or --json).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch

import robustproto
from robustproto import TrainStep, compute_losses, create_regularizer

VARIANTS = {  # label: (regularizer name and options, or None), target ratio
    "none": (None, None),
    "lipschitz": (("lipschitz", {}), 1.7),
    "cross-lipschitz estimate": (("cross-lipschitz", {"mode": "estimate"}), 3.0),
    "cross-lipschitz exact": (("cross-lipschitz", {"mode": "exact"}), None),
    "spectral-norm reshape": (("spectral-norm", {"mode": "reshape"}), 1.3),
    "spectral-norm operator": (("spectral-norm", {"mode": "operator"}), 1.3),
    "lipschitz-margin": (("lipschitz-margin", {}), 1.5),
}
INPUTS = {"resnet18": (3, 32, 32), "kp_cnn_mnist": (1, 28, 28)}  # --backbone: the image size it runs at
EXACT_ROUNDS = 2  # after one warm-up step: K backward passes each


class Variant:
    """A model, its regularizer and optimizer, and one training step as the loop runs it."""

    def __init__(self, reg_spec, backbone: str, num_classes: int, accelerator, seed: int):
        torch.manual_seed(seed)
        self.model = robustproto.wrap(backbone, head="glvq", num_classes=num_classes, in_chans=INPUTS[backbone][0])
        self.regs = {}
        if reg_spec is not None:
            name, options = reg_spec
            self.regs[name] = create_regularizer(name, **options)
            self.regs[name].attach(self.model)
        self.step_module = TrainStep(self.model).train()
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=1e-3)
        self.accelerator = accelerator
        self.needs_input_grad = any(r.needs_input_grad for r in self.regs.values())
        self.times: list[float] = []
        self.step_count = 0

    def step(self, x: torch.Tensor, y: torch.Tensor) -> float:
        started = time.perf_counter()
        x = x.clone().requires_grad_(self.needs_input_grad)
        losses = compute_losses(self.step_module, self.model, self.regs, x, y, self.step_count, self.accelerator)
        self.optimizer.zero_grad(set_to_none=True)
        self.accelerator.backward(losses.total)
        self.optimizer.step()
        if self.model.head.supports_after_step:
            with torch.no_grad():
                self.model.head.after_step()
        self.step_count += 1
        return time.perf_counter() - started


def run(num_classes: int, args, accelerator) -> dict[str, dict]:
    g = torch.Generator().manual_seed(args.seed)
    x = torch.rand(args.batch_size, *INPUTS[args.backbone], generator=g)
    y = torch.arange(args.batch_size) % num_classes
    variants = {label: Variant(spec, args.backbone, num_classes, accelerator, args.seed) for label, (spec, _) in VARIANTS.items()
                if label != "cross-lipschitz exact" or num_classes <= args.exact_max_classes}
    for round_index in range(args.warmup + args.rounds):
        for label, variant in variants.items():
            exact = label == "cross-lipschitz exact"
            if exact and round_index not in (0, *range(args.warmup, args.warmup + EXACT_ROUNDS)):
                continue
            seconds = variant.step(x, y)
            if round_index >= args.warmup:
                variant.times.append(seconds)
        print(f"K={num_classes} round {round_index + 1}/{args.warmup + args.rounds}", flush=True)
    base, best_base = statistics.median(variants["none"].times), min(variants["none"].times)
    return {label: {"median_seconds": statistics.median(v.times), "ratio": statistics.median(v.times) / base,
                    "best_seconds": min(v.times), "best_ratio": min(v.times) / best_base,
                    "steps_timed": len(v.times), "target": VARIANTS[label][1]} for label, v in variants.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", choices=list(INPUTS), default="resnet18")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--classes", default="10,100")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--exact-max-classes", type=int, default=10)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    suffix = "" if args.backbone == "resnet18" else f"_{args.backbone}"
    args.json = args.json or Path(__file__).parent / "results" / f"reg_overhead{suffix}.json"

    from accelerate import Accelerator

    accelerator = Accelerator(cpu=True)
    load_before = os.getloadavg()
    results = {int(k): run(int(k), args, accelerator) for k in args.classes.split(",")}
    load_after = os.getloadavg()

    classes = list(results)
    size = "×".join(map(str, INPUTS[args.backbone]))
    print(f"\n{args.backbone} + glvq, {size}, batch {args.batch_size}, {torch.get_num_threads()} threads, median of "
          f"{args.rounds} interleaved steps ({EXACT_ROUNDS} for exact); load average {load_before[0]:.1f} → "
          f"{load_after[0]:.1f}\n")
    print("| regularizer | " + " | ".join(f"K={k}: median (best)" for k in classes) + " | target |")
    print("|---" * (len(classes) + 2) + "|")
    for label in VARIANTS:
        if label == "none":
            continue
        ratios = " | ".join(f"{results[k][label]['ratio']:.2f}× ({results[k][label]['best_ratio']:.2f}×)"
                            if label in results[k] else "not run" for k in classes)
        target = VARIANTS[label][1]
        print(f"| {label} | {ratios} | {f'≤ {target}×' if target else 'contrast'} |")
    print("| (no regularizer, seconds/step) | " + " | ".join(
        f"{results[k]['none']['median_seconds']:.3f} s" for k in classes) + " | |")
    if len(classes) == 2:
        a, b = classes
        spread = results[b]["cross-lipschitz estimate"]["ratio"] / results[a]["cross-lipschitz estimate"]["ratio"]
        print(f"\ncross-lipschitz estimate, K={b} / K={a}: {spread:.2f} (target ≤ 1.2)")

    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({
        "backbone": args.backbone, "head": "glvq", "input": list(INPUTS[args.backbone]), "batch_size": args.batch_size,
        "rounds": args.rounds, "warmup": args.warmup, "exact_rounds": EXACT_ROUNDS,
        "threads": torch.get_num_threads(), "load_average_before": load_before, "load_average_after": load_after,
        "results": {str(k): v for k, v in results.items()},
    }, indent=2) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
