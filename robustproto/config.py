"""The configuration schema and its one resolver.

:class:`TrainConfig` (``robustproto train``), :class:`EvalConfig` (``robustproto eval``) and
:class:`CertifyConfig` (``robustproto certify``) are frozen dataclasses; each field carries its type (the
annotation), its default and its help (``metadata["help"]``) once. A value from a recipe, a flag or Python is
converted by the field's annotation (:func:`robustproto.recipe.convert`), and the command line's options are
generated from the fields. Option tables are read-only mappings.

A recipe TOML (:func:`load_recipe` → :class:`Recipe`) has the train keys at the top (the field names;
``--batch-size`` is ``batch_size``, ``-`` and ``_`` interchangeable), an ``[eval]`` table with the eval flags'
keys (one sub-table per norm allowed) and an ``[eval.certify]`` table with the certify flags' keys. Flags
override the recipe, which overrides the defaults. Unknown keys and bad values are a
:class:`~robustproto.errors.UsageError` that names the key.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import UsageError
from .recipe import (NORMS, convert, format_reg, freeze_table, normalize_norm, parse_eps, parse_options,  # noqa: F401
                     parse_reg, read_toml, thaw)

__all__ = ["CertifyConfig", "DEFAULT_RADII", "DEFAULT_THRESHOLDS", "EvalConfig", "NORMS", "Recipe",
           "TrainConfig", "key_of", "load_recipe", "normalize_norm", "parse_eps", "parse_options", "parse_reg",
           "resolve_config", "resolve_device"]

DATASETS = ("mnist-small", "mnist", "fashion-mnist", "cifar10", "cifar100", "imagefolder")
# timm dataset specs robustproto reads (indexable: exact shuffles and resumes), and those it refuses (iterable)
TIMM_PREFIXES = ("torch", "hfds")
TIMM_ITERABLE_PREFIXES = ("hfids", "wds", "tfds")
# PIL resampling filters timm's transforms take (timm.data.transforms.str_to_pil_interp)
INTERPOLATIONS = ("bilinear", "bicubic", "nearest", "lanczos", "box", "hamming", "random")
AUGMENTATIONS = ("auto", "none", "crop-flip", "shift-rotate")
MIXED_PRECISION = ("no", "fp16", "bf16")
CLIP_MODES = ("norm", "value")
# timm schedulers that are a function of the epoch (or update) alone: resume rebuilds them and steps them there
SCHEDULERS = ("cosine", "tanh", "step", "multistep", "poly", "constant", "none")
# Accelerate's experiment trackers robustproto documents and tests; "all" is every one of them installed
TRACKERS = ("tensorboard", "wandb", "mlflow", "aim", "trackio")
DEFAULT_THRESHOLDS = types.MappingProxyType({"L2": 1.5, "Linf": 0.3})
DEFAULT_RADII = (0.1, 0.25, 0.5, 1.0, 1.5, 2.0)
# evaluation protocols of `robustproto eval --protocol` (robustproto.evaluation.robustbench runs the second)
PROTOCOLS = ("none", "robustbench")


def _field(default: Any, help: str, **meta: Any) -> Any:
    """A schema field: its default and the help of its flag. ``meta``: ``none`` (what ``None`` means, shown as
    the default), ``cli`` (False: recipe only; or the flag's type when the annotation is not it), ``key`` (the
    recipe key and flag when they differ from the field name), ``table`` (a TOML table kept as written)."""
    metadata = {"help": help, **meta}
    if isinstance(default, Mapping):
        return field(default_factory=lambda: types.MappingProxyType(dict(default)), metadata=metadata)
    return field(default=default, metadata=metadata)


def key_of(f: dataclasses.Field) -> str:
    """The recipe key and (with ``-``) the flag of a schema field."""
    return f.metadata.get("key", f.name)


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _convert_fields(obj: Any) -> None:
    """Convert every field of a frozen schema dataclass in place, by its annotation (errors name the key)."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if f.metadata.get("table"):
            object.__setattr__(obj, f.name, freeze_table(value, key_of(f)))
        else:
            object.__setattr__(obj, f.name, convert(key_of(f), _hints(type(obj))[f.name], value))


def _at_least(obj: Any, minimum: int, *names: str) -> None:
    for name in names:
        value = getattr(obj, name)
        if value is not None and value < minimum:
            raise UsageError(f"{name}: must be {'positive' if minimum == 1 else '≥ 0'}, got {value}; pass "
                             f"--{name.replace('_', '-')} N ≥ {minimum}")


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run depends on. Field names are the recipe keys and (``--kebab-case``) the flags."""

    backbone: str = _field("resnet18", "timm model name or one a backbone plugin registers.")
    backbone_opt: Mapping[str, Any] = _field({}, "key=value for timm.create_model (repeatable).")
    head: str = _field("linear", "Head plugin (`robustproto plugins`).")
    head_opt: Mapping[str, Any] = _field({}, "key=value head option (repeatable).")
    reg: tuple[tuple[str, Mapping[str, Any]], ...] = _field((), "NAME[:key=value,...] regularizer (repeatable); "
                                                                "none for no regularizer.")
    embed_dim: int | None = _field(None, "Embedding size (a linear neck maps the features to it).",
                                   none="the backbone's")
    pretrained_weights: str | None = _field(None, "Local .safetensors/.pth state dict of the timm backbone.")
    mean: tuple[float, ...] | None = _field(None, "Per-channel mean, e.g. 0.5,0.5,0.5.", none="the backbone's")
    std: tuple[float, ...] | None = _field(None, "Per-channel std, e.g. 0.25,0.25,0.25.", none="the backbone's")

    dataset: str = _field("mnist-small", f"{', '.join(DATASETS)} (in memory; mnist-small is bundled), or a timm "
                                         "dataset spec, streamed through timm's transforms: torch/NAME (e.g. "
                                         "torch/cifar10), hfds/NAME, or an image folder or .tar path.")
    data_dir: str | None = _field(None, "Folder that holds the dataset.")
    download: bool = _field(False, "Let torchvision download it.")
    img_size: int | None = _field(None, "Resize images to N×N.", none="the dataset's")
    max_train_samples: int | None = _field(None, "Train on a fixed subset of N samples.", none="all")
    max_test_samples: int | None = _field(None, "Test on a fixed subset of N samples.", none="all")
    augment: str = _field("auto", "auto (crop-flip for CIFAR and image folders, none for MNIST), none, crop-flip, "
                                  "shift-rotate (±2 px, ±15°).")
    aa: str | None = _field(None, "timm auto-augment policy, e.g. rand-m9-mstd0.5 (timm dataset specs only).",
                            none="off")
    reprob: float = _field(0.0, "Random-erasing probability, erased pixels black (timm dataset specs only).")
    scale: tuple[float, ...] | None = _field(None, "Random-resized-crop area range, e.g. 0.08,1.0 (timm dataset "
                                                   "specs only).", none="timm's 0.08,1.0")
    interpolation: str | None = _field(None, f"Resize filter of timm's transforms: {', '.join(INTERPOLATIONS)} "
                                             "(timm dataset specs only).", none="bilinear")
    workers: int = _field(0, "DataLoader worker processes.")

    epochs: int = _field(5, "Training epochs.")
    batch_size: int = _field(64, "Images per step and process.")
    optimizer: str = _field("adam", "timm optimizer name.")
    lr: float = _field(1e-3, "Learning rate (reached after the warm-up).")
    weight_decay: float = _field(0.0, "Weight decay.")
    sched: str = _field("cosine", f"timm scheduler: {', '.join(SCHEDULERS)}.")
    sched_on_updates: bool = _field(False, "Step the schedule after every optimizer update instead of every epoch.")
    decay_rate: float = _field(0.1, "timm's decay_rate: the factor of step and multistep, the power of poly.")
    min_lr: float = _field(0.0, "Learning rate the schedule decays to.")
    warmup_epochs: int = _field(0, "Epochs of linear learning-rate warm-up.")
    warmup_lr: float | None = _field(None, "Learning rate the warm-up starts from.", none="lr / 100")
    warmup_prefix: bool = _field(False, "Decay over the epochs after the warm-up (else the warm-up replaces the "
                                        "first epochs of the decay).")
    freeze_backbone_epochs: int = _field(0, "Train only neck and head for the first N epochs.")
    init_samples: int = _field(2048, "Training samples init_from_data sees.")
    mixed_precision: str = _field("no", f"{', '.join(MIXED_PRECISION)}.")
    grad_accum_steps: int = _field(1, "Take an optimizer step every N batches, on their averaged gradients (an "
                                      "effective batch of N × batch_size).")
    clip_grad: float | None = _field(None, "Clip the gradients before each optimizer step: their total L2 norm to "
                                           "NORM (clip_mode norm) or each element to ±NORM (value).", none="off")
    clip_mode: str = _field("norm", f"{' or '.join(CLIP_MODES)}: how clip_grad clips.")
    mixup: float = _field(0.0, "Mixup alpha (timm's Mixup; 0: off): train on blends of two images and of their "
                               "labels, the blend weight drawn from Beta(alpha, alpha); needs a head that takes soft "
                               "targets (linear) and no regularizer.")
    cutmix: float = _field(0.0, "CutMix alpha (0: off): paste a box of another image, the labels mixed by its "
                                "area; as mixup, and with it one of the two per batch (mixup_switch_prob).")
    mixup_prob: float = _field(1.0, "Probability that a batch is mixed (mixup/cutmix), in [0, 1].")
    mixup_switch_prob: float = _field(0.5, "With both mixup and cutmix: the probability that a mixed batch uses "
                                           "cutmix, in [0, 1].")
    model_ema: bool = _field(False, "Keep an exponential moving average of the weights (timm's ModelEmaV3), "
                                    "evaluated each epoch (test_acc_ema) and saved as model_ema.safetensors.")
    model_ema_decay: float = _field(0.9998, "EMA decay per optimizer step, in [0, 1] (0: the raw weights, 1: the "
                                            "initial ones).")
    model_ema_warmup: bool = _field(False, "timm's EMA warm-up: the decay after step k is min(model_ema_decay, "
                                           "1 - k^(-2/3)).")
    channels_last: bool = _field(False, "Weights and images in channels-last memory format (faster convolutions on "
                                        "GPUs).")
    compile: bool = _field(False, "torch.compile the training step (not with a regularizer that needs input "
                                  "gradients).")
    seed: int = _field(0, "Seed of weights, shuffling and augmentation.")

    output: str = _field("runs/latest", "Run folder (with --resume: that folder).")
    resume: str | None = _field(None, "Continue the run in this folder from its last saved state.")
    log_with: tuple[str, ...] = _field((), f"Experiment tracker: {', '.join(TRACKERS)}, all (every one installed) "
                                           "or none (repeatable or a comma list); TensorBoard and Aim write under "
                                           "OUTPUT/trackers.")
    eval: Mapping[str, Any] = _field({}, "The recipe's [eval] table as written, kept for `robustproto eval`.",
                                     cli=False, table=True)

    def __post_init__(self) -> None:
        _convert_fields(self)
        object.__setattr__(self, "log_with", _tracker_names(self.log_with))
        _check_train(self)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (``reg`` as ``["name:k=v,..."]`` strings, as a recipe writes it)."""
        out = {f.name: thaw(getattr(self, f.name)) for f in dataclasses.fields(self)}
        out["reg"] = [format_reg(name, opts) for name, opts in self.reg]
        out["log_with"] = list(self.log_with)
        for key in ("mean", "std", "scale"):
            out[key] = None if out[key] is None else list(out[key])
        return out

    def to_json(self) -> str:
        """The config as one JSON line with sorted keys (:meth:`to_dict`)."""
        return json.dumps(self.to_dict(), sort_keys=True)

    def replace(self, **changes: Any) -> "TrainConfig":
        """A new config with ``changes`` applied and checked like any recipe or CLI value."""
        return resolve_config(self.to_dict(), changes)


_FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}


def _tracker_names(items: tuple[str, ...]) -> tuple[str, ...]:
    """``log_with`` as lower-case names, each once, in the given order: comma lists split (a flag may be
    ``--log-with tensorboard,wandb``), ``none`` dropped (so a flag can switch off a recipe's trackers); a name that
    is not a tracker is a UsageError listing the allowed ones."""
    allowed = (*TRACKERS, "all", "none")
    names = [n.strip().lower() for item in items for n in item.split(",") if n.strip()]
    for name in names:
        if name not in allowed:
            raise UsageError(f"log_with: '{name}' is not one of {', '.join(allowed)}")
    return tuple(dict.fromkeys(n for n in names if n != "none"))


def _check_train(cfg: TrainConfig) -> None:
    for key, allowed in (("augment", AUGMENTATIONS), ("mixed_precision", MIXED_PRECISION),
                         ("sched", SCHEDULERS), ("clip_mode", CLIP_MODES)):
        if getattr(cfg, key) not in allowed:
            raise UsageError(f"{key}: '{getattr(cfg, key)}' is not one of {', '.join(allowed)}")
    # a timm spec has a prefix or is a path (checked when loaded); a bare unknown word is most likely a typo
    if cfg.dataset not in DATASETS and "/" not in cfg.dataset and not Path(cfg.dataset).exists():
        raise UsageError(f"dataset: '{cfg.dataset}' is not one of {', '.join(DATASETS)}, a timm spec "
                         f"({', '.join(p + '/NAME' for p in TIMM_PREFIXES)}) or an existing image folder or .tar")
    if cfg.interpolation is not None and cfg.interpolation not in INTERPOLATIONS:
        raise UsageError(f"interpolation: '{cfg.interpolation}' is not one of {', '.join(INTERPOLATIONS)}")
    if not (0 <= cfg.reprob <= 1):  # also refuses NaN
        raise UsageError(f"reprob: must be in [0, 1], got {cfg.reprob}; pass e.g. --reprob 0.25")
    if cfg.scale is not None and not (len(cfg.scale) == 2 and 0 < cfg.scale[0] <= cfg.scale[1] <= 1):
        raise UsageError(f"scale: must be two numbers 0 < MIN ≤ MAX ≤ 1, got {list(cfg.scale)}; pass e.g. "
                         "--scale 0.08,1.0")
    _at_least(cfg, 1, "epochs", "batch_size", "embed_dim", "img_size", "max_train_samples", "max_test_samples",
              "init_samples", "grad_accum_steps")
    _at_least(cfg, 0, "workers", "warmup_epochs", "freeze_backbone_epochs", "seed")
    if cfg.warmup_epochs and cfg.sched == "none":
        raise UsageError(f"warmup_epochs: sched 'none' has no warm-up, got warmup_epochs={cfg.warmup_epochs}; "
                         "pass --sched (e.g. constant) or --warmup-epochs 0")
    if cfg.warmup_epochs and cfg.warmup_epochs >= cfg.epochs:
        raise UsageError(f"warmup_epochs: {cfg.warmup_epochs} is not fewer than epochs ({cfg.epochs}), so the run "
                         "ends before the learning rate reaches lr; pass --warmup-epochs below --epochs")
    if not (math.isfinite(cfg.lr) and cfg.lr > 0):
        raise UsageError(f"lr: must be a positive finite number, got {cfg.lr}")
    if cfg.sched == "none":
        for key in ("sched_on_updates", "warmup_prefix"):
            if getattr(cfg, key):
                raise UsageError(f"{key}: sched 'none' has no schedule; pass --sched (e.g. poly) or leave it off")
    if not (math.isfinite(cfg.decay_rate) and cfg.decay_rate > 0):
        raise UsageError(f"decay_rate: must be a positive finite number, got {cfg.decay_rate}")
    for key in ("min_lr", "warmup_lr"):
        value = getattr(cfg, key)
        if value is not None and not (math.isfinite(value) and 0 <= value <= cfg.lr):
            raise UsageError(f"{key}: must be in [0, lr = {cfg.lr:g}], got {value}")
    if not (math.isfinite(cfg.weight_decay) and cfg.weight_decay >= 0):
        raise UsageError(f"weight_decay: must be a finite number ≥ 0, got {cfg.weight_decay}")
    if cfg.clip_grad is not None and not (math.isfinite(cfg.clip_grad) and cfg.clip_grad > 0):
        raise UsageError(f"clip_grad: must be a positive finite number, got {cfg.clip_grad}; pass e.g. --clip-grad 1 "
                         "(or leave it out for no clipping)")
    if not (0 <= cfg.model_ema_decay <= 1):  # also refuses NaN
        raise UsageError(f"model_ema_decay: must be in [0, 1], got {cfg.model_ema_decay}; pass e.g. "
                         "--model-ema-decay 0.9998")
    for key in ("mixup", "cutmix"):
        if not (math.isfinite(getattr(cfg, key)) and getattr(cfg, key) >= 0):
            raise UsageError(f"{key}: must be a finite alpha ≥ 0 (0: off), got {getattr(cfg, key)}; pass e.g. "
                             f"--{key} {0.2 if key == 'mixup' else 1.0}")
    for key in ("mixup_prob", "mixup_switch_prob"):
        if not (0 <= getattr(cfg, key) <= 1):  # also refuses NaN
            raise UsageError(f"{key}: must be a probability in [0, 1], got {getattr(cfg, key)}")
    if (cfg.mean is None) != (cfg.std is None):
        raise UsageError("mean/std: give both or neither")
    if cfg.mean is not None and len(cfg.mean) != len(cfg.std):
        raise UsageError(f"std: has {len(cfg.std)} channels but mean has {len(cfg.mean)}")
    if cfg.mean is not None and not all(map(math.isfinite, cfg.mean)):
        raise UsageError(f"mean: must be finite numbers, got {list(cfg.mean)}")
    if cfg.std is not None and not all(math.isfinite(s) and s > 0 for s in cfg.std):
        raise UsageError(f"std: must be positive finite numbers, got {list(cfg.std)}")


def _check_keys(table: Mapping[str, Any], known: Any, where: str) -> dict[str, Any]:
    """``table`` with ``-`` in keys read as ``_``; a UsageError names unknown keys and lists the known ones."""
    table = {str(k).replace("-", "_"): v for k, v in table.items()}
    unknown = sorted(set(table) - set(known))
    if unknown:
        raise UsageError(f"{where}unknown key(s) {', '.join(unknown)} (known: {', '.join(sorted(known))})")
    return table


def resolve_config(*layers: Mapping[str, Any] | None) -> TrainConfig:
    """Merge layers (e.g. saved run config → recipe → CLI overrides; later wins, ``None`` values skipped)."""
    merged: dict[str, Any] = {}
    for layer in layers:
        for key, value in (layer or {}).items():
            key = str(key).replace("-", "_")
            if key not in _FIELDS:
                raise UsageError(f"unknown key '{key}' (known: {', '.join(sorted(_FIELDS))})")
            if value is not None:
                merged[key] = value
    return TrainConfig(**merged)


# ------------------------------------------------------------------ evaluation and certification
ATTACK_HELP = ("fgsm, fgm, bim, mim, pgd, pgd-l2, deepfool, cw, fab, square, autoattack, gaussian; pgd-20 sets "
               "steps, pgd@margin the loss (ce, margin, ce+margin; auto: ce for a linear head, else ce+margin) "
               "(repeatable).")


def _given(cli: Mapping[str, Any]) -> dict[str, Any]:
    """The flags actually given (not ``None``, not an empty repeatable option)."""
    return {k: v for k, v in cli.items() if v is not None and not (isinstance(v, (list, tuple)) and not v)}


DEVICE_HELP = "Where the model runs: auto (the first CUDA GPU when there is one, else the CPU), cpu, cuda or cuda:N."


def _check_device(obj: Any) -> None:
    """``device`` is ``auto``, ``cpu``, ``cuda`` or ``cuda:N`` (whether that GPU exists is checked where it is used)."""
    name = obj.device.strip().lower()
    kind, _, index = name.partition(":")
    if not (name in ("auto", "cpu", "cuda") or (kind == "cuda" and index.isdigit())):
        raise UsageError(f"device: '{obj.device}' is not one of auto, cpu, cuda, cuda:N")
    object.__setattr__(obj, "device", name)


def resolve_device(name: str) -> Any:
    """The ``torch.device`` a ``device`` option names (``auto``: the first CUDA GPU when there is one, else the CPU);
    a GPU that is not there is a :class:`~robustproto.errors.UsageError`."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise UsageError(f"device: {name} is not available here ({torch.cuda.device_count()} CUDA GPUs); "
                         "pass --device auto or --device cpu")
    return device


@dataclass(frozen=True)
class EvalConfig:
    """What ``robustproto eval`` runs: attacks and budgets per norm, thresholds, options. Built by
    :meth:`resolve` from a recipe's ``[eval]`` table (keys: the flags' names, ``attack``, ``eps``, ...) and the
    flags (later wins); the table may hold one sub-table per norm (``L2 = {attack = [...], eps = [...],
    threshold = 1.5}``) to evaluate several norms in one report."""

    attacks: Mapping[str, tuple[str, ...]] = _field({}, ATTACK_HELP, key="attack")
    eps: Mapping[str, tuple[float, ...]] = _field({}, "Budgets in pixel units, e.g. 0,0.1,0.3 or 8/255.", key="eps")
    norm: str = _field("Linf", f"{' or '.join(NORMS)}: the norm of --attack and --eps; a recipe's per-norm tables "
                               "all run unless this names one.")
    thresholds: Mapping[str, float] = _field(DEFAULT_THRESHOLDS, "Threshold accuracy at these distances, "
                                                                 "NORM=T,...", key="threshold", cli=str)
    attack_options: Mapping[str, Mapping[str, Any]] = _field({}, "ATTACK:key=value,... e.g. square:n_queries=1000 "
                                                                 "(repeatable).", key="attack_opt")
    n_samples: int | None = _field(None, "Evaluate a fixed subset of N test points.", none="all")
    batch_size: int = _field(128, "Images per attack batch.")
    bisection_steps: int = _field(0, "Bisection steps on ε per point refining a fixed-budget attack's minimal "
                                     "distance (median-δ); each costs up to one more attack run (0: one run per ε).")
    protocol: str = _field("none", "none, or robustbench: RobustBench's rules (CIFAR-10, first 10,000 test points, "
                                   "standard AutoAttack at Linf 8/255 or L2 0.5) in place of the attacks, budgets "
                                   "and subset above; also writes RobustBench's model_info JSON (--claim).")
    device: str = _field("auto", DEVICE_HELP)

    def __post_init__(self) -> None:
        _convert_fields(self)
        _check_device(self)
        if self.protocol not in PROTOCOLS:
            raise UsageError(f"protocol: '{self.protocol}' is not one of {', '.join(PROTOCOLS)}")
        object.__setattr__(self, "norm", normalize_norm(self.norm))
        for name, key in (("attacks", "attack"), ("eps", "eps"), ("thresholds", "threshold")):
            object.__setattr__(self, name, types.MappingProxyType(
                {normalize_norm(k, key): v for k, v in getattr(self, name).items()}))
        for values in self.eps.values():
            if not all(math.isfinite(e) and e >= 0 for e in values):
                raise UsageError(f"eps: budgets must be finite and ≥ 0, got {list(values)}")
        for n, t in self.thresholds.items():
            if not (math.isfinite(t) and t >= 0):
                raise UsageError(f"threshold: must be a finite distance ≥ 0, got {n}={t}")
        _at_least(self, 1, "n_samples", "batch_size")
        _at_least(self, 0, "bisection_steps")

    @classmethod
    def resolve(cls, table: Mapping[str, Any] | None = None, **cli: Any) -> "EvalConfig":
        """The ``[eval]`` table (or ``None``) overridden by the flags given (``attack``, ``eps``, ``norm``, ...)."""
        keys = {key_of(f) for f in dataclasses.fields(cls)}
        table = _check_keys(table or {}, keys | {"certify", *NORMS}, "[eval]: ")
        per_norm = {}
        for n in NORMS:
            if n in table:
                if not isinstance(table[n], Mapping):
                    raise UsageError(f"[eval.{n}]: expected a table, got {table[n]!r}")
                per_norm[n] = _check_keys(table[n], ("attack", "eps", "threshold"), f"[eval.{n}]: ")
        given = _given(_check_keys(cli, keys, "eval options: "))

        def pick(key: str, default: Any = None) -> Any:
            return given[key] if key in given else table.get(key, default)

        def as_list(value: Any) -> list:
            return [value] if isinstance(value, (str, int, float)) else list(value or [])

        protocol = pick("protocol", _FIELD_DEFAULTS["protocol"])
        if protocol == "robustbench" and str(pick("norm", "")).strip().lower() == "corruptions":
            raise UsageError("norm: --protocol robustbench evaluates the Linf and L2 threat models, not RobustBench's "
                             "corruptions (CIFAR-10-C); pass --norm Linf or --norm L2")
        norm = normalize_norm(pick("norm", _FIELD_DEFAULTS["norm"]))
        if "attack" in given or not per_norm or ("norm" in given and norm not in per_norm):
            attacks = {norm: as_list(pick("attack"))}
            eps = {norm: parse_eps(given["eps"], "--eps") if "eps" in given else
                   as_list(table.get("eps", per_norm.get(norm, {}).get("eps")))}
        else:
            attacks = {n: as_list(sub.get("attack")) for n, sub in per_norm.items() if "norm" not in given or n == norm}
            eps = {n: parse_eps(given["eps"], "--eps") if "eps" in given else as_list(per_norm[n].get("eps"))
                   for n in attacks}
        if not any(attacks.values()) and protocol == "none":  # a protocol brings its own attacks
            raise UsageError("no attack to run: pass --attack NAME (repeatable) or put attack = [...] in [eval]")
        eps = {n: parse_eps(v, "eps") or [] for n, v in eps.items()}
        thresholds = dict(DEFAULT_THRESHOLDS)
        thresholds.update({n: sub["threshold"] for n, sub in per_norm.items() if "threshold" in sub})
        threshold = pick("threshold")
        if isinstance(threshold, (int, float)) and not isinstance(threshold, bool):
            thresholds[norm] = threshold
        elif threshold is not None:
            for n, t in parse_options(threshold, "threshold").items():
                thresholds[normalize_norm(n, "threshold")] = convert("threshold", float, t)
        options: dict[str, dict[str, Any]] = {}
        raw = pick("attack_opt", {})
        items = raw.items() if isinstance(raw, Mapping) else (str(s).partition(":")[::2] for s in as_list(raw))
        for name, spec in items:
            options.setdefault(str(name).strip(), {}).update(parse_options(spec, f"attack_opt {name}"))
        return cls(attacks, eps, norm, thresholds, options, pick("n_samples"),
                   pick("batch_size", _FIELD_DEFAULTS["batch_size"]),
                   pick("bisection_steps", _FIELD_DEFAULTS["bisection_steps"]), protocol,
                   pick("device", _FIELD_DEFAULTS["device"]))


_FIELD_DEFAULTS = {f.name: f.default for f in dataclasses.fields(EvalConfig)}


@dataclass(frozen=True)
class CertifyConfig:
    """What ``robustproto certify`` runs; :meth:`resolve` reads a recipe's ``[eval.certify]`` table (keys: the field
    names) overridden by the flags."""

    norm: str = _field("L2", "The norm of the certified radii (only L2 is certified).")
    n_samples: int | None = _field(None, "Certify a fixed subset of N test points.", none="all")
    radii: tuple[float, ...] = _field(DEFAULT_RADII, "Radii for the certified accuracy, e.g. 0.1,0.5,1.")
    batch_size: int = _field(256, "Images per batch.")
    tightness_samples: int = _field(256, "Compare the Lipschitz bound with the largest local gain of the embedding "
                                         "on the first N points (0: off).")
    device: str = _field("auto", DEVICE_HELP)

    def __post_init__(self) -> None:
        _convert_fields(self)
        _check_device(self)
        object.__setattr__(self, "norm", normalize_norm(self.norm))
        if self.norm != "L2":
            raise UsageError(f"norm: {self.norm} is not certified (the certificates are L2 radii); pass --norm L2")
        if not self.radii or not all(math.isfinite(r) and r >= 0 for r in self.radii):
            raise UsageError(f"radii: must be finite and ≥ 0, got {list(self.radii)}; pass e.g. --radii 0.5,1")
        _at_least(self, 1, "n_samples", "batch_size")

    @classmethod
    def resolve(cls, table: Mapping[str, Any] | None = None, **cli: Any) -> "CertifyConfig":
        """The ``[eval.certify]`` table (or ``None``) overridden by the flags given (``radii`` may be a string)."""
        keys = [f.name for f in dataclasses.fields(cls)]
        if table is not None and not isinstance(table, Mapping):
            raise UsageError(f"[eval.certify]: expected a table, got {table!r}")
        merged = {**_check_keys(table or {}, keys, "[eval.certify]: "), **_given(_check_keys(cli, keys, ""))}
        if isinstance(cli.get("radii"), str):
            merged["radii"] = parse_eps([cli["radii"]], "--radii")
        return cls(**merged)


@dataclass(frozen=True, eq=False)
class Recipe(Mapping):
    """A recipe TOML: its train keys as a mapping (the ``[eval]`` table under ``eval``), and the one place that
    resolves them for each command, flags over recipe over defaults. ``Recipe()`` is the empty recipe."""

    table: Mapping[str, Any] = field(default_factory=lambda: types.MappingProxyType({}))
    path: str | None = None

    def __getitem__(self, key: str) -> Any:
        return self.table[key]

    def __iter__(self):
        return iter(self.table)

    def __len__(self) -> int:
        return len(self.table)

    @property
    def output(self) -> str | None:
        """The recipe's run folder (``output``), where ``eval`` and ``certify`` find the model."""
        return None if self.table.get("output") is None else str(self.table["output"])

    def train_config(self, overrides: Mapping[str, Any] | None = None,
                     base: Mapping[str, Any] | None = None) -> TrainConfig:
        """``base`` (e.g. the config of a run to resume) → this recipe → ``overrides`` (flags; ``None`` skipped)."""
        return resolve_config(base, self.table, overrides)

    def eval_config(self, **flags: Any) -> EvalConfig:
        """The recipe's ``[eval]`` table overridden by the given flags, as ``robustproto eval`` runs it."""
        return EvalConfig.resolve(self.table.get("eval"), **flags)

    def certify_config(self, **flags: Any) -> CertifyConfig:
        """The recipe's ``[eval.certify]`` table overridden by the given flags, as ``robustproto certify`` runs it."""
        return CertifyConfig.resolve((self.table.get("eval") or {}).get("certify"), **flags)


def load_recipe(path: str | Path) -> Recipe:
    """Read a recipe TOML (``-`` in keys read as ``_``). Unknown train keys, and an ``[eval]`` or
    ``[eval.certify]`` that is not a table, are a UsageError; a missing file is a MissingFileError naming
    ``config``. Values are checked when a command resolves them (:meth:`Recipe.train_config`, ...)."""
    table = _check_keys(read_toml(path), _FIELDS, f"config: recipe {path}: ")
    if "eval" in table:
        table["eval"] = freeze_table(table["eval"], "eval")
        if "certify" in table["eval"]:
            freeze_table(table["eval"]["certify"], "eval.certify")
    return Recipe(types.MappingProxyType(table), str(path))
