"""Tiny training runs for the tests of :mod:`robustproto.training`: timm's ``test_resnet`` with the testkit's
head ``tiny`` on a few hundred bundled MNIST images (imported by the test modules beside it)."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader

from robustproto.config import resolve_config
from robustproto.data import load_split

TRAIN, TEST, BATCH = 256, 67, 16  # 16 steps per epoch; an odd test size checks gather_for_metrics' de-duplication


def tiny(tmp_path, name="run", **overrides):
    """The resolved config of a tiny run writing to ``tmp_path / name``."""
    layer = {"backbone": "test_resnet", "head": "tiny", "max_train_samples": TRAIN, "max_test_samples": TEST,
             "batch_size": BATCH, "epochs": 2, "lr": 0.01, "output": str(tmp_path / name)}
    layer.update(overrides)
    return resolve_config(layer)


def accuracy(model, split="test", n=TEST):
    """The model's accuracy on the first ``n`` samples of a bundled MNIST split."""
    data = load_split("mnist-small", split, max_samples=n)
    with torch.no_grad():
        pred = torch.cat([model(x).argmax(1) for x, _ in DataLoader(data, batch_size=50)])
    return int((pred == data.labels).sum()) / len(data)
