"""Datasets for training and evaluation: images as float tensors in [0, 1], labels as int64.

Built in: ``mnist-small`` (5000 train / 1000 test MNIST images bundled in the package, the
offline default), ``mnist``, ``fashion-mnist``, ``cifar10``, ``cifar100`` (torchvision's formats
under ``data_dir``; downloaded only when asked) and ``imagefolder`` (``data_dir/train/<class>/*``
and ``data_dir/val`` or ``data_dir/test``, e.g. Imagenette or an extracted cifar10-jpg.zip).

Small datasets live in memory as uint8 tensors so an epoch is not bound by decoding.
Training sets get the usual light augmentation (random crop with 4 pixels of padding and a
horizontal flip for CIFAR and image folders, none for the MNIST family); test sets get none.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, Sampler

from .config import AUGMENTATIONS, DATASETS
from .errors import MissingFileError, UsageError

__all__ = [
    "AUGMENTATIONS", "DATASETS", "ImageData", "LightAugment", "ShiftRotate", "EpochShuffleSampler", "load_split",
    "subset_indices",
]

_BUNDLED = Path(__file__).with_name("data") / "mnist_small.npz"
_IMAGEFOLDER_CACHE_BYTES = 1 << 30  # decode an image folder once into memory when it fits in 1 GiB
_IMAGEFOLDER_DEFAULT_SIZE = 224


class LightAugment:
    """Random crop after zero padding, and a random horizontal flip, on one uint8 ``(C, H, W)`` image.

    Draws from torch's global RNG, so Accelerate's ``save_state`` captures it for exact resumes.
    """

    def __init__(self, pad: int = 4, flip: bool = True):
        self.pad = int(pad)
        self.flip = bool(flip)

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        if self.pad:
            h, w = img.shape[-2:]
            padded = F.pad(img, (self.pad,) * 4)
            i, j = torch.randint(0, 2 * self.pad + 1, (2,)).tolist()
            img = padded[:, i:i + h, j:j + w]
        if self.flip and torch.rand(()) < 0.5:
            img = img.flip(-1)
        return img

    def __repr__(self) -> str:
        return f"LightAugment(pad={self.pad}, flip={self.flip})"


class ShiftRotate:
    """Random shift by up to ``shift`` pixels and rotation by up to ``degrees`` on one uint8 ``(C, H, W)`` image.

    The augmentation of Saralajew et al. 2019 for LVQ on MNIST (±2 px, ±15°). Draws from torch's
    global RNG, like :class:`LightAugment`.
    """

    def __init__(self, shift: int = 2, degrees: float = 15.0):
        self.shift = int(shift)
        self.degrees = float(degrees)

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        from torchvision.transforms.v2 import InterpolationMode
        from torchvision.transforms.v2.functional import affine

        angle = (torch.rand(()).item() * 2 - 1) * self.degrees
        dx, dy = torch.randint(-self.shift, self.shift + 1, (2,)).tolist()
        return affine(img, angle=angle, translate=[dx, dy], scale=1.0, shear=[0.0, 0.0],
                      interpolation=InterpolationMode.BILINEAR)

    def __repr__(self) -> str:
        return f"ShiftRotate(shift={self.shift}, degrees={self.degrees})"


class ImageData(Dataset):
    """Images in [0, 1] from uint8 storage: an in-memory tensor ``(N, C, H, W)``, or files decoded on access.

    Attributes:
        name: dataset name; classes: class names; num_classes; in_chans; img_size ``(H, W)``.
    """

    def __init__(self, name: str, labels: torch.Tensor, classes: Sequence[str], images: torch.Tensor | None = None,
                 files: Sequence[str] | None = None, decode: Callable[[str], torch.Tensor] | None = None,
                 in_chans: int | None = None, img_size: tuple[int, int] | None = None,
                 augment: Callable[[torch.Tensor], torch.Tensor] | None = None):
        self.name = name
        self.labels = labels.long()
        self.classes = list(classes)
        self.images = images
        self.files = list(files) if files is not None else None
        self.decode = decode
        self.augment = augment
        if images is not None:
            self.in_chans, self.img_size = int(images.shape[1]), (int(images.shape[2]), int(images.shape[3]))
        else:
            self.in_chans, self.img_size = int(in_chans), tuple(img_size)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.labels)

    def uint8(self, index: int) -> torch.Tensor:
        """Image ``index`` as stored: uint8 ``(C, H, W)``, not augmented."""
        return self.images[index] if self.images is not None else self.decode(self.files[index])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        img = self.uint8(index)
        if self.augment is not None:
            img = self.augment(img)
        return img.float().div_(255.0), self.labels[index]

    def without_augmentation(self) -> "ImageData":
        """The same images with no augmentation (for the head's data-dependent init)."""
        return ImageData(self.name, self.labels, self.classes, self.images, self.files, self.decode,
                         self.in_chans, self.img_size, augment=None)


class EpochShuffleSampler(Sampler[int]):
    """A shuffle that depends only on ``(seed, epoch)``: every process, and a resumed run, sees the same order."""

    def __init__(self, length: int, seed: int):
        self.length = int(length)
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the permutation of ``epoch`` for the next iteration."""
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return iter(torch.randperm(self.length, generator=g).tolist())

    def __len__(self) -> int:
        return self.length


def subset_indices(n: int, max_samples: int | None) -> torch.Tensor | None:
    """A fixed subset (the same for every run and seed) of ``max_samples`` of ``n`` items, in order; ``None`` = all."""
    if max_samples is None or max_samples >= n:
        return None
    g = torch.Generator().manual_seed(0)
    return torch.randperm(n, generator=g)[:max_samples].sort().values


def _resize_uint8(images: torch.Tensor, size: int) -> torch.Tensor:
    if images.shape[-2:] == (size, size):
        return images
    out = []
    for chunk in images.split(4096):  # bounded memory for the float copy
        resized = F.interpolate(chunk.float(), size=(size, size), mode="bilinear", antialias=True,
                                align_corners=False)
        out.append(resized.round_().clamp_(0, 255).to(torch.uint8))
    return torch.cat(out)


def _missing(name: str, data_dir: str | None, expected: str) -> MissingFileError:
    where = f"under --data-dir {data_dir}" if data_dir else "(no --data-dir given)"
    return MissingFileError(
        f"dataset '{name}' not found {where}: expected {expected}; pass --data-dir pointing at the folder that "
        f"holds it, add --download to fetch it, or use --dataset mnist-small (bundled)"
    )


def _torchvision(name: str, split: str, data_dir: str | None, download: bool) -> tuple[torch.Tensor, torch.Tensor,
                                                                                          list[str]]:
    import torchvision.datasets as tvd

    cls, expected = {
        "mnist": (tvd.MNIST, "DIR/MNIST/raw/*-ubyte"),
        "fashion-mnist": (tvd.FashionMNIST, "DIR/FashionMNIST/raw/*-ubyte"),
        "cifar10": (tvd.CIFAR10, "DIR/cifar-10-batches-py/"),
        "cifar100": (tvd.CIFAR100, "DIR/cifar-100-python/"),
    }[name]
    if data_dir is None:
        raise _missing(name, data_dir, expected)
    try:
        ds = cls(root=data_dir, train=(split == "train"), download=download)
    except RuntimeError as exc:
        if "not found" in str(exc).lower():
            raise _missing(name, data_dir, expected) from exc
        raise
    data = torch.as_tensor(np.asarray(ds.data))
    images = data.unsqueeze(1) if data.ndim == 3 else data.permute(0, 3, 1, 2)
    return images.contiguous(), torch.as_tensor(np.asarray(ds.targets)), list(ds.classes)


def _bundled(split: str) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    if not _BUNDLED.is_file():
        raise MissingFileError(f"the bundled MNIST subset is missing ({_BUNDLED}); reinstall robustproto")
    with np.load(_BUNDLED) as npz:
        images = torch.from_numpy(npz[f"{split}_images"]).unsqueeze(1)
        labels = torch.from_numpy(npz[f"{split}_labels"].astype(np.int64))
    return images, labels, [str(i) for i in range(10)]


def _decode_file(size: int) -> Callable[[str], torch.Tensor]:
    from PIL import Image

    def decode(path: str) -> torch.Tensor:
        with Image.open(path) as im:
            im = im.convert("RGB")
            w, h = im.size
            scale = size / min(w, h)  # shorter side to `size`, then a centre crop
            im = im.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.BILINEAR)
            w, h = im.size
            left, top = (w - size) // 2, (h - size) // 2
            im = im.crop((left, top, left + size, top + size))
            return torch.from_numpy(np.asarray(im, dtype=np.uint8).copy()).permute(2, 0, 1)

    return decode


def _imagefolder(split: str, data_dir: str | None, img_size: int | None, max_samples: int | None) -> ImageData:
    from torchvision.datasets import ImageFolder

    root = Path(data_dir) if data_dir else None
    expected = "DIR/train/<class>/*.jpg and DIR/val/ or DIR/test/"
    if root is None:
        raise _missing("imagefolder", data_dir, expected)
    folder = root / "train" if split == "train" else next((root / s for s in ("val", "test") if (root / s).is_dir()),
                                                          None)
    if folder is None or not folder.is_dir():
        raise _missing("imagefolder", data_dir, expected)
    train_classes = sorted(p.name for p in (root / "train").iterdir() if p.is_dir()) if (root / "train").is_dir() \
        else None
    ds = ImageFolder(str(folder))
    if train_classes is not None and ds.classes != train_classes:
        raise UsageError(f"imagefolder: the classes of {folder} differ from those of {root / 'train'}")
    files = [p for p, _ in ds.samples]
    labels = torch.tensor([t for _, t in ds.samples])
    keep = subset_indices(len(files), max_samples)
    if keep is not None:
        files = [files[i] for i in keep.tolist()]
        labels = labels[keep]
    size = img_size or _IMAGEFOLDER_DEFAULT_SIZE
    decode = _decode_file(size)
    if len(files) * 3 * size * size <= _IMAGEFOLDER_CACHE_BYTES:
        images = torch.stack([decode(f) for f in files]) if files else torch.zeros(0, 3, size, size, dtype=torch.uint8)
        return ImageData("imagefolder", labels, ds.classes, images=images)
    return ImageData("imagefolder", labels, ds.classes, files=files, decode=decode, in_chans=3, img_size=(size, size))


def load_split(name: str, split: str, data_dir: str | None = None, download: bool = False,
               img_size: int | None = None, max_samples: int | None = None,
               augment: bool | str | None = None) -> ImageData:
    """One split (``"train"`` or ``"test"``) of a dataset, images in [0, 1].

    Args:
        name: one of :data:`DATASETS`.
        data_dir: the folder that holds the dataset (torchvision layout, or an image folder).
        download: let torchvision download a missing dataset.
        img_size: resize images to ``img_size × img_size`` (image folders default to 224).
        max_samples: keep a fixed subset (the same for every run) of this many samples.
        augment: one of :data:`AUGMENTATIONS`: ``"auto"`` (random crop + flip for CIFAR and image
            folders, none for the MNIST family), ``"none"``, ``"crop-flip"``, ``"shift-rotate"`` (±2 px,
            ±15°); ``True`` means ``"auto"``, ``False`` ``"none"``. Default: ``"auto"`` for ``"train"``,
            ``"none"`` for ``"test"``.

    Raises :class:`~robustproto.errors.MissingFileError` naming ``--data-dir``/``--download`` when the dataset is
    not there, :class:`~robustproto.errors.UsageError` for an unknown name, split or augmentation.
    """
    if name not in DATASETS:
        raise UsageError(f"dataset: '{name}' is not one of {', '.join(DATASETS)}")
    if split not in ("train", "test"):
        raise UsageError(f"split must be 'train' or 'test', not '{split}'")
    if name == "imagefolder":
        data = _imagefolder(split, data_dir, img_size, max_samples)
    else:
        images, labels, classes = _bundled(split) if name == "mnist-small" else _torchvision(name, split, data_dir,
                                                                                              download)
        keep = subset_indices(len(labels), max_samples)
        if keep is not None:
            images, labels = images[keep], labels[keep]
        if img_size is not None:
            images = _resize_uint8(images, img_size)
        data = ImageData(name, labels, classes, images=images.contiguous())
    if augment is None or isinstance(augment, bool):
        augment = "auto" if (split == "train" if augment is None else augment) else "none"
    if augment not in AUGMENTATIONS:
        raise UsageError(f"augment: '{augment}' is not one of {', '.join(AUGMENTATIONS)}")
    if augment == "auto":
        augment = "crop-flip" if name in ("cifar10", "cifar100", "imagefolder") else "none"
    if augment == "crop-flip":
        data.augment = LightAugment(pad=4 if name != "imagefolder" else max(4, data.img_size[0] // 8), flip=True)
    elif augment == "shift-rotate":
        data.augment = ShiftRotate()
    return data
