"""``train(cfg)``: setup, then the epoch loop: train an epoch, evaluate, log, checkpoint; Ctrl-C and NaN stops."""

from __future__ import annotations

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
from torch.utils.data import DataLoader

from .. import checkpoint
from ..config import TrainConfig
from ..model import ProtoModel
from ..utils import eval_mode
from .setup import PreparedRun, prepare_run
from .step import EpochResult, TrainStep, train_one_epoch
from .trackers import PROJECT, TRACKER_DIR, epoch_values, resolve_trackers, tracker_config, tracker_init_kwargs

__all__ = ["TrainResult", "train"]


@dataclass
class TrainResult:
    """What :func:`train` returns: the run folder, the last epoch's test accuracy, every epoch's metrics
    record (as in ``metrics.jsonl``) and the trained model (unwrapped, on the training device)."""

    output: Path
    test_acc: float
    metrics: list[dict[str, Any]]
    model: ProtoModel


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


def _progress(console, enabled: bool):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(TextColumn("epoch {task.fields[epoch]}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[ips]:.0f} img/s  loss {task.fields[loss]:.4f}  "
                               "acc {task.fields[acc]:.3f}"),
                    TimeRemainingColumn(), console=console, transient=True, disable=not enabled)


def _evaluate(step_module: nn.Module, loader: DataLoader, accelerator) -> float:
    """Accuracy over the test set, each sample counted exactly once across processes; under the run's autocast
    also for a module Accelerate did not prepare (the EMA's)."""
    correct = total = 0
    with eval_mode(step_module), torch.no_grad():
        for x, y in loader:
            with accelerator.autocast():
                _, scores, _ = step_module(x, [])
            pred, y = accelerator.gather_for_metrics((scores.argmax(1), y))
            correct += int((pred == y).sum())
            total += len(y)
    return correct / max(total, 1)


def _sync_buffers(model: nn.Module, accelerator) -> None:
    """Give every process rank 0's buffers (BatchNorm statistics drift per process after the last step)."""
    if accelerator.num_processes > 1:
        import torch.distributed as dist

        for buf in model.buffers():
            dist.broadcast(buf, src=0)


def _agree(flag: bool, accelerator) -> bool:
    """True on every process when it is true on any (so all take the same branch)."""
    if accelerator.num_processes == 1:
        return flag
    return bool(accelerator.reduce(torch.tensor([float(flag)], device=accelerator.device), "sum")[0] > 0)


def _epoch(run: PreparedRun, cfg: TrainConfig, accelerator, epoch: int, stop: _StopFlag, bar) -> EpochResult:
    """One epoch of training with a progress bar; continues an interrupted epoch where it stopped."""
    task = bar.add_task("train", total=len(run.train_loader), completed=run.resume_at, epoch=epoch + 1,
                        ips=0.0, loss=float("nan"), acc=0.0)

    def show(sums: dict[str, float], seconds: float) -> None:
        bar.update(task, advance=1, loss=sums["loss"] / sums["seen"], acc=sums["correct"] / sums["seen"],
                   ips=sums["seen"] * accelerator.num_processes / max(seconds, 1e-9))

    last_good = f"{run.last_good} (resume with --resume {run.out})" if run.last_good else None
    result = train_one_epoch(run.step_module, run.model, run.regs, run.train_loader, run.optimizer, accelerator,
                             epoch=epoch, global_step=run.global_step, resume_at=run.resume_at, sums=run.partial,
                             freeze_backbone=epoch < cfg.freeze_backbone_epochs, should_stop=lambda: stop.set,
                             on_step=show, last_good=last_good, clip_grad=cfg.clip_grad, clip_mode=cfg.clip_mode,
                             ema=run.ema, mixup=run.mixup, scheduler=run.scheduler)
    bar.remove_task(task)
    run.global_step, run.resume_at, run.partial = result.global_step, 0, None
    return result


def _save_models(run: PreparedRun, cfg: TrainConfig) -> None:
    """Write the raw weights and, with ``--model-ema``, the EMA's beside them (main process only)."""
    checkpoint.save_model(run.model, run.out / checkpoint.MODEL_FILE, cfg.to_dict())
    if run.ema is not None:
        checkpoint.save_model(run.ema.module, run.out / checkpoint.EMA_FILE, cfg.to_dict())


def _save_interrupted(run: PreparedRun, cfg: TrainConfig, accelerator, epoch: int, result: EpochResult) -> Path:
    """Save a state that resumes inside ``epoch`` after its last finished batch, and the model as it is."""
    # the partial sums are the main process's; after a resume they stand for all processes
    path = checkpoint.save_state(accelerator, run.out, {
        "epoch": epoch, "step_in_epoch": result.batches_done, "global_step": result.global_step,
        "partial": result.sums})
    if accelerator.is_main_process:
        _save_models(run, cfg)
    return path


def _finish_epoch(run: PreparedRun, cfg: TrainConfig, accelerator, epoch: int, sums: dict[str, float]) -> dict:
    """After a whole epoch: sum the metrics over processes, evaluate, check every process holds the same weights,
    step the scheduler, write the model, the metrics record and a resumable state; returns the record."""
    from accelerate.utils import gather_object

    train_seconds = sums["seconds"]
    totals = torch.tensor([sums["loss"], sums["correct"], sums["seen"], *(sums[f"reg/{n}"] for n in run.regs)],
                          dtype=torch.float64, device=accelerator.device)
    if accelerator.num_processes > 1:
        totals = accelerator.reduce(totals, "sum")
    _sync_buffers(run.model, accelerator)
    eval_started = time.perf_counter()
    test_acc = _evaluate(run.step_module, run.test_loader, accelerator)
    if run.ema is not None:
        _sync_buffers(run.ema.module, accelerator)
        test_acc_ema = _evaluate(TrainStep(run.ema.module, cfg.channels_last), run.test_loader, accelerator)
    seen = float(totals[2])
    record: dict[str, Any] = {
        "epoch": epoch + 1,
        "train_loss": float(totals[0]) / seen,
        "train_acc": float(totals[1]) / seen,
        "test_acc": test_acc,
        **({"test_acc_ema": test_acc_ema} if run.ema is not None else {}),
        "seconds": train_seconds + time.perf_counter() - eval_started,
        "images_per_second": seen / max(train_seconds, 1e-9),
        "lr": run.optimizer.param_groups[0]["lr"],
    }
    for i, (n, reg) in enumerate(run.regs.items()):
        record[f"reg/{n}"] = float(totals[3 + i]) / seen
        for key, value in reg.metrics().items():
            record[f"reg/{n}/{key}"] = float(value)
    hashes = gather_object([checkpoint.weights_sha256(run.model)])
    record["weights_sha256"] = hashes
    if len(set(hashes)) != 1:
        raise RuntimeError(f"processes hold different weights after epoch {epoch + 1} ({hashes}); "
                           "this is a bug in a plugin or the loop, please report it")
    if run.scheduler is not None:
        run.scheduler.step(epoch + 1)
    run.history.append(record)
    if accelerator.is_main_process:
        _save_models(run, cfg)
        checkpoint.append_jsonl(run.out / checkpoint.METRICS_FILE, [record])
        accelerator.log(epoch_values(record), step=epoch + 1)
    run.last_good = str(checkpoint.save_state(accelerator, run.out, {
        "epoch": epoch + 1, "step_in_epoch": 0, "global_step": run.global_step}))
    return record


def train(cfg: TrainConfig) -> TrainResult:
    """Train the model ``cfg`` describes and write the run folder ``cfg.output`` (see :mod:`robustproto.checkpoint`).

    Runs under Accelerate with ``cfg.mixed_precision``: on one CPU or GPU, or as one of the processes of
    ``torchrun``/``accelerate launch`` (gloo on CPU, NCCL on GPUs), each process calling it with the same config.
    With ``cfg.resume`` it continues the saved state of that run folder exactly where it stopped (the same
    weights, and EMA weights, as an uninterrupted run). ``cfg.grad_accum_steps`` is Accelerate's gradient
    accumulation and ``cfg.compile`` its ``dynamo_backend="inductor"`` (the prepared training step is compiled). Raises :class:`~robustproto.errors.UsageError` or
    :class:`~robustproto.errors.MissingFileError` before the first step for a config that cannot work (a
    ``log_with`` tracker that is not installed included),
    :class:`~robustproto.errors.NonFiniteLossError` naming the step and the last good checkpoint when the loss
    becomes NaN or infinite, and :class:`KeyboardInterrupt` after Ctrl-C (SIGINT) once the current step is done
    and a resumable state is saved.
    """
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    # Accelerate only forms a CPU process group (gloo) when told it runs on CPU, e.g. under torchrun
    multi_cpu = not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1
    trackers = resolve_trackers(cfg.log_with)
    accelerator = Accelerator(mixed_precision=cfg.mixed_precision, cpu=multi_cpu, log_with=trackers or None,
                              project_dir=str(Path(cfg.output) / TRACKER_DIR) if trackers else None,
                              gradient_accumulation_steps=cfg.grad_accum_steps,
                              dynamo_backend="inductor" if cfg.compile else None)
    try:
        return _train(cfg, accelerator)
    finally:
        # not accelerator.end_training(): it would also destroy the process group, which stays (see below)
        for tracker in accelerator.trackers:
            tracker.finish()
        # Accelerate keeps its settings in a process-wide singleton; forget them (the process group stays)
        # so a later run in the same interpreter may use another mixed precision
        AcceleratorState._reset_state()


def _train(cfg: TrainConfig, accelerator) -> TrainResult:
    from rich.console import Console

    console = Console(quiet=not accelerator.is_main_process, highlight=False, soft_wrap=True)
    run = prepare_run(cfg, accelerator)
    if accelerator.log_with and accelerator.is_main_process:  # trackers run on the main process only
        accelerator.init_trackers(PROJECT, config=tracker_config(cfg),
                                  init_kwargs=tracker_init_kwargs(cfg, [str(t) for t in accelerator.log_with]))
    console.print(f"training {run.model.spec['backbone']} + {cfg.head} head on {cfg.dataset} "
                  f"({len(run.train_data)} train / {len(run.test_data)} test, {accelerator.num_processes} "
                  f"process(es), {accelerator.device}, mixed precision {cfg.mixed_precision})")
    show_bar = accelerator.is_main_process and sys.stdout.isatty() and not os.environ.get("CI")
    stop = _StopFlag()
    test_acc = run.history[-1]["test_acc"] if run.history else float("nan")
    with stop.installed(), _progress(console, show_bar) as bar:
        for epoch in range(run.start_epoch, cfg.epochs):
            result = _epoch(run, cfg, accelerator, epoch, stop, bar)
            if result.stopped and result.batches_done < len(run.train_loader):
                path = _save_interrupted(run, cfg, accelerator, epoch, result)
                console.print(f"interrupted in epoch {epoch + 1} after batch {result.batches_done}; resumable "
                              f"state saved in {path}: continue with `robustproto train --resume {run.out}`")
                raise KeyboardInterrupt
            record = _finish_epoch(run, cfg, accelerator, epoch, result.sums)
            test_acc = record["test_acc"]
            console.print(f"epoch {epoch + 1}/{cfg.epochs}: loss {record['train_loss']:.4f}  "
                          f"train acc {record['train_acc']:.4f}  test acc {test_acc:.4f}  "
                          f"{record['images_per_second']:.0f} img/s  {record['seconds']:.1f} s")
            if result.stopped or _agree(stop.set, accelerator):
                console.print(f"interrupted after epoch {epoch + 1}; continue with "
                              f"`robustproto train --resume {run.out}`")
                raise KeyboardInterrupt
    console.print(f"test accuracy: {test_acc:.4f}")
    return TrainResult(output=run.out, test_acc=test_acc, metrics=run.history, model=run.model)
