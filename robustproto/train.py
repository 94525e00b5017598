"""The training loop: a :class:`~robustproto.config.TrainConfig` in, a trained run folder out.

Accelerate runs it (``Accelerator(mixed_precision=...)``, ``prepare``, ``accelerator.backward``,
``gather_for_metrics``), so the same code runs on one CPU, under ``torchrun --nproc_per_node N``
(gloo on CPU, NCCL on GPUs) or ``accelerate launch``. Around the plain step it runs the plugin hooks:

- head: ``init_from_data`` once before training on embeddings of a fixed subset of the training
  set (every process computes it, and DDP's initial broadcast makes rank 0's result everyone's);
  ``after_step`` after each optimiser step;
- regularizers: ``attach`` before ``prepare``; ``needs_input_grad`` makes ``x`` require grad;
  ``extra_inputs`` are embedded in the same backbone call as ``x``; ``penalty`` is added to the loss.

Failures stop cleanly: a non-finite loss raises :class:`NonFiniteLossError` naming the step and the
last good checkpoint; Ctrl-C (SIGINT) finishes the current step, saves a resumable state and raises
:class:`KeyboardInterrupt`; a model that does not fit the data, and an optimizer or schedule that cannot
work with the config's values, fail before the first step with a ValueError naming the option.
"""

from __future__ import annotations

import math
import os
import signal
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn
from torch.utils.data import DataLoader, Subset

from . import checkpoint
from .config import TrainConfig
from .errors import NonFiniteLossError
from .data import EpochShuffleSampler, ImageData, load_split, subset_indices
from .head import Head
from .model import ProtoModel, create_regularizer, wrap
from .regularizer import Regularizer, StepContext

__all__ = ["NonFiniteLossError", "TrainResult", "build_model", "load_pretrained_backbone", "train"]


def _first_line(exc: BaseException) -> str:
    return str(exc).splitlines()[0] if str(exc) else ""


@dataclass
class TrainResult:
    output: Path
    test_acc: float
    metrics: list[dict[str, Any]]
    model: ProtoModel


class _TrainStep(nn.Module):
    """What Accelerate prepares (and DDP wraps): embeddings and scores of ``x`` in one backbone call
    together with the regularizers' extra inputs, so DDP sees a single forward per step."""

    def __init__(self, model: ProtoModel):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, extra: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor,
                                                                             list[torch.Tensor]]:
        if extra:
            z_all = self.model.embed(torch.cat([x, *extra]))
            z, *extra_z = z_all.split([len(x), *(len(e) for e in extra)])
        else:
            z, extra_z = self.model.embed(x), []
        return z, self.model.head(z), extra_z


def load_pretrained_backbone(backbone: nn.Module, path: str | Path) -> None:
    """Load a local ``.safetensors``/``.pth`` state dict of the timm backbone into ``backbone`` (``num_classes=0``).

    Strict about missing keys; the classifier's keys may be absent or present (they are dropped). A
    first convolution saved for another channel count is adapted as timm does (``adapt_input_conv``).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pretrained_weights: no file {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"pretrained_weights: cannot read {path} ({type(exc).__name__}: "
                         f"{_first_line(exc)}); give a .safetensors or .pth state dict"
                         ) from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    from timm.models import adapt_input_conv

    own = backbone.state_dict()
    classifier = (getattr(backbone, "pretrained_cfg", None) or {}).get("classifier") or ""
    classifiers = (classifier,) if isinstance(classifier, str) else tuple(classifier)
    unexpected = [k for k in state if k not in own and not any(c and k.startswith(c + ".") for c in classifiers)]
    missing = [k for k in own if k not in state]
    if missing or unexpected:
        raise ValueError(f"pretrained_weights: {path} does not fit backbone {type(backbone).__name__}: "
                         f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, unexpected "
                         f"{unexpected[:5]}{'...' if len(unexpected) > 5 else ''}")
    adapted = {}
    for key, value in own.items():
        src = state[key]
        if src.shape != value.shape:
            if src.ndim == 4 and src.shape[0] == value.shape[0] and src.shape[2:] == value.shape[2:]:
                src = adapt_input_conv(value.shape[1], src)
            else:
                raise ValueError(f"pretrained_weights: {key} has shape {tuple(src.shape)} in {path} but "
                                 f"{tuple(value.shape)} in the model; use weights of the same architecture")
        adapted[key] = src
    backbone.load_state_dict(adapted, strict=True)


def build_model(cfg: TrainConfig, data: ImageData) -> ProtoModel:
    """The ProtoModel a config asks for, with in_chans and num_classes taken from the data."""
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
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            z = model.embed(x)
            scores = model.head(z)
    except Exception as exc:
        raise ValueError(f"backbone '{model.spec.get('backbone')}' does not accept the {data.name} images "
                         f"({shape}): {type(exc).__name__}: {_first_line(exc)}; "
                         "pass --img-size the backbone expects, or backbone options that fit the data "
                         "(e.g. --backbone-opt img_size=N)") from None
    finally:
        model.train(was_training)
    if z.shape != (len(x), model.embed_dim) or scores.shape != (len(x), model.num_classes):
        raise ValueError(f"backbone '{model.spec.get('backbone')}' on {shape} images gives embeddings of shape "
                         f"{tuple(z.shape)} (expected (B, {model.embed_dim})); pass --img-size the backbone expects")


def _overrides(cls: type, base: type, name: str) -> bool:
    return getattr(cls, name) is not getattr(base, name)


@torch.no_grad()
def _init_head(model: ProtoModel, data: ImageData, cfg: TrainConfig, device: torch.device) -> None:
    """``head.init_from_data`` on float32 embeddings of a fixed, un-augmented subset of the training set.

    The embeddings are those the first training steps see: BatchNorm on batch statistics (its running
    statistics of a fresh network say nothing yet; they are restored afterwards), dropout off.
    """
    if not _overrides(type(model.head), Head, "init_from_data"):
        return
    plain = data.without_augmentation()
    keep = subset_indices(len(plain), cfg.init_samples)
    loader = DataLoader(Subset(plain, keep.tolist()) if keep is not None else plain, batch_size=cfg.batch_size * 2)
    buffers = {name: b.clone() for name, b in model.named_buffers()}
    model.eval()
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.train()
    zs, ys = [], []
    for x, y in loader:
        zs.append(model.embed(x.to(device)).float())
        ys.append(y.to(device))
    for name, b in model.named_buffers():
        b.copy_(buffers[name])
    model.train()
    model.head.init_from_data(torch.cat(zs), torch.cat(ys))


def _scheduler(cfg: TrainConfig, optimizer: torch.optim.Optimizer):
    """timm's epoch scheduler ``cfg.sched`` over ``optimizer``, stepped to epoch 0 (``None`` for ``none``).

    A schedule timm cannot build or compute for the config's values is a ValueError naming ``sched``.
    """
    if cfg.sched == "none":
        return None
    from timm.scheduler import create_scheduler_v2

    try:
        scheduler, _ = create_scheduler_v2(optimizer, sched=cfg.sched, num_epochs=cfg.epochs,
                                           warmup_epochs=cfg.warmup_epochs, warmup_lr=cfg.lr * 0.01)
        scheduler.step(0)
    except (ArithmeticError, AssertionError, ValueError) as exc:
        raise ValueError(f"sched: timm's '{cfg.sched}' schedule fails for these epochs/warmup_epochs "
                         f"({type(exc).__name__}: {_first_line(exc)}); pass smaller --epochs/--warmup-epochs or "
                         "another --sched") from None
    return scheduler


def _create_optimizer(name: str, params: nn.Module | list[nn.Parameter], lr: float,
                      weight_decay: float) -> torch.optim.Optimizer:
    from timm.optim import create_optimizer_v2

    try:
        return create_optimizer_v2(params, opt=name, lr=lr, weight_decay=weight_decay)
    except (AssertionError, ValueError, KeyError) as exc:
        raise ValueError(f"optimizer: timm cannot create '{name}' ({exc}); use one of "
                         "timm.optim.list_optimizers(), e.g. adam, adamw, sgd") from None


_PROBE_STEPS = 5


def _probe_failure(name: str, lr: float, weight_decay: float, device: torch.device) -> str | None:
    """How optimizer ``name`` fails in a few steps on a throwaway float32 weight of ones with a unit gradient
    on ``device`` (that of the training, as some optimizers run only on CUDA).

    ``None`` when it keeps the weight finite; else a phrase such as ``"fails in its step (RuntimeError: ...)"``.
    Only errors a value can cause are caught (``RuntimeError``, ``ValueError``, ``ArithmeticError``).
    """
    weight = nn.Parameter(torch.ones(2, 2, device=device))
    optimizer = _create_optimizer(name, [weight], lr, weight_decay)
    try:
        for _ in range(_PROBE_STEPS):
            weight.grad = torch.ones_like(weight)
            optimizer.step()
    except (ArithmeticError, RuntimeError, ValueError) as exc:
        return f"fails in its step ({type(exc).__name__}: {_first_line(exc)})"
    bad = weight.detach()[~torch.isfinite(weight.detach())]
    if len(bad):
        return f"turns a test weight of 1 with gradient 1 into {float(bad[0])} within {_PROBE_STEPS} steps"
    return None


def _optimizer(cfg: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    """timm's optimizer ``cfg.optimizer`` over ``model``'s parameters, once a probe shows it can take a step.

    The probe (:func:`_probe_failure`) runs the same optimizer, lr and weight decay on a throwaway weight, so
    a value the optimizer cannot work with (an lr whose update overflows float32, an optimizer the loop
    cannot drive) is a ValueError naming the option to change (``lr``, ``weight_decay`` or ``optimizer``)
    before the first training step, not an error from inside it.
    """
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    failure = _probe_failure(cfg.optimizer, cfg.lr, cfg.weight_decay, device)
    if failure is not None:
        default_lr = TrainConfig.lr
        if _probe_failure(cfg.optimizer, default_lr, 0.0, device) is not None:
            key, fix = "optimizer", "choose another --optimizer, e.g. adam, adamw, sgd"
        elif cfg.weight_decay > 0 and _probe_failure(cfg.optimizer, cfg.lr, 0.0, device) is None:
            key, fix = "weight_decay", "pass a smaller --weight-decay"
        else:
            key, fix = "lr", f"pass a smaller --lr (default {default_lr:g})"
        raise ValueError(f"{key}: timm's {cfg.optimizer} with lr={cfg.lr:g} and weight_decay={cfg.weight_decay:g} "
                         f"{failure}; {fix}")
    return _create_optimizer(cfg.optimizer, model, cfg.lr, cfg.weight_decay)


class _StopFlag:
    """SIGINT sets a flag that the loop reads between steps, so a checkpoint is never half a step.

    A second Ctrl-C interrupts at once (the previous handler is restored by the first).
    """

    def __init__(self) -> None:
        self.set = False

    @contextmanager
    def installed(self) -> Iterator["_StopFlag"]:
        import threading

        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = signal.getsignal(signal.SIGINT)

        def handler(signum, frame):
            self.set = True
            signal.signal(signal.SIGINT, previous)

        signal.signal(signal.SIGINT, handler)
        try:
            yield self
        finally:
            signal.signal(signal.SIGINT, previous)


def _quiet() -> bool:
    return not sys.stdout.isatty() or bool(os.environ.get("CI"))


def _progress(console, enabled: bool):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(TextColumn("epoch {task.fields[epoch]}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[ips]:.0f} img/s  loss {task.fields[loss]:.4f}  "
                               "acc {task.fields[acc]:.3f}"),
                    TimeRemainingColumn(), console=console, transient=True, disable=not enabled)


def _evaluate(step_module: nn.Module, loader: DataLoader, accelerator) -> float:
    """Accuracy over the test set, each sample counted exactly once across processes."""
    step_module.eval()
    correct = total = 0
    with torch.no_grad():
        for x, y in loader:
            _, scores, _ = step_module(x, [])
            pred, y = accelerator.gather_for_metrics((scores.argmax(1), y))
            correct += int((pred == y).sum())
            total += len(y)
    step_module.train()
    return correct / max(total, 1)


def _sync_buffers(model: nn.Module, accelerator) -> None:
    """Give every process rank 0's buffers (BatchNorm statistics drift per process after the last step)."""
    if accelerator.num_processes > 1:
        import torch.distributed as dist

        for buf in model.buffers():
            dist.broadcast(buf, src=0)


def _losses(step_module: nn.Module, model: ProtoModel, regs: dict[str, Regularizer], x: torch.Tensor,
            y: torch.Tensor, step: int, accelerator) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
    """One forward through the prepared module: the head's loss, each regularizer's penalty, the scores."""
    extras = {n: r.extra_inputs(x) for n, r in regs.items()}
    with accelerator.autocast():
        z, scores, extra_z = step_module(x, [e for e in extras.values() if e is not None])
        extra_iter = iter(extra_z)
        loss = model.head.loss(z, scores, y)
        penalties = {
            n: r.penalty(StepContext(x=x, y=y, z=z, scores=scores,
                                     extra_z=next(extra_iter) if extras[n] is not None else None,
                                     model=model, step=step))
            for n, r in regs.items()
        }
    return loss, penalties, scores


def _agree(flag: bool, accelerator) -> bool:
    """True on every process when it is true on any (so all take the same branch)."""
    if accelerator.num_processes == 1:
        return flag
    return bool(accelerator.reduce(torch.tensor([float(flag)], device=accelerator.device), "sum")[0] > 0)


def train(cfg: TrainConfig) -> TrainResult:
    """Train a model as ``cfg`` says and write the run folder ``cfg.output`` (see :mod:`robustproto.checkpoint`)."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    # Accelerate only forms a CPU process group (gloo) when told it runs on CPU, e.g. under torchrun
    multi_cpu = not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1
    accelerator = Accelerator(mixed_precision=cfg.mixed_precision, cpu=multi_cpu)
    try:
        return _train(cfg, accelerator)
    finally:
        # Accelerate keeps its settings in a process-wide singleton; forget them (the process group stays)
        # so a later run in the same interpreter may use another mixed precision
        AcceleratorState._reset_state()


def _train(cfg: TrainConfig, accelerator) -> TrainResult:
    from accelerate.utils import gather_object, set_seed
    from rich.console import Console

    console = Console(quiet=not accelerator.is_main_process, highlight=False, soft_wrap=True)
    out = Path(cfg.output)
    if cfg.resume:
        checkpoint.require_state(cfg.resume)  # fail before any work
    set_seed(cfg.seed)

    train_data = load_split(cfg.dataset, "train", cfg.data_dir, cfg.download, cfg.img_size, cfg.max_train_samples,
                            augment=cfg.augment)
    test_data = load_split(cfg.dataset, "test", cfg.data_dir, cfg.download, cfg.img_size, cfg.max_test_samples)
    if test_data.num_classes != train_data.num_classes:
        raise ValueError(f"dataset: train has {train_data.num_classes} classes but test {test_data.num_classes}")
    model = build_model(cfg, train_data)
    _check_fits(model, train_data)

    names = [name for name, _ in cfg.reg]
    if len(set(names)) != len(names):
        raise ValueError(f"reg: each regularizer may be given once, got {names}")
    regs: dict[str, Regularizer] = {name: create_regularizer(name, **opts) for name, opts in cfg.reg}
    for reg in regs.values():
        reg.attach(model)
    needs_input_grad = any(reg.needs_input_grad for reg in regs.values())

    device = accelerator.device
    model.to(device)
    for reg in regs.values():
        reg.to(device)
    if not cfg.resume:
        _init_head(model, train_data, cfg, device)

    optimizer = _optimizer(cfg, model)
    scheduler = _scheduler(cfg, optimizer)
    sampler = EpochShuffleSampler(len(train_data), cfg.seed)
    train_loader = DataLoader(train_data, batch_size=cfg.batch_size, sampler=sampler, num_workers=cfg.workers,
                              drop_last=False, persistent_workers=cfg.workers > 0)
    test_loader = DataLoader(test_data, batch_size=cfg.batch_size * 2, shuffle=False, num_workers=cfg.workers)
    step_module, optimizer, train_loader, test_loader = accelerator.prepare(
        _TrainStep(model), optimizer, train_loader, test_loader)
    if regs:
        accelerator.register_for_checkpointing(*regs.values())
    # Models and plugin state were built from the same seed everywhere; from here on each process draws its own
    # noise (regularizer neighbours and projections, dropout, augmentation) so processes do not repeat each other.
    set_seed(cfg.seed, device_specific=True)

    start_epoch, skip_batches, global_step, partial = 0, 0, 0, None
    history: list[dict[str, Any]] = []
    if cfg.resume:
        progress = checkpoint.load_state(accelerator, Path(cfg.resume))
        start_epoch, skip_batches = progress["epoch"], progress["step_in_epoch"]
        global_step, partial = progress["global_step"], progress.get("partial")
        history = [r for r in checkpoint.read_jsonl(Path(cfg.resume) / checkpoint.METRICS_FILE)
                   if r["epoch"] <= start_epoch]
    if scheduler is not None:
        scheduler.step(start_epoch)  # timm schedulers are functions of the epoch: rebuilt, then moved to it
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        checkpoint.write_json(out / checkpoint.CONFIG_FILE, cfg.to_dict())
        checkpoint.append_jsonl(out / checkpoint.METRICS_FILE, [], keep=history)
    last_good = str(checkpoint.state_dir(cfg.resume)) if cfg.resume else None  # not a stale state in `out`
    backbone_params = list(model.backbone.parameters())
    show_bar = accelerator.is_main_process and not _quiet()
    console.print(f"training {model.spec['backbone']} + {cfg.head} head on {cfg.dataset} "
                  f"({len(train_data)} train / {len(test_data)} test, {accelerator.num_processes} process(es), "
                  f"{device}, mixed precision {cfg.mixed_precision})")

    stop = _StopFlag()
    test_acc = history[-1]["test_acc"] if history else float("nan")
    with stop.installed(), _progress(console, show_bar) as bar:
        for epoch in range(start_epoch, cfg.epochs):
            frozen = epoch < cfg.freeze_backbone_epochs
            step_module.train()
            if frozen:
                model.backbone.eval()  # frozen means its BatchNorm statistics too
            sums = dict(partial or {"loss": 0.0, "correct": 0.0, "seen": 0.0, "seconds": 0.0,
                                    **{f"reg/{n}": 0.0 for n in regs}})
            batches_done, partial = skip_batches, None
            loader = accelerator.skip_first_batches(train_loader, skip_batches) if skip_batches else train_loader
            loader.set_epoch(epoch)  # Accelerate's loaders pass their own epoch count on to our sampler
            skip_batches = 0
            task = bar.add_task("train", total=len(train_loader), completed=batches_done, epoch=epoch + 1,
                                ips=0.0, loss=float("nan"), acc=0.0)
            stopping = False
            started = time.perf_counter()
            seconds_before = sums["seconds"]
            for x, y in loader:
                if needs_input_grad:
                    x.requires_grad_(True)
                loss, penalties, scores = _losses(step_module, model, regs, x, y, global_step, accelerator)
                total = loss + sum(penalties.values()) if penalties else loss
                terms = torch.stack([loss.detach().float(), *(p.detach().float() for p in penalties.values())])
                flags = torch.tensor([float(not torch.isfinite(terms).all()), float(stop.set)], device=device)
                if accelerator.num_processes > 1:
                    flags = accelerator.reduce(flags, "sum")
                if flags[0] > 0:
                    bad = [f"{name} = {value}" for name, value in
                           zip(["head loss", *(f"reg/{n}" for n in regs)], terms.tolist()) if not math.isfinite(value)]
                    where = (f"{last_good} (resume with --resume {out})" if last_good
                             else "none (no epoch finished yet)")
                    raise NonFiniteLossError(
                        f"non-finite loss at step {global_step + 1} (epoch {epoch + 1}, batch {batches_done + 1}): "
                        f"{', '.join(bad) or 'on another process'}; stopped before updating the weights. "
                        f"Last good checkpoint: {where}. Lower --lr, use --mixed-precision no/bf16, or check the data")
                optimizer.zero_grad(set_to_none=True)
                accelerator.backward(total)
                if frozen:
                    for p in backbone_params:
                        p.grad = None  # optimisers skip parameters without a gradient
                optimizer.step()
                with torch.no_grad():
                    model.head.after_step()
                global_step += 1
                batches_done += 1
                sums["loss"] += float(terms[0]) * len(y)
                sums["correct"] += float((scores.detach().argmax(1) == y).sum())
                sums["seen"] += len(y)
                for n in regs:
                    sums[f"reg/{n}"] += float(penalties[n].detach()) * len(y)
                elapsed = sums["seconds"] - seconds_before + time.perf_counter() - started
                bar.update(task, advance=1, loss=sums["loss"] / sums["seen"], acc=sums["correct"] / sums["seen"],
                           ips=sums["seen"] * accelerator.num_processes / max(elapsed, 1e-9))
                if flags[1] > 0:  # every process saw the same flags, so they all stop after this step
                    stopping = True
                    break
            bar.remove_task(task)
            sums["seconds"] = seconds_before + time.perf_counter() - started
            if stopping and batches_done < len(train_loader):
                # the partial sums are the main process's; after a resume they stand for all processes
                path = checkpoint.save_state(accelerator, out, {
                    "epoch": epoch, "step_in_epoch": batches_done, "global_step": global_step,
                    "partial": sums})
                if accelerator.is_main_process:
                    checkpoint.save_model(model, out / checkpoint.MODEL_FILE, cfg.to_dict())
                console.print(f"interrupted in epoch {epoch + 1} after batch {batches_done}; resumable state saved "
                              f"in {path}: continue with `robustproto train --resume {out}`")
                raise KeyboardInterrupt

            train_seconds = sums["seconds"]
            totals = torch.tensor([sums["loss"], sums["correct"], sums["seen"],
                                   *(sums[f"reg/{n}"] for n in regs)], dtype=torch.float64, device=device)
            if accelerator.num_processes > 1:
                totals = accelerator.reduce(totals, "sum")
            _sync_buffers(model, accelerator)
            eval_started = time.perf_counter()
            test_acc = _evaluate(step_module, test_loader, accelerator)
            seen = float(totals[2])
            record: dict[str, Any] = {
                "epoch": epoch + 1,
                "train_loss": float(totals[0]) / seen,
                "train_acc": float(totals[1]) / seen,
                "test_acc": test_acc,
                "seconds": train_seconds + time.perf_counter() - eval_started,
                "images_per_second": seen / max(train_seconds, 1e-9),
                "lr": optimizer.param_groups[0]["lr"],
            }
            for i, (n, reg) in enumerate(regs.items()):
                record[f"reg/{n}"] = float(totals[3 + i]) / seen
                for key, value in reg.metrics().items():
                    record[f"reg/{n}/{key}"] = float(value)
            hashes = gather_object([checkpoint.weights_sha256(model)])
            record["weights_sha256"] = hashes
            if len(set(hashes)) != 1:
                raise RuntimeError(f"processes hold different weights after epoch {epoch + 1} ({hashes}); "
                                   "this is a bug in a plugin or the loop, please report it")
            if scheduler is not None:
                scheduler.step(epoch + 1)
            history.append(record)
            if accelerator.is_main_process:
                checkpoint.save_model(model, out / checkpoint.MODEL_FILE, cfg.to_dict())
                checkpoint.append_jsonl(out / checkpoint.METRICS_FILE, [record])
            last_good = str(checkpoint.save_state(accelerator, out, {
                "epoch": epoch + 1, "step_in_epoch": 0, "global_step": global_step}))
            console.print(f"epoch {epoch + 1}/{cfg.epochs}: loss {record['train_loss']:.4f}  "
                          f"train acc {record['train_acc']:.4f}  test acc {test_acc:.4f}  "
                          f"{record['images_per_second']:.0f} img/s  {record['seconds']:.1f} s")
            if stopping or _agree(stop.set, accelerator):
                console.print(f"interrupted after epoch {epoch + 1}; continue with "
                              f"`robustproto train --resume {out}`")
                raise KeyboardInterrupt
    console.print(f"test accuracy: {test_acc:.4f}")
    return TrainResult(output=out, test_acc=test_acc, metrics=history, model=model)
