"""Datasets for training and evaluation: images as float tensors in [0, 1], labels as int64.

Built in: ``mnist-small`` (5000 train / 1000 test MNIST images bundled in the package, the
offline default), ``mnist``, ``fashion-mnist``, ``cifar10``, ``cifar100`` (torchvision's formats
under ``data_dir``; downloaded only when asked) and ``imagefolder`` (``data_dir/train/<class>/*``
and ``data_dir/val`` or ``data_dir/test``, e.g. Imagenette or an extracted cifar10-jpg.zip).

Small datasets live in memory as uint8 tensors so an epoch is not bound by decoding.
Training sets get the usual light augmentation (random crop with 4 pixels of padding and a
horizontal flip for CIFAR and image folders, none for the MNIST family); test sets get none.

Any other name is a timm dataset spec (:class:`TimmData`): ``torch/<name>`` (torchvision's datasets under
``data_dir``), ``hfds/<name>`` (Hugging Face datasets), or the path of an image folder or ``.tar`` (timm's
readers). Those are decoded and transformed per item by timm's transforms (RandAugment, random erasing,
random-resized crops), so a dataset larger than memory streams from disk.
"""

from __future__ import annotations

import hashlib
import random
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, Sampler

from .config import AUGMENTATIONS, DATASETS, TIMM_ITERABLE_PREFIXES, TIMM_PREFIXES
from .errors import MissingFileError, UsageError
from .utils import describe_error

__all__ = [
    "AUGMENTATIONS", "DATASETS", "ImageData", "LightAugment", "ShiftRotate", "EpochShuffleSampler", "SeededItems",
    "TimmData",
    "default_img_size", "load_split", "subset_indices", "timm_transform",
]

_BUNDLED = Path(__file__).with_name("data") / "mnist_small.npz"
_IMAGEFOLDER_CACHE_BYTES = 1 << 30  # decode an image folder once into memory when it fits in 1 GiB
_IMAGEFOLDER_DEFAULT_SIZE = 224
# (channels, size) of the torchvision datasets whose images all have one size; other timm specs default to 224
_TORCH_NATIVE = {"cifar10": (3, 32), "cifar100": (3, 32), "mnist": (1, 28), "kmnist": (1, 28),
                 "fashion_mnist": (1, 28), "qmnist": (1, 28)}


class LightAugment:
    """Random crop after zero padding, and a random horizontal flip, on one uint8 ``(C, H, W)`` image.

    Draws from torch's global RNG (in training seeded per item by :class:`SeededItems`).
    """

    draws_from = ("torch",)

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

    draws_from = ("torch",)

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

    @property
    def draws_from(self) -> tuple[str, ...]:
        """The global RNGs an item's augmentation draws from (:class:`SeededItems` seeds those): none without one."""
        return getattr(self.augment, "draws_from", _ALL_RNGS) if self.augment is not None else ()

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


class EpochShuffleSampler(Sampler[tuple[int, int]]):
    """A shuffle that depends only on ``(seed, epoch)``: every process, and a resumed run, sees the same order.

    It yields ``(epoch, index)`` keys, for :class:`SeededItems` to draw each item's augmentation from.
    """

    def __init__(self, length: int, seed: int):
        self.length = int(length)
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the permutation of ``epoch`` for the next iteration."""
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return iter([(self.epoch, i) for i in torch.randperm(self.length, generator=g).tolist()])

    def __len__(self) -> int:
        return self.length


_ALL_RNGS = ("torch", "python", "numpy")


class SeededItems(Dataset):
    """``data`` read with the ``(epoch, index)`` keys of :class:`EpochShuffleSampler`, each item's random augmentation
    drawn from torch's (CPU), Python's and NumPy's global RNGs seeded by ``(seed, epoch, index)`` (and put back after).
    Only the RNGs ``data.draws_from`` names are seeded (all three for a dataset without that attribute); none for a
    dataset with no random augmentation.

    What an item looks like then depends on nothing else: not on which DataLoader worker loads it (each has its own
    RNG), not on the batches a loader fetched ahead of a checkpoint (Accelerate's loaders prefetch one), not on the
    number of processes. A run resumed mid-epoch, with any ``workers``, sees the images an uninterrupted one does.
    """

    def __init__(self, data: Dataset, seed: int):
        self.data = data
        self.seed = int(seed)

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, key: tuple[int, int]):
        epoch, index = key
        sources = getattr(self.data, "draws_from", _ALL_RNGS)
        if not sources:  # nothing random to seed: ~0.5 ms an item saved
            return self.data[index]
        digest = hashlib.blake2b(f"{self.seed}:{epoch}:{index}".encode(), digest_size=8).digest()
        item_seed = int.from_bytes(digest, "little") >> 1  # 63 bits: torch.manual_seed's range
        others = "python" in sources or "numpy" in sources  # their states cost ~0.13 ms to save and restore
        python_state, numpy_state = (random.getstate(), np.random.get_state()) if others else (None, None)
        with torch.random.fork_rng(devices=[]):  # the CPU generator, restored on exit
            # not torch.manual_seed: that also reseeds every CUDA generator (the training step's random starts)
            # and, before CUDA is initialised, queues a call each time (0.26 ms an item)
            torch.default_generator.manual_seed(item_seed)
            if others:
                random.seed(item_seed)
                np.random.seed(item_seed % 2**32)
            try:
                return self.data[index]
            finally:
                if others:
                    random.setstate(python_state)
                    np.random.set_state(numpy_state)


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


class TimmData(Dataset):
    """Images in [0, 1] from a timm dataset, decoded and transformed item by item (nothing is held in memory).

    ``source`` is what :func:`timm.data.create_dataset` returned, without a transform: indexing it gives a PIL
    image and an int label. ``transform`` (timm's, built by :func:`timm_transform`) turns the image into a float
    ``(in_chans, *img_size)`` tensor in [0, 1]; ``eval_transform`` is the un-augmented one that
    :meth:`without_augmentation` uses. ``indices`` selects a fixed subset of ``source``.
    Attributes as :class:`ImageData`: name, classes, num_classes, in_chans, img_size ``(H, W)``.
    """

    def __init__(self, name: str, source: Dataset, classes: Sequence[str], in_chans: int, img_size: int,
                 transform: Callable, eval_transform: Callable, indices: Sequence[int] | None = None):
        self.name = name
        self.source = source
        self.classes = list(classes)
        self.in_chans = int(in_chans)
        self.img_size = (int(img_size), int(img_size))
        self.transform = transform
        self.eval_transform = eval_transform
        self.indices = list(indices) if indices is not None else None

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def draws_from(self) -> tuple[str, ...]:
        """The global RNGs an item's transform draws from: all three for timm's training transform (RandAugment
        and random erasing use Python's and NumPy's), none for the evaluation transform."""
        return () if self.transform is self.eval_transform else _ALL_RNGS

    def __len__(self) -> int:
        return len(self.indices) if self.indices is not None else len(self.source)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        img, target = self.source[self.indices[index] if self.indices is not None else index][:2]
        mode = "L" if self.in_chans == 1 else "RGB"
        if img.mode != mode:  # torchvision's datasets give their own mode (MNIST: L); timm's readers give RGB
            img = img.convert(mode)
        return self.transform(img), torch.tensor(int(target), dtype=torch.long)

    def without_augmentation(self) -> "TimmData":
        """The same images through the evaluation transform (for the head's data-dependent init)."""
        return TimmData(self.name, self.source, self.classes, self.in_chans, self.img_size[0], self.eval_transform,
                        self.eval_transform, self.indices)


def default_img_size(name: str) -> int | None:
    """The image size a timm dataset spec gets without ``img_size``: a torchvision dataset's own (``torch/cifar10``:
    32, ``torch/mnist``: 28), else 224 (timm's default); ``None`` for a built-in name (its own size, see
    :func:`load_split`)."""
    if name in DATASETS:
        return None
    prefix, _, rest = name.partition("/")
    return _TORCH_NATIVE.get(rest.lower(), (3, 224))[1] if prefix.lower() == "torch" else 224


def timm_transform(in_chans: int, img_size: int, training: bool, aa: str | None = None, reprob: float = 0.0,
                   scale: tuple[float, float] | None = None, interpolation: str | None = None) -> Callable:
    """timm's transform (:func:`timm.data.create_transform`) from a PIL image to a float tensor in [0, 1].

    robustproto models normalise inside (``ProtoModel.normalize``), so timm's normalisation is made the identity
    (mean 0, std 1); random erasing (``reprob``) then fills with 0, i.e. black pixels. Training: a random-resized
    crop (``scale``, timm's default (0.08, 1)), a horizontal flip, timm's colour jitter or the auto-augment policy
    ``aa`` (e.g. ``rand-m9-mstd0.5``), random erasing. Evaluation (``training=False``): the whole image resized
    (``crop_pct`` 1, so small images such as CIFAR's lose no border). ``interpolation`` defaults to bilinear.
    A bad ``aa`` string is a :class:`~robustproto.errors.UsageError` naming ``aa``.
    """
    from timm.data import create_transform

    kwargs = dict(is_training=training, interpolation=interpolation or "bilinear", mean=(0.0,) * in_chans,
                  std=(1.0,) * in_chans, crop_pct=1.0)
    if training:
        kwargs.update(scale=tuple(scale) if scale else None, auto_augment=aa, re_prob=reprob)
    try:
        return create_transform((in_chans, img_size, img_size), **kwargs)
    except (AssertionError, KeyError, ValueError) as exc:
        if not (training and aa):
            raise
        raise UsageError(f"aa: timm cannot build the auto-augment policy '{aa}' ({describe_error(exc)}); pass e.g. "
                         "--aa rand-m9-mstd0.5") from exc


def _timm_source(name: str, split: str, data_dir: str | None, download: bool) -> tuple[Dataset, list[str]]:
    """timm's dataset for ``split`` of the spec ``name`` (no transform) and its class names."""
    from timm.data import create_dataset

    prefix, sep, rest = name.partition("/")
    prefix = prefix.lower() if sep else ""
    if prefix in TIMM_ITERABLE_PREFIXES:
        raise UsageError(f"dataset: '{name}' is an iterable (streamed) timm dataset, which robustproto does not read "
                         f"yet (it needs indexable data for its exact shuffles and resumes); use "
                         f"{', '.join(p + '/' for p in TIMM_PREFIXES)} or an image folder or .tar path")
    if prefix in TIMM_PREFIXES:
        if prefix == "torch" and data_dir is None:
            raise _missing(name, data_dir, f"torchvision's files of {rest} under DIR")
        eval_split = "test" if prefix == "torch" or prefix == "hfds" else "validation"
        try:
            source = create_dataset(name, root=data_dir, split="train" if split == "train" else eval_split,
                                    download=download)
        except AssertionError as exc:  # timm asserts on a torch/ name it does not know
            raise UsageError(f"dataset: timm cannot open '{name}' ({describe_error(exc)}); see timm's "
                             "create_dataset for the names it knows") from exc
        except RuntimeError as exc:
            if "not found" in str(exc).lower():
                raise _missing(name, data_dir, f"torchvision's files of {rest} under DIR") from exc
            raise
    else:
        path = Path(name)
        if not (path.is_dir() or (path.is_file() and path.suffix == ".tar")):
            raise UsageError(f"dataset: '{name}' is not a built-in dataset ({', '.join(DATASETS)}), a timm spec with "
                             f"a known prefix ({', '.join(p + '/' for p in TIMM_PREFIXES)}) or an existing image "
                             "folder or .tar; check the name or path")
        # timm looks for DIR/train, and DIR/val (or validation, ...) for evaluation, else reads DIR itself
        eval_split = "test" if (path / "test").is_dir() else "validation"
        source = create_dataset("", root=str(path), split="train" if split == "train" else eval_split)
        if len(source) == 0:
            raise UsageError(f"dataset: no images found in {path} (expected <class>/<image> files, optionally under "
                             "train/ and val/ or test/)")
    classes = getattr(source, "classes", None)
    if classes is None:
        class_to_idx = getattr(getattr(source, "reader", None), "class_to_idx", None) or {}
        classes = [c for c, _ in sorted(class_to_idx.items(), key=lambda kv: kv[1])]
    return source, [str(c) for c in classes]


def _timm_split(name: str, split: str, data_dir: str | None, download: bool, img_size: int | None,
                max_samples: int | None, augment: bool, aa: str | None, reprob: float,
                scale: tuple[float, float] | None, interpolation: str | None) -> TimmData:
    source, classes = _timm_source(name, split, data_dir, download)
    prefix, _, rest = name.partition("/")
    in_chans = _TORCH_NATIVE.get(rest.lower(), (3, 0))[0] if prefix.lower() == "torch" else 3
    size = img_size or default_img_size(name)
    eval_transform = timm_transform(in_chans, size, False, interpolation=interpolation)
    transform = timm_transform(in_chans, size, True, aa, reprob, scale, interpolation) \
        if split == "train" and augment else eval_transform
    keep = subset_indices(len(source), max_samples)
    return TimmData(name, source, classes, in_chans, size, transform, eval_transform,
                    keep.tolist() if keep is not None else None)


def load_split(name: str, split: str, data_dir: str | None = None, download: bool = False,
               img_size: int | None = None, max_samples: int | None = None,
               augment: bool | str | None = None, aa: str | None = None, reprob: float = 0.0,
               scale: tuple[float, float] | None = None, interpolation: str | None = None) -> ImageData | TimmData:
    """One split (``"train"`` or ``"test"``) of a dataset, images in [0, 1].

    Args:
        name: one of :data:`DATASETS` (in memory), or a timm dataset spec (:func:`timm.data.create_dataset`):
            ``torch/<name>``, ``hfds/<name>``, or the path of an image folder or ``.tar``; see :class:`TimmData`.
        data_dir: the folder that holds the dataset (torchvision layout, or an image folder).
        download: let torchvision download a missing dataset.
        img_size: resize images to ``img_size × img_size`` (image folders default to 224).
        max_samples: keep a fixed subset (the same for every run) of this many samples.
        augment: one of :data:`AUGMENTATIONS`: ``"auto"`` (random crop + flip for CIFAR and image
            folders, none for the MNIST family), ``"none"``, ``"crop-flip"``, ``"shift-rotate"`` (±2 px,
            ±15°); ``True`` means ``"auto"``, ``False`` ``"none"``. Default: ``"auto"`` for ``"train"``,
            ``"none"`` for ``"test"``. A timm spec takes ``"auto"`` (timm's training transform) or ``"none"``.
        aa, reprob, scale, interpolation: timm's ``auto_augment``, ``re_prob``, random-resized-crop ``scale`` and
            ``interpolation`` of :func:`timm_transform`; timm specs only (``aa``, ``reprob`` and ``scale`` act on
            the training split when it is augmented).

    Raises :class:`~robustproto.errors.MissingFileError` naming ``--data-dir``/``--download`` when the dataset is
    not there, :class:`~robustproto.errors.UsageError` for an unknown name, split or augmentation.
    """
    if split not in ("train", "test"):
        raise UsageError(f"split must be 'train' or 'test', not '{split}'")
    if name not in DATASETS:
        if augment is None or isinstance(augment, bool):
            augment = "auto" if (split == "train" if augment is None else augment) else "none"
        if augment not in ("auto", "none"):
            raise UsageError(f"augment: '{augment}' is for the built-in datasets; with the timm dataset spec "
                             f"'{name}' pass --augment auto (timm's training transform) or none")
        return _timm_split(name, split, data_dir, download, img_size, max_samples, augment == "auto",
                           aa, reprob, scale, interpolation)
    for option, value in (("aa", aa), ("reprob", reprob or None), ("scale", scale), ("interpolation", interpolation)):
        if value is not None:
            raise UsageError(f"{option}: timm's transforms only act on a timm dataset spec, not on '{name}'; pass "
                             f"one (e.g. --dataset torch/cifar10, or a folder path) or drop --{option}")
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
