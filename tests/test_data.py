"""Datasets: images in [0, 1], fixed subsets, resizing, augmentation only for training, clear errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from robustproto.data import EpochShuffleSampler, LightAugment, load_split
from robustproto.errors import MissingFileError, UsageError

SHARED_MNIST = Path(__file__).resolve().parents[2] / "shared" / "data"


def test_bundled_mnist_subset_is_the_offline_default():
    train, test = load_split("mnist-small", "train"), load_split("mnist-small", "test")
    assert (len(train), len(test)) == (5000, 1000)
    x, y = train[0]
    assert x.shape == (1, 28, 28) and x.dtype == torch.float32 and 0.0 <= x.min() and x.max() == 1.0
    assert train.num_classes == 10 and train.in_chans == 1 and train.augment is None
    assert set(train.labels.tolist()) == set(range(10))


@pytest.mark.skipif(not (SHARED_MNIST / "MNIST" / "raw").is_dir(), reason="shared MNIST not present")
def test_bundled_subset_is_the_first_images_of_mnist():
    full = load_split("mnist", "test", data_dir=str(SHARED_MNIST))
    small = load_split("mnist-small", "test")
    assert len(full) == 10_000
    assert torch.equal(full.images[:1000], small.images) and torch.equal(full.labels[:1000], small.labels)


def test_max_samples_is_a_fixed_class_mixed_subset():
    a = load_split("mnist-small", "train", max_samples=100)
    b = load_split("mnist-small", "train", max_samples=100)
    assert len(a) == 100 and torch.equal(a.images, b.images)
    assert len(set(a.labels.tolist())) == 10


def test_img_size_resizes_every_split():
    data = load_split("mnist-small", "test", img_size=32, max_samples=8)
    assert data[0][0].shape == (1, 32, 32) and data.img_size == (32, 32)


def test_missing_dataset_says_what_to_pass(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        load_split("cifar10", "train", data_dir=str(tmp_path))
    message = str(err.value)
    assert "--data-dir" in message and "--download" in message and "\n" not in message
    assert isinstance(err.value, MissingFileError)
    with pytest.raises(FileNotFoundError, match="--data-dir"):
        load_split("mnist", "train")


def _write_folder(root: Path, split: str, classes: list[str], per_class: int = 3, size: int = 40) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in classes:
        (root / split / c).mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, (size, size + 8, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / split / c / f"{i}.png")


def test_imagefolder_train_and_val(tmp_path):
    _write_folder(tmp_path, "train", ["cat", "dog"])
    _write_folder(tmp_path, "val", ["cat", "dog"], per_class=2)
    train = load_split("imagefolder", "train", data_dir=str(tmp_path), img_size=32)
    test = load_split("imagefolder", "test", data_dir=str(tmp_path), img_size=32)
    assert (len(train), len(test)) == (6, 4)
    assert train.classes == ["cat", "dog"] and train[0][0].shape == (3, 32, 32)
    assert isinstance(train.augment, LightAugment) and test.augment is None
    assert sorted(test.labels.tolist()) == [0, 0, 1, 1]


def test_imagefolder_with_different_classes_is_an_error(tmp_path):
    _write_folder(tmp_path, "train", ["cat", "dog"])
    _write_folder(tmp_path, "test", ["cat", "cow"])
    with pytest.raises(ValueError, match="classes"):
        load_split("imagefolder", "test", data_dir=str(tmp_path), img_size=16)


@pytest.mark.parametrize("flip", [False, True])
def test_light_augment_is_a_zero_padded_shift_of_at_most_pad_pixels_then_maybe_a_flip(flip):
    pad, size = 2, 8
    img = torch.arange(1, 3 * size * size + 1, dtype=torch.uint8).view(3, size, size)  # distinct, non-zero pixels
    padded = torch.nn.functional.pad(img, (pad,) * 4)
    crops = {(i, j): padded[:, i:i + size, j:j + size] for i in range(2 * pad + 1) for j in range(2 * pad + 1)}
    torch.manual_seed(0)
    shifts, flips = set(), 0
    for _ in range(200):
        out = LightAugment(pad=pad, flip=flip)(img)
        found = [(shift, flipped) for shift, crop in crops.items() for flipped in (False, True)
                 if torch.equal(out, crop.flip(-1) if flipped else crop)]
        assert len(found) == 1, "not the image shifted by at most pad pixels with zeros shifted in (and flipped)"
        shifts.add(found[0][0])
        flips += found[0][1]
    assert len(shifts) == (2 * pad + 1) ** 2  # every shift occurs
    assert 70 <= flips <= 130 if flip else flips == 0  # a fair coin for the flip, and none without it


def test_shuffle_is_a_permutation_that_depends_only_on_seed_and_epoch():
    s1, s2 = EpochShuffleSampler(50, seed=3), EpochShuffleSampler(50, seed=3)
    s1.set_epoch(2)
    s2.set_epoch(2)
    torch.manual_seed(1)  # the global RNG does not enter the order
    first = list(s1)
    torch.manual_seed(2)
    assert first == list(s2) == list(s1) and len(s1) == 50
    assert {epoch for epoch, _ in first} == {2} and sorted(i for _, i in first) == list(range(50))  # (epoch, index)
    s2.set_epoch(3)
    assert [i for _, i in s2] != [i for _, i in first] and sorted(i for _, i in s2) == list(range(50))  # each epoch
    other = EpochShuffleSampler(50, seed=4)
    other.set_epoch(2)
    assert list(other) != first  # and each seed


def test_an_items_augmentation_depends_only_on_seed_epoch_and_index():
    from robustproto.data import SeededItems

    data = SeededItems(load_split("mnist-small", "train", max_samples=20, augment="shift-rotate"), seed=0)
    torch.manual_seed(1)
    image = data[(2, 7)][0]
    outside = torch.rand(3)
    torch.manual_seed(1)
    assert torch.equal(data[(0, 3)][0], data[(0, 3)][0])  # whatever was drawn before
    assert torch.equal(data[(2, 7)][0], image) and torch.equal(torch.rand(3), outside)  # the global RNG is put back
    assert not torch.equal(data[(3, 7)][0], image)  # another epoch, another augmentation
    assert not torch.equal(SeededItems(data.data, seed=1)[(2, 7)][0], image)  # and another seed
    assert len(data) == 20 and torch.equal(data[(2, 7)][1], data.data[7][1])


def test_seeded_items_seed_only_the_rngs_the_augmentation_draws_from(monkeypatch):
    """Seeding torch's generators through ``torch.manual_seed`` also reseeds every CUDA generator (the training step's
    random starts on a GPU) and cost 0.26 ms an item; saving NumPy's state another 0.12 ms. A torch-only augmentation
    needs neither, un-augmented data nothing at all."""
    import numpy as np

    from robustproto.data import SeededItems

    def forbidden(*args, **kwargs):
        raise AssertionError("not needed here")

    plain = load_split("mnist-small", "train", max_samples=20)
    augmented = load_split("mnist-small", "train", max_samples=20, augment="shift-rotate")
    image = SeededItems(augmented, seed=0)[(2, 7)][0]
    monkeypatch.setattr(torch, "manual_seed", forbidden)
    monkeypatch.setattr(torch.cuda, "manual_seed_all", forbidden)
    monkeypatch.setattr(np.random, "get_state", forbidden)
    assert torch.equal(SeededItems(augmented, seed=0)[(2, 7)][0], image)  # the same image as before, more cheaply
    monkeypatch.setattr(torch.random, "fork_rng", forbidden)
    assert torch.equal(SeededItems(plain, seed=0)[(2, 7)][0], plain[7][0])  # nothing random: nothing seeded


def test_augment_option_selects_the_augmentation():
    from robustproto.data import ShiftRotate

    assert load_split("mnist-small", "train", max_samples=10).augment is None  # auto: none on MNIST
    data = load_split("mnist-small", "train", max_samples=10, augment="shift-rotate")
    assert isinstance(data.augment, ShiftRotate)
    assert isinstance(load_split("mnist-small", "train", max_samples=10, augment="crop-flip").augment, LightAugment)
    with pytest.raises(UsageError, match="augment: 'twist' is not one of"):  # a ValueError
        load_split("mnist-small", "train", max_samples=10, augment="twist")


def test_shift_rotate_moves_the_digit_but_keeps_its_mass():
    from robustproto.data import ShiftRotate

    data = load_split("mnist-small", "train", max_samples=5, augment=False)
    img = data.uint8(0)
    torch.manual_seed(1)
    out = ShiftRotate()(img)
    assert out.shape == img.shape and out.dtype == torch.uint8
    assert not torch.equal(out, img)
    # a ±2 px shift and ±15° rotation keep an MNIST digit (centred, with a 4 px border) inside the frame
    assert abs(out.float().sum() - img.float().sum()) / img.float().sum() < 0.1
