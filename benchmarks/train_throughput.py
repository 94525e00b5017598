"""Training throughput of `robustproto train` against a plain timm + cross-entropy loop, side by side.

Both train the same backbone on the same data with the same batch size, optimizer and DataLoader;
the plain loop is what a timm user writes by hand (model → logits → cross-entropy → Adam). The
robustproto side is the real training loop (`robustproto.train`, one epoch), and its number is the
`images_per_second` it logs (training steps only, without the evaluation pass). Variants run
interleaved, `--repeats` times. The overhead is computed from each variant's best run (as timeit
does: other processes on the machine only ever slow a run down); the median is printed beside it.

    python benchmarks/train_throughput.py --backbone resnet18 --heads linear,glvq,gtlvq,repulsive

Prints a table and writes benchmarks/results/train_throughput.json (or --json).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import timm
import torch
from torch.utils.data import DataLoader

import robustproto
from robustproto.config import resolve_config
from robustproto.data import EpochShuffleSampler, SeededItems, load_split


def plain_timm_loop(backbone: str, data, batch_size: int, lr: float, seed: int) -> float:
    """Images/s of one epoch of a hand-written timm + cross-entropy training loop."""
    torch.manual_seed(seed)
    model = timm.create_model(backbone, num_classes=data.num_classes, in_chans=data.in_chans)
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    loader = DataLoader(SeededItems(data, seed), batch_size=batch_size, sampler=EpochShuffleSampler(len(data), seed))
    seen = 0
    started = time.perf_counter()
    for x, y in loader:
        loss = torch.nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        seen += len(y)
    return seen / (time.perf_counter() - started)


def robustproto_loop(backbone: str, head: str, args, out: Path) -> float:
    """Images/s that `robustproto.train` logs for one epoch with ``head``."""
    cfg = resolve_config({
        "backbone": backbone, "head": head, "dataset": args.dataset, "data_dir": args.data_dir,
        "img_size": args.img_size, "max_train_samples": args.samples, "max_test_samples": args.batch_size,
        "batch_size": args.batch_size, "epochs": 1, "lr": args.lr, "optimizer": "adam", "sched": "none",
        "seed": args.seed, "output": str(out / head), "init_samples": args.batch_size * 4,
    })
    return robustproto.train(cfg).metrics[-1]["images_per_second"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--heads", default="linear,glvq,gtlvq,repulsive")
    parser.add_argument("--dataset", default="mnist-small")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--img-size", type=int, default=None)
    parser.add_argument("--samples", type=int, default=512, help="training images per epoch")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=str(Path(__file__).parent / "results" / "train_throughput.json"))
    args = parser.parse_args()

    heads = [h for h in args.heads.split(",") if h]
    data = load_split(args.dataset, "train", args.data_dir, img_size=args.img_size, max_samples=args.samples)
    results: dict[str, list[float]] = {"plain timm + CE": [], **{f"robustproto {h}": [] for h in heads}}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.repeats):
            results["plain timm + CE"].append(plain_timm_loop(args.backbone, data, args.batch_size, args.lr, args.seed))
            for head in heads:
                results[f"robustproto {head}"].append(robustproto_loop(args.backbone, head, args, Path(tmp)))

    baseline = max(results["plain timm + CE"])
    rows = []
    for name, values in results.items():
        best = max(values)
        rows.append({"variant": name, "images_per_second": best, "median_images_per_second": statistics.median(values),
                     "all_runs": values, "overhead_vs_plain": baseline / best - 1.0})
    print(f"\n{args.backbone} on {args.dataset} ({len(data)} images, batch {args.batch_size}, "
          f"{torch.get_num_threads()} threads, best and median of {args.repeats} interleaved runs)")
    print(f"{'variant':<26}{'best img/s':>12}{'median':>10}{'overhead':>10}")
    for row in rows:
        print(f"{row['variant']:<26}{row['images_per_second']:>12.0f}{row['median_images_per_second']:>10.0f}"
              f"{row['overhead_vs_plain']:>+10.1%}")
    report = {"backbone": args.backbone, "dataset": args.dataset, "samples": len(data), "batch_size": args.batch_size,
              "img_size": list(data.img_size), "threads": torch.get_num_threads(), "repeats": args.repeats,
              "torch": torch.__version__, "robustproto": robustproto.__version__, "results": rows}
    Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
