"""Everything a run needs before its first step: data, model, regularizers, optimizer, prepared loaders, resume.

Each part fails early with a one-line :class:`~robustproto.errors.UsageError` (or
:class:`~robustproto.errors.MissingFileError`) naming the option to change: a model that does not fit the
data, pretrained weights of another architecture, a regularizer given twice, an optimizer or schedule that
cannot work with the config's values, a ``--resume`` folder without a saved state.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Subset

from .. import checkpoint
from ..config import TrainConfig
from ..data import EpochShuffleSampler, ImageData, SeededItems, TimmData, load_split, subset_indices
from ..errors import MissingFileError, UsageError
from ..model import ProtoModel, wrap
from ..registry import create_regularizer
from ..regularizer import Regularizer
from ..utils import describe_error, eval_mode, model_device
from .optim import create_optimizer, create_scheduler
from .step import TrainStep, check_replaces_inputs

__all__ = ["PreparedRun", "build_model", "check_compile", "create_ema", "create_mixup", "create_regularizers",
           "init_head_from_data", "load_data", "load_pretrained_backbone", "prepare_run"]


def load_pretrained_backbone(backbone: nn.Module, path: str | Path) -> None:
    """Load a local ``.safetensors``/``.pth`` state dict of the timm backbone into ``backbone`` (``num_classes=0``).

    Strict about missing keys; the classifier's keys may be absent or present (they are dropped). A
    first convolution saved for another channel count is adapted as timm does (``adapt_input_conv``).
    A missing file is a :class:`~robustproto.errors.MissingFileError`; an unreadable file or weights of
    another architecture a :class:`~robustproto.errors.UsageError` naming ``pretrained_weights``.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"pretrained_weights: no file {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise UsageError(f"pretrained_weights: cannot read {path} ({describe_error(exc)}); give a .safetensors or .pth "
                         "state dict") from exc
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    from timm.models import adapt_input_conv

    own = backbone.state_dict()
    classifier = (getattr(backbone, "pretrained_cfg", None) or {}).get("classifier") or ""
    classifiers = (classifier,) if isinstance(classifier, str) else tuple(classifier)
    unexpected = [k for k in state if k not in own and not any(c and k.startswith(c + ".") for c in classifiers)]
    missing = [k for k in own if k not in state]
    if missing or unexpected:
        raise UsageError(f"pretrained_weights: {path} does not fit backbone {type(backbone).__name__}: "
                         f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, unexpected "
                         f"{unexpected[:5]}{'...' if len(unexpected) > 5 else ''}")
    adapted = {}
    for key, value in own.items():
        src = state[key]
        if src.shape != value.shape:
            if src.ndim == 4 and src.shape[0] == value.shape[0] and src.shape[2:] == value.shape[2:]:
                src = adapt_input_conv(value.shape[1], src)
            else:
                raise UsageError(f"pretrained_weights: {key} has shape {tuple(src.shape)} in {path} but "
                                 f"{tuple(value.shape)} in the model; use weights of the same architecture")
        adapted[key] = src
    backbone.load_state_dict(adapted, strict=True)


def build_model(cfg: TrainConfig, data: ImageData) -> ProtoModel:
    """The ProtoModel ``cfg`` asks for (backbone, head, options, normalisation, pretrained weights), with
    ``in_chans`` and ``num_classes`` taken from ``data``; freshly initialised from torch's global RNG."""
    backbone_kwargs = {"in_chans": data.in_chans, **cfg.backbone_opt}
    model = wrap(cfg.backbone, head=cfg.head, num_classes=data.num_classes, embed_dim=cfg.embed_dim,
                 head_options=dict(cfg.head_opt), mean=cfg.mean, std=cfg.std, **backbone_kwargs)
    if cfg.pretrained_weights:
        load_pretrained_backbone(model.backbone, cfg.pretrained_weights)
    return model


def _check_fits(model: ProtoModel, data: ImageData) -> None:
    """A dry forward of two samples, so a wrong image size or channel count fails before training."""
    x = torch.stack([data[i][0] for i in range(min(2, len(data)))])
    shape = "×".join(str(s) for s in x.shape[1:])
    try:
        with eval_mode(model), torch.no_grad():
            z = model.embed(x)
            scores = model.head(z)
    except Exception as exc:
        raise UsageError(f"backbone '{model.spec.get('backbone')}' does not accept the {data.name} images "
                         f"({shape}): {describe_error(exc)}; pass --img-size the backbone expects, or backbone options "
                         "that fit the data (e.g. --backbone-opt img_size=N)") from exc
    if z.shape != (len(x), model.embed_dim) or scores.shape != (len(x), model.num_classes):
        raise UsageError(f"backbone '{model.spec.get('backbone')}' on {shape} images gives embeddings of shape "
                         f"{tuple(z.shape)} (expected (B, {model.embed_dim})); pass --img-size the backbone expects")


@torch.no_grad()
def init_head_from_data(model: ProtoModel, data: ImageData, samples: int | None = None,
                        batch_size: int = 256) -> bool:
    """Call ``model.head.init_from_data(z, y)`` on float32 embeddings of a fixed, un-augmented subset of ``data``.

    Does nothing (and returns ``False``) for a head that does not ``supports_init_from_data``. ``samples``
    caps the subset (the same for every run; ``None`` = all of ``data``), embedded in batches of
    ``batch_size`` on the model's device. The embeddings are those the first training steps see: BatchNorm
    on batch statistics, dropout off. Every module's mode and every buffer other than those the head's hook
    sets (BatchNorm running statistics included) are as they were before. Returns ``True`` when it ran.
    """
    if not model.head.supports_init_from_data:
        return False
    plain = data.without_augmentation()
    keep = subset_indices(len(plain), samples)
    loader = DataLoader(Subset(plain, keep.tolist()) if keep is not None else plain, batch_size=batch_size)
    device = model_device(model)
    buffers = {name: b.clone() for name, b in model.named_buffers()}
    zs, ys = [], []
    with eval_mode(model):
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.train()  # a fresh network's running statistics say nothing yet
        for x, y in loader:
            zs.append(model.embed(x.to(device)).float())
            ys.append(y.to(device))
    for name, b in model.named_buffers():
        b.copy_(buffers[name])
    model.head.init_from_data(torch.cat(zs), torch.cat(ys))
    return True


def load_data(cfg: TrainConfig) -> tuple[ImageData | TimmData, ImageData | TimmData]:
    """The training split (augmented as ``cfg.augment`` says, with timm's ``aa``/``reprob``/``scale`` on a timm
    dataset spec) and the test split of ``cfg.dataset``, subset to ``max_train_samples``/``max_test_samples``; a
    UsageError when their class counts differ. A timm spec's splits are streamed (:class:`~robustproto.data.TimmData`).
    """
    train_data = load_split(cfg.dataset, "train", cfg.data_dir, cfg.download, cfg.img_size, cfg.max_train_samples,
                            augment=cfg.augment, aa=cfg.aa, reprob=cfg.reprob, scale=cfg.scale,
                            interpolation=cfg.interpolation)
    test_data = load_split(cfg.dataset, "test", cfg.data_dir, cfg.download, cfg.img_size, cfg.max_test_samples,
                           interpolation=cfg.interpolation)
    if test_data.num_classes != train_data.num_classes:
        raise UsageError(f"dataset: train has {train_data.num_classes} classes but test {test_data.num_classes}")
    return train_data, test_data


def create_regularizers(cfg: TrainConfig, model: ProtoModel) -> dict[str, Regularizer]:
    """The regularizers of ``cfg.reg`` by name, in the given order, each attached to ``model``.

    A name given twice is a :class:`~robustproto.errors.UsageError` naming ``reg``.
    """
    names = [name for name, _ in cfg.reg]
    if len(set(names)) != len(names):
        raise UsageError(f"reg: each regularizer may be given once, got {names}")
    regs = {name: create_regularizer(name, **opts) for name, opts in cfg.reg}
    check_replaces_inputs(regs)
    for reg in regs.values():
        reg.attach(model)
    return regs


def check_compile(cfg: TrainConfig, regs: dict[str, Regularizer]) -> None:
    """A :class:`~robustproto.errors.UsageError` when ``cfg.compile`` meets a regularizer that ``needs_input_grad``:
    its penalty differentiates input gradients of the step again (double backward), which torch.compile's
    training graphs do not support."""
    needing = [n for n, r in regs.items() if r.needs_input_grad]
    if cfg.compile and needing:
        raise UsageError(f"compile: regularizer {', '.join(needing)} needs input gradients (double backward), which "
                         "torch.compile does not support; drop --compile or that regularizer")


def create_ema(cfg: TrainConfig, model: ProtoModel):
    """timm's ``ModelEmaV3`` of ``model`` when ``cfg.model_ema``, else ``None``: its parameters are averaged with
    ``cfg.model_ema_decay`` (timm's warm-up with ``cfg.model_ema_warmup``), its buffers (BatchNorm statistics,
    head state) copied from the raw model at each update. Call it before the regularizers attach (their hooks
    must not be copied) and load the model's state into its ``module`` once the model is initialised."""
    if not cfg.model_ema:
        return None
    from timm.utils import ModelEmaV3

    return ModelEmaV3(model, decay=cfg.model_ema_decay, use_warmup=cfg.model_ema_warmup, exclude_buffers=True)


def create_mixup(cfg: TrainConfig, model: ProtoModel):
    """timm's ``Mixup`` when ``cfg.mixup`` or ``cfg.cutmix`` is on (each batch mixed as a whole, with probability
    ``cfg.mixup_prob``; no label smoothing), else ``None``.

    A :class:`~robustproto.errors.UsageError` when the run cannot train on mixed batches: a head without
    ``supports_soft_targets``, or any regularizer (regularizers get ``ctx.y`` as integer labels, to attack or to
    hinge on, which a mixed image does not have). timm draws the mixing from numpy's global RNG, which
    Accelerate's ``save_state``/``load_state`` save and restore per process, so a resumed run mixes as the
    uninterrupted one does.
    """
    if not (cfg.mixup or cfg.cutmix):
        return None
    if not model.head.supports_soft_targets:
        raise UsageError(f"mixup/cutmix: head '{cfg.head}' does not take soft targets; use --head linear or drop "
                         "--mixup/--cutmix")
    if cfg.reg:
        raise UsageError(f"mixup/cutmix: regularizers see integer labels, which mixed images do not have (reg "
                         f"{', '.join(name for name, _ in cfg.reg)}); drop --reg or --mixup/--cutmix")
    from timm.data import Mixup

    return Mixup(mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix, prob=cfg.mixup_prob,
                 switch_prob=cfg.mixup_switch_prob, mode="batch", label_smoothing=0.0,
                 num_classes=model.num_classes)


@dataclass
class PreparedRun:
    """A run ready for its first (or next) step; what :func:`prepare_run` returns.

    ``model`` and ``regs`` are the unwrapped modules; ``step_module``, ``optimizer`` and the loaders are
    Accelerate's prepared objects; ``ema`` is timm's ``ModelEmaV3`` of ``model`` (``--model-ema``) or ``None``,
    ``mixup`` timm's ``Mixup`` (``--mixup``/``--cutmix``) or ``None``. ``start_epoch``, ``resume_at`` (batches of that epoch already done),
    ``global_step`` and ``partial`` (that epoch's running sums) say where training continues; ``history``
    holds the metrics records of the finished epochs and ``last_good`` the latest saved state, if any.
    """

    out: Path
    train_data: ImageData
    test_data: ImageData
    model: ProtoModel
    regs: dict[str, Regularizer]
    step_module: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    train_loader: DataLoader
    test_loader: DataLoader
    start_epoch: int = 0
    resume_at: int = 0
    global_step: int = 0
    partial: dict[str, float] | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    last_good: str | None = None
    ema: Any = None
    mixup: Any = None


def _resume(run: PreparedRun, cfg: TrainConfig, accelerator) -> None:
    """Restore the latest state of ``cfg.resume`` into the prepared objects and where it stopped into ``run``."""
    progress = checkpoint.load_state(accelerator, Path(cfg.resume))
    run.start_epoch, run.resume_at = progress["epoch"], progress["step_in_epoch"]
    run.global_step, run.partial = progress["global_step"], progress.get("partial")
    run.history = [r for r in checkpoint.read_jsonl(Path(cfg.resume) / checkpoint.METRICS_FILE)
                   if r["epoch"] <= run.start_epoch]
    run.last_good = str(checkpoint.state_dir(cfg.resume))  # not a stale state in `out`


def prepare_run(cfg: TrainConfig, accelerator) -> PreparedRun:
    """Set up the run ``cfg`` describes on ``accelerator``, every process alike, and start its output folder.

    In order (the order fixes what the seeded RNG gives, so a run and its resumed twin agree): check a
    ``--resume`` state exists; seed; load the data; build the model, refuse mixup/cutmix it cannot train with,
    and check it fits the data; convert it to
    channels-last (``--channels-last``); copy it for the EMA (``--model-ema``); create and attach the
    regularizers (refused with ``--compile`` when one needs input gradients); move them to the device;
    initialise the head from data (not on a resume) and start the EMA there; create the optimizer (probed) and
    scheduler; prepare the model (as a :class:`TrainStep`), optimizer and loaders; register the regularizers'
    and the EMA's state for checkpointing; reseed per process; restore a resumed state and move the scheduler
    to its epoch. The main process then writes ``config.json`` and rewrites ``metrics.jsonl`` to
    the finished epochs.
    """
    from accelerate.utils import set_seed

    if cfg.resume:
        checkpoint.require_state(cfg.resume)  # fail before any work
    set_seed(cfg.seed)
    train_data, test_data = load_data(cfg)
    model = build_model(cfg, train_data)
    mixup = create_mixup(cfg, model)
    _check_fits(model, train_data)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    ema = create_ema(cfg, model)
    regs = create_regularizers(cfg, model)
    check_compile(cfg, regs)
    model.to(accelerator.device)
    for reg in regs.values():
        reg.to(accelerator.device)
    if not cfg.resume:
        init_head_from_data(model, train_data, cfg.init_samples, cfg.batch_size * 2)
    if ema is not None:
        ema.to(accelerator.device)
        ema.module.load_state_dict(model.state_dict())  # the EMA starts at the initialised weights
    optimizer = create_optimizer(cfg, model)
    train_loader = DataLoader(SeededItems(train_data, cfg.seed), batch_size=cfg.batch_size,
                              sampler=EpochShuffleSampler(len(train_data), cfg.seed), num_workers=cfg.workers,
                              drop_last=False, persistent_workers=cfg.workers > 0)
    test_loader = DataLoader(test_data, batch_size=cfg.batch_size * 2, shuffle=False, num_workers=cfg.workers)
    scheduler_optimizer = optimizer  # timm's scheduler sets the learning rates of the optimizer itself
    step_module, optimizer, train_loader, test_loader = accelerator.prepare(
        TrainStep(model, cfg.channels_last), optimizer, train_loader, test_loader)
    # a process's updates in an epoch: its batches, one update per grad_accum_steps and one at the epoch's end
    scheduler = create_scheduler(cfg, scheduler_optimizer, math.ceil(len(train_loader) / cfg.grad_accum_steps))
    if regs or ema is not None:
        accelerator.register_for_checkpointing(*regs.values(), *([ema] if ema is not None else []))
    # Models and plugin state were built from the same seed everywhere; from here on each process draws its own
    # noise (regularizer neighbours and projections, dropout, augmentation) so processes do not repeat each other.
    set_seed(cfg.seed, device_specific=True)
    run = PreparedRun(Path(cfg.output), train_data, test_data, model, regs, step_module, optimizer, scheduler,
                      train_loader, test_loader, ema=ema, mixup=mixup)
    if cfg.resume:
        _resume(run, cfg, accelerator)
    if scheduler is not None:  # timm schedulers are functions of the epoch or update: rebuilt, then moved there
        scheduler.step(run.start_epoch)
        scheduler.step_update(run.global_step)
    if accelerator.is_main_process:
        run.out.mkdir(parents=True, exist_ok=True)
        checkpoint.write_json(run.out / checkpoint.CONFIG_FILE, cfg.to_dict())
        checkpoint.append_jsonl(run.out / checkpoint.METRICS_FILE, [], keep=run.history)
    return run
