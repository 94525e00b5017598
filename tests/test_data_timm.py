"""Datasets through timm: specs (a folder, torch/cifar10), timm's transforms without normalisation, streaming."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import robustproto
from robustproto.cli import app
from robustproto.config import TrainConfig
from robustproto.data import TimmData, load_split
from robustproto.errors import UsageError
from robustproto.show import run_data
from robustproto.training.step import TrainStep

BUDGET = 18
SHARED_MNIST = Path(__file__).resolve().parents[2] / "shared" / "data"


def _write_folder(root: Path, per_class: int, size: int = 64, splits=("train", "val")) -> Path:
    """PNG images of two classes under ``root/<split>/<class>/``."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in splits:
        for c in ("cat", "dog"):
            (root / split / c).mkdir(parents=True)
            for i in range(per_class):
                Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(root / split / c / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return _write_folder(tmp_path_factory.mktemp("folder"), per_class=4)


def _tiny(tmp_path: Path, **changes) -> TrainConfig:
    base = dict(backbone="flatten", backbone_opt={"img_size": 16}, head="linear", img_size=16, epochs=1,
                batch_size=8, output=str(tmp_path / "run"))
    return TrainConfig(**{**base, **changes})


def test_folder_spec_gives_unnormalised_images_labels_and_classes(folder):
    train = load_split(str(folder), "train", img_size=24)
    test = load_split(str(folder), "test", img_size=24)
    assert isinstance(train, TimmData) and (len(train), len(test)) == (8, 8)
    assert train.classes == ["cat", "dog"] and train.in_chans == 3 and train.img_size == (24, 24)
    xs, ys = zip(*(train[i] for i in range(len(train))))
    x = torch.stack(xs)
    assert x.shape == (8, 3, 24, 24) and x.dtype == torch.float32
    assert 0.0 <= x.min() and x.max() <= 1.0 and x.mean() > 0.2  # [0, 1], not mean/std-normalised
    assert sorted(torch.stack(ys).tolist()) == [0, 0, 0, 0, 1, 1, 1, 1]
    assert torch.equal(test[0][0], test[0][0])  # evaluation: no randomness
    assert len(load_split(str(folder), "train", max_samples=3)) == 3


def test_options_reach_timms_transform(folder):
    plain = repr(load_split(str(folder), "train", img_size=24).transform)
    assert "RandAugment" not in plain and "RandomErasing" not in plain and "scale=(0.08, 1.0)" in plain
    tuned = load_split(str(folder), "train", img_size=24, aa="rand-m9-mstd0.5", reprob=0.25, scale=(0.5, 1.0),
                       interpolation="bicubic")
    text = repr(tuned.transform)
    assert "RandAugment" in text and "RandomErasing(p=0.25" in text and "scale=(0.5, 1.0)" in text
    assert "bicubic" in text
    evaluation = repr(load_split(str(folder), "test", img_size=24, interpolation="bicubic").transform)
    assert "RandAugment" not in evaluation and "Random" not in evaluation and "bicubic" in evaluation
    assert "Random" not in repr(tuned.without_augmentation().transform)
    assert "Random" not in repr(load_split(str(folder), "train", img_size=24, augment="none").transform)


def test_timms_random_transforms_are_seeded_per_item_in_training(folder):
    from torch.utils.data import DataLoader

    from robustproto.data import EpochShuffleSampler, SeededItems

    data = SeededItems(load_split(str(folder), "train", img_size=24, aa="rand-m9-mstd0.5", reprob=0.5), seed=0)
    assert not torch.equal(data.data[3][0], data.data[3][0])  # RandAugment, random crops and erasing: random
    sampler = EpochShuffleSampler(len(data), seed=0)
    sampler.set_epoch(1)
    batches = [torch.cat([x for x, _ in DataLoader(data, batch_size=4, sampler=sampler, num_workers=workers)])
               for workers in (0, 2)]
    assert torch.equal(*batches)  # the same images whichever process loads them
    assert torch.equal(batches[0][:1], data[next(iter(sampler))][0][None])


def test_folder_larger_than_the_decode_budget_streams_through_training(tmp_path, monkeypatch):
    """64 images of 64×64 against a budget of 18 decoded images (2 batches of 8 and the dry run's 2) at the first
    step: the images are decoded batch by batch as training goes. The in-memory imagefolder path decodes all 64 up
    front, and fails this."""
    import PIL.Image

    root = _write_folder(tmp_path / "big", per_class=32, splits=("train",))
    opened = []
    real_open = PIL.Image.open
    monkeypatch.setattr(PIL.Image, "open", lambda *a, **k: (opened.append(1), real_open(*a, **k))[1])

    load_split("imagefolder", "train", data_dir=str(root), img_size=16)
    assert len(opened) == 64  # the contrast: the in-memory path decodes everything before the first step
    opened.clear()

    at_step = []
    real_forward = TrainStep.forward
    monkeypatch.setattr(TrainStep, "forward", lambda self, x, extra: (at_step.append(len(opened)),
                                                                     real_forward(self, x, extra))[1])
    result = robustproto.train(_tiny(tmp_path, dataset=str(root / "train"), max_test_samples=8))
    train_steps = at_step[:8]  # then the test split's one batch
    # by step i: the dry run's 2 images, the step's batch and the one Accelerate's loader fetches ahead, no more
    assert all(n <= 2 + 8 * (i + 2) for i, n in enumerate(train_steps)) and train_steps[0] <= BUDGET
    assert train_steps[-1] == 2 + 64 and len(at_step) == 9
    assert result is not None and (tmp_path / "run" / "model.safetensors").is_file()


def test_cli_trains_on_torch_cifar10_and_eval_reads_its_test_split(tmp_path, write_cifar10):
    rng = np.random.default_rng(0)
    data_dir = tmp_path / "cifar"
    write_cifar10(data_dir, rng.integers(0, 256, (20, 3, 32, 32)), np.arange(20) % 10, "train")
    write_cifar10(data_dir, rng.integers(0, 256, (12, 3, 32, 32)), np.arange(12) % 10, "test")
    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["train", "--dataset", "torch/cifar10", "--data-dir", str(data_dir),
                                      "--backbone", "flatten", "--backbone-opt", "img_size=32", "--epochs", "1",
                                      "--batch-size", "8", "--reprob", "0.25", "--output", str(out)])
    assert result.exit_code == 0, result.output
    test = run_data(out, "test")
    assert isinstance(test, TimmData) and len(test) == 12 and test.img_size == (32, 32)
    x, y = test[3]
    assert x.shape == (3, 32, 32) and int(y) == 3 and "Random" not in repr(test.transform)


@pytest.mark.skipif(not (SHARED_MNIST / "MNIST" / "raw").is_dir(), reason="shared MNIST not present")
def test_torch_mnist_is_one_channel_at_its_own_size():
    data = load_split("torch/mnist", "test", data_dir=str(SHARED_MNIST), max_samples=4)
    assert data.in_chans == 1 and data[0][0].shape == (1, 28, 28) and data.num_classes == 10


@pytest.mark.parametrize("call, option", [
    (lambda d: load_split("foo/bar", "train"), "dataset"),
    (lambda d: load_split(str(d / "missing"), "train"), "dataset"),
    (lambda d: load_split("wds/shards", "train"), "dataset"),
    (lambda d: load_split("mnist-small", "train", aa="rand-m9"), "aa"),
    (lambda d: load_split("mnist-small", "train", reprob=0.5), "reprob"),
    (lambda d: load_split("torch/cifar10", "train", data_dir=str(d), augment="crop-flip"), "augment"),
    (lambda d: TrainConfig(dataset="mnist-small", reprob=2.0), "reprob"),
    (lambda d: TrainConfig(dataset="mnist-small", scale=(0.5,)), "scale"),
    (lambda d: TrainConfig(dataset="mnist-small", interpolation="cubic"), "interpolation"),
])
def test_bad_input_is_a_one_line_usage_error_naming_the_option(tmp_path, call, option):
    with pytest.raises(UsageError) as err:
        call(tmp_path)
    assert str(err.value).startswith(f"{option}:") and "\n" not in str(err.value)


def test_a_bad_auto_augment_policy_names_aa(folder):
    with pytest.raises(UsageError, match="^aa:"):
        load_split(str(folder), "train", aa="nonsense-policy")
