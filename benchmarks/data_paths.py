"""Throughput of robustproto's two data paths on the same images: in memory (built-in names) vs timm's streamed one.

Both sides feed the same model the same batches' worth of images: one epoch of a DataLoader over the training
split (EpochShuffleSampler and SeededItems, as `robustproto train` builds it) with a plain training step (flatten + linear head,
cross-entropy, Adam), so the difference is the data path. The in-memory side is a built-in name (`mnist`, or
`imagefolder`: decoded into memory before the epoch, load time printed apart); the timm side is the matching timm
spec (`torch/mnist`, or the folder's path: decoded and transformed per item by timm's evaluation transform, no
augmentation). Data: MNIST from ../shared/data when it is there, else a generated image folder of 64×64 PNGs.

    python benchmarks/data_paths.py --max-samples 2000

Prints img/s of each path and their ratio.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

import robustproto
from robustproto.data import EpochShuffleSampler, SeededItems, load_split

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def images_per_second(data, batch_size: int, workers: int) -> float:
    """Images/s of one epoch of loading ``data`` and a plain training step on each batch."""
    torch.manual_seed(0)
    model = robustproto.wrap("flatten", head="linear", num_classes=data.num_classes, in_chans=data.in_chans,
                             img_size=data.img_size[0])
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loader = DataLoader(SeededItems(data, 0), batch_size=batch_size, sampler=EpochShuffleSampler(len(data), 0),
                        num_workers=workers)
    start, seen = time.perf_counter(), 0
    for x, y in loader:
        loss = torch.nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        seen += len(x)
    return seen / (time.perf_counter() - start)


def generated_folder(root: Path, n: int, size: int = 64) -> Path:
    """``n`` random PNGs of ``size``×``size`` in two classes under ``root/train/<class>/``."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(n):
        folder = root / "train" / f"c{i % 2}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return root


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--max-samples", type=int, default=2000, help="training images per path")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--workers", type=int, default=0, help="DataLoader workers (both paths)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if (SHARED / "MNIST" / "raw").is_dir():
            what = f"MNIST ({SHARED})"
            memory_args, timm_spec, data_dir, size = ("mnist",), "torch/mnist", str(SHARED), None
        else:
            root = generated_folder(Path(tmp), args.max_samples)
            what = f"a generated folder of {args.max_samples} 64×64 PNGs"
            memory_args, timm_spec, data_dir, size = ("imagefolder",), str(root), str(root), 64
        start = time.perf_counter()
        memory = load_split(*memory_args, "train", data_dir=data_dir, img_size=size, max_samples=args.max_samples,
                            augment="none")
        load_s = time.perf_counter() - start
        streamed = load_split(timm_spec, "train", data_dir=data_dir, img_size=size, max_samples=args.max_samples,
                              augment="none")
        fast = images_per_second(memory, args.batch_size, args.workers)
        slow = images_per_second(streamed, args.batch_size, args.workers)
    print(f"{what}: {len(memory)} training images, batch {args.batch_size}, {args.workers} worker(s)")
    print(f"in memory ({memory_args[0]}): {fast:8.0f} img/s  (loaded in {load_s:.1f} s)")
    print(f"timm ({timm_spec}): {slow:8.0f} img/s")
    print(f"ratio in memory / timm: {fast / slow:.1f}×")


if __name__ == "__main__":
    main()
