"""Shared fixtures: tiny data and tiny models, so the suite stays fast on a 2-core CPU."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest
import torch

import robustproto
from robustproto.registry import head_registry, regularizer_registry


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def load_benchmark():
    """``load(name)``: the script ``benchmarks/<name>.py`` imported as module ``name``, registered in
    ``sys.modules`` for the session (dataclasses resolve annotations through it)."""
    benchmarks = Path(__file__).resolve().parents[1] / "benchmarks"
    patch = pytest.MonkeyPatch()

    def load(name: str):
        spec = importlib.util.spec_from_file_location(name, benchmarks / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        patch.setitem(sys.modules, name, module)
        spec.loader.exec_module(module)
        return module

    yield load
    patch.undo()


@pytest.fixture
def mnist_like():
    """32 random 1×28×28 images in [0, 1] with labels covering 10 classes."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(32, 1, 28, 28, generator=g)
    y = torch.arange(32) % 10
    return x, y


@pytest.fixture
def write_cifar10(monkeypatch):
    """``write(root, images, labels, split)``: a fake CIFAR-10 in torchvision's files under ``root`` (uint8 images
    ``(N, 3, 32, 32)``, labels in 0..9; ``split`` ``"test"``: ``test_batch``, ``"train"``: ``data_batch_1..5``),
    read by ``torchvision.datasets.CIFAR10(root)``, whose md5 check is switched off for this test. Returns
    ``root``."""
    import pickle
    from pathlib import Path

    import numpy as np
    import torchvision.datasets.cifar as tv_cifar

    monkeypatch.setattr(tv_cifar, "check_integrity", lambda *args, **kwargs: True)  # the fake files have other md5s

    def write(root, images, labels, split: str = "test"):
        folder = Path(root) / "cifar-10-batches-py"
        folder.mkdir(parents=True, exist_ok=True)
        images, labels = np.asarray(images, dtype=np.uint8), np.asarray(labels)
        names = ["test_batch"] if split == "test" else [f"data_batch_{i}" for i in range(1, 6)]
        for name, part in zip(names, np.array_split(np.arange(len(images)), len(names))):
            with open(folder / name, "wb") as f:
                pickle.dump({"data": images[part].reshape(len(part), -1), "labels": labels[part].tolist()}, f)
        with open(folder / "batches.meta", "wb") as f:
            pickle.dump({"label_names": [f"class{k}" for k in range(10)]}, f)
        return Path(root)

    return write


@pytest.fixture
def register():
    """``register(kind, name, cls)``: ``robustproto.register_head`` (kind ``"head"``) or ``register_regularizer``
    (``"regularizer"``) for this test only. The way to add a plugin to a test that runs in this process."""
    functions = {"head": robustproto.register_head, "regularizer": robustproto.register_regularizer}
    registries = {"head": head_registry, "regularizer": regularizer_registry}
    done: list[tuple[str, str]] = []

    def add(kind: str, name: str, cls: type) -> type:
        functions[kind](name, cls)
        done.append((kind, name))
        return cls

    yield add
    for kind, name in reversed(done):
        registries[kind].unregister(name)


# A third-party plugin distribution for the training tests: a tiny head with observable hooks and a
# probe regularizer. It is installed the way pip would (a dist-info folder on sys.path), not registered
# in-process, because subprocesses (torchrun, a second interpreter loading a checkpoint) must find it
# through PYTHONPATH too, and checkpoints record its distribution as the plugins' source.
TESTKIT = '''
import os
import signal

import torch
import torch.nn.functional as F

import robustproto


class TinyHead(robustproto.Head):
    """A linear head with cross-entropy; init_from_data puts class means in its weights, after_step counts."""

    def __init__(self, embed_dim, num_classes):
        super().__init__(embed_dim, num_classes)
        self.weight = torch.nn.Parameter(torch.zeros(num_classes, embed_dim))
        self.bias = torch.nn.Parameter(torch.zeros(num_classes))
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))
        self.register_buffer("init_count", torch.zeros((), dtype=torch.long))

    def forward(self, z):
        return z @ self.weight.t() + self.bias

    def loss(self, z, scores, y):
        return F.cross_entropy(scores.float(), y)

    def init_from_data(self, z, y):
        for k in range(self.num_classes):
            if (y == k).any():
                self.weight.data[k] = z[y == k].mean(0) * 0.01
        self.init_count += 1

    def after_step(self):
        self.steps += 1


class ProbeReg(robustproto.Regularizer):
    """weight * mean squared distance between the embeddings of x and of x flipped left-right.

    nan_at_step / interrupt_at_step inject a NaN penalty or a SIGINT at that (0-based) global step.
    """

    def __init__(self, weight=1.0, nan_at_step=-1, interrupt_at_step=-1, input_grad=False):
        super().__init__()
        self.weight = weight
        self.nan_at_step = nan_at_step
        self.interrupt_at_step = interrupt_at_step
        self.needs_input_grad = input_grad
        self.calls = 0
        self.shape_ok = 0
        self.input_grad = 0

    def extra_inputs(self, x):
        return x.flip(-1)

    def penalty(self, ctx):
        self.calls += 1
        self.shape_ok += int(ctx.extra_z.shape == ctx.z.shape)
        self.input_grad += int(ctx.x.requires_grad)
        if ctx.step == self.interrupt_at_step:
            os.kill(os.getpid(), signal.SIGINT)
        value = self.weight * (ctx.z.float() - ctx.extra_z.float()).pow(2).sum(1).mean()
        if ctx.step == self.nan_at_step:
            value = value * float("nan")
        return value

    def metrics(self):
        return {"calls": self.calls, "shape_ok": self.shape_ok / max(self.calls, 1),
                "input_grad": self.input_grad / max(self.calls, 1)}
'''


@pytest.fixture(scope="session")
def testkit(tmp_path_factory):
    """Installs the ``robustproto-testkit`` distribution (head ``tiny``, regularizer ``probe``); yields its folder."""
    root = tmp_path_factory.mktemp("testkit")
    (root / "rp_testkit.py").write_text(TESTKIT)
    info = root / "robustproto_testkit-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: robustproto-testkit\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        "[robustproto.heads]\ntiny = rp_testkit:TinyHead\n\n[robustproto.regularizers]\nprobe = rp_testkit:ProbeReg\n")
    sys.path.insert(0, str(root))
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), old]))
    robustproto.refresh_plugins()
    yield root
    sys.path.remove(str(root))
    if old is None:
        os.environ.pop("PYTHONPATH", None)
    else:
        os.environ["PYTHONPATH"] = old
    robustproto.refresh_plugins()
