"""One training step and one epoch of them: the part of the loop a training-time plugin runs inside.

:class:`TrainStep` is the module Accelerate prepares (and DDP wraps), :func:`compute_losses` the forward pass
of a step with every loss term, :func:`train_one_epoch` the inner loop (forward, NaN check, backward, optimiser
step, head hook) over one epoch.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterable, NamedTuple

import torch
from torch import nn

from ..errors import NonFiniteLossError, UsageError
from ..regularizer import BatchContext, Regularizer, StepContext

if TYPE_CHECKING:
    from timm.data import Mixup
    from timm.scheduler.scheduler import Scheduler
    from timm.utils import ModelEmaV3

    from ..model import ProtoModel

__all__ = ["EpochResult", "Losses", "TrainStep", "check_replaces_inputs", "clean_weight", "compute_losses",
           "epoch_sums", "mix_batch", "prepare_batch", "train_one_epoch"]


class TrainStep(nn.Module):
    """The module Accelerate prepares and DDP wraps: one backbone call per step.

    ``forward(x, extra)`` embeds ``x`` and every tensor of ``extra`` (the regularizers' extra inputs) in a
    single call of ``model.embed`` on their concatenation, so DDP sees one forward per step, and returns
    ``(z, scores, extra_z)``: the embeddings of ``x`` ``(B, embed_dim)``, the head's scores of them
    ``(B, num_classes)``, and the embeddings of each ``extra`` tensor, split back in the same order. Its
    only parameters and buffers are those of ``model``. With ``channels_last`` the images are passed on in
    channels-last memory format (the model's weights should be in it too: ``--channels-last``).
    """

    def __init__(self, model: "ProtoModel", channels_last: bool = False):
        super().__init__()
        self.model = model
        self.channels_last = channels_last

    def forward(self, x: torch.Tensor, extra: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor,
                                                                             list[torch.Tensor]]:
        """``(z, scores, extra_z)``: embeddings and head scores of ``x`` and the embeddings of each ``extra`` batch, from one backbone call."""
        if extra:
            x_all = torch.cat([x, *extra])
            z_all = self.model.embed(self._memory_format(x_all))
            z, *extra_z = z_all.split([len(x), *(len(e) for e in extra)])
        else:
            z, extra_z = self.model.embed(self._memory_format(x)), []
        return z, self.model.head(z), extra_z

    def _memory_format(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last and x.ndim == 4 else x


class Losses(NamedTuple):
    """What :func:`compute_losses` returns: the head's loss (unweighted), each regularizer's penalty (by name),
    the scores, and the weight of the head's loss in the objective (the product of the regularizers'
    ``clean_weight``)."""

    loss: torch.Tensor
    penalties: dict[str, torch.Tensor]
    scores: torch.Tensor
    clean_weight: float = 1.0

    @property
    def total(self) -> torch.Tensor:
        """The loss the step minimises: ``clean_weight`` times the head's loss (left out exactly when 0) plus every
        penalty."""
        terms = list(self.penalties.values())
        if self.clean_weight != 0:
            terms.insert(0, self.loss if self.clean_weight == 1 else self.clean_weight * self.loss)
        if not terms:
            return self.loss * 0.0  # nothing to minimise, but backward still works
        return sum(terms[1:], terms[0])


def clean_weight(regs: dict[str, Regularizer]) -> float:
    """The weight of the head's loss: the product of every regularizer's ``clean_weight``."""
    return math.prod(float(r.clean_weight) for r in regs.values())


def check_replaces_inputs(regs: dict[str, Regularizer]) -> None:
    """A :class:`~robustproto.errors.UsageError` when more than one regularizer declares ``replaces_inputs``."""
    replacing = [n for n, r in regs.items() if r.replaces_inputs]
    if len(replacing) > 1:
        raise UsageError(f"reg: at most one regularizer may replace the training batch (replaces_inputs), got "
                         f"{', '.join(replacing)}; use one of them, or one with clean_weight > 0 "
                         "(adversarial examples as extra inputs)")


def prepare_batch(model: "ProtoModel", regs: dict[str, Regularizer], x: torch.Tensor, y: torch.Tensor, step: int,
                  epoch: float) -> torch.Tensor:
    """Call every regularizer's ``prepare_batch`` in order; the batch the step trains on (``x``, or the images the
    regularizer with ``replaces_inputs`` returned, detached)."""
    batch = BatchContext(x=x, y=y, model=model, step=step, epoch=float(epoch))
    replaced = None
    for name, reg in regs.items():
        images = reg.prepare_batch(batch)
        if images is None:
            continue
        if not reg.replaces_inputs or replaced is not None:
            raise RuntimeError(f"regularizer '{name}' returned images from prepare_batch but does not declare "
                               "replaces_inputs = True (or another one replaced the batch already)")
        if images.shape != x.shape:
            raise RuntimeError(f"regularizer '{name}': prepare_batch returned shape {tuple(images.shape)}, the batch "
                               f"has {tuple(x.shape)}")
        replaced = images.detach().to(x.dtype)
    return x if replaced is None else replaced


def mix_batch(mixup: "Mixup", x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(images, soft targets (B, num_classes))`` of a batch mixed by timm's ``Mixup`` (which may change ``x`` in
    place).

    timm mixes only even batches (each image with its mirror in the batch), so of an odd batch, e.g. the last
    of an epoch, the last image stays as it is with its one-hot label. That, rather than dropping the odd
    batch's last image or the whole last batch, keeps every sample in every epoch and the loader's length (which
    resumes and schedules count on) the same with and without mixup.
    """
    even = len(y) - len(y) % 2
    if even == len(y):
        return mixup(x, y)
    from timm.data.mixup import one_hot

    mixed, target = mixup(x[:even], y[:even])
    return torch.cat([mixed, x[even:]]), torch.cat([target, one_hot(y[even:], mixup.num_classes).to(target)])


def compute_losses(step_module: nn.Module, model: "ProtoModel", regs: dict[str, Regularizer], x: torch.Tensor,
                   y: torch.Tensor, step: int, accelerator, epoch: float = 0.0) -> Losses:
    """The forward pass of one training step, under ``accelerator.autocast()``.

    First every regularizer's ``prepare_batch`` (see :func:`prepare_batch`); when one replaces the batch, the rest
    of the step (head loss, scores, ``extra_inputs``, ``ctx.x``) is on the replacement, which requires grad when a
    regularizer ``needs_input_grad``.

    Args:
        step_module: a :class:`TrainStep` of ``model``, as prepared by Accelerate (possibly DDP-wrapped).
        model: the unwrapped :class:`~robustproto.ProtoModel`; regularizers see it as ``ctx.model``.
        regs: the regularizers by name; each one's ``extra_inputs(x)`` is embedded in the same backbone call.
        x, y: the batch (``x`` must already require grad if a regularizer set ``needs_input_grad``); ``y`` the
            labels ``(B,)``, or soft targets ``(B, num_classes)`` for a head that ``supports_soft_targets``.
        step: the global optimiser step, passed on as ``ctx.step``.
        epoch: epochs done, fractional within an epoch, passed on to ``prepare_batch``.

    Returns :class:`Losses`: ``loss`` (the head's ``loss(z, scores, y)``, unweighted; ``clean_weight`` is the
    product of the regularizers' ``clean_weight``), ``penalties`` (each regularizer's
    ``penalty`` on a :class:`~robustproto.StepContext`, keyed and ordered like ``regs``) and ``scores``; all on
    the one graph of this forward pass, so ``Losses.total`` can be backpropagated once.
    """
    with accelerator.autocast():
        prepared = prepare_batch(model, regs, x, y, step, epoch)
    if prepared is not x:
        x = prepared.requires_grad_(True) if any(r.needs_input_grad for r in regs.values()) else prepared
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
    return Losses(loss, penalties, scores, clean_weight(regs))


def epoch_sums(regs: Iterable[str]) -> dict[str, float]:
    """The empty running sums of an epoch: ``loss``, ``correct``, ``seen``, ``seconds`` and ``reg/<name>``."""
    return {"loss": 0.0, "correct": 0.0, "seen": 0.0, "seconds": 0.0, **{f"reg/{n}": 0.0 for n in regs}}


@dataclass
class EpochResult:
    """What :func:`train_one_epoch` did.

    Attributes:
        sums: this process's running sums (see :func:`epoch_sums`): loss and ``reg/<name>`` summed over
            samples (multiply a batch mean by the batch size), correct predictions, samples seen, training
            seconds; they include the sums passed in when the epoch was resumed.
        batches_done: batches of this epoch done, including those skipped on a resume.
        global_step: the global optimiser step after the last step taken (optimizer steps, not batches).
        stopped: the stop request was seen (on any process) and the epoch ended early after a whole step;
            ``batches_done`` may still equal the epoch's length if it came during the last step.
    """

    sums: dict[str, float]
    batches_done: int
    global_step: int
    stopped: bool


def train_one_epoch(step_module: nn.Module, model: "ProtoModel", regs: dict[str, Regularizer], loader: Iterable,
                    optimizer: torch.optim.Optimizer, accelerator, *, epoch: int, global_step: int = 0,
                    resume_at: int = 0, sums: dict[str, float] | None = None, freeze_backbone: bool = False,
                    should_stop: Callable[[], bool] | None = None,
                    on_step: Callable[[dict[str, float], float], None] | None = None,
                    last_good: str | None = None, clip_grad: float | None = None, clip_mode: str = "norm",
                    ema: "ModelEmaV3 | None" = None, mixup: "Mixup | None" = None,
                    scheduler: "Scheduler | None" = None) -> EpochResult:
    """Train ``model`` over one epoch of ``loader``, step by step, as ``robustproto train`` does.

    Every process of a run calls it with its own shard of the data. Per batch: the batch mixed (``mixup``, see
    :func:`mix_batch`); ``x`` requires grad when a regularizer ``needs_input_grad``; :func:`compute_losses`; a check, agreed by all processes, that the head's
    loss and every penalty are finite; ``accelerator.backward`` of the total, inside
    ``accelerator.accumulate`` (with the accelerator's ``gradient_accumulation_steps`` N > 1 the gradients of N
    batches add up, each loss divided by N, and only every N-th batch, and the last of a loader Accelerate
    prepared, is an optimizer step). On an optimizer step: clipping (``clip_grad``), ``optimizer.step()``, ``head.after_step()`` under
    ``torch.no_grad`` when the head ``supports_after_step``, the EMA's update, the scheduler's ``step_update``,
    then the gradients are cleared.

    Args:
        step_module, model, regs: as for :func:`compute_losses`; ``step_module`` is put in training mode.
        loader: the prepared training DataLoader; its ``set_epoch(epoch)`` is called when it has one (any
            iterable of ``(x, y)`` batches works when ``resume_at`` is 0).
        optimizer, accelerator: the prepared optimizer and the run's ``Accelerator``.
        epoch: the 0-based epoch (for the shuffle order and messages).
        global_step: optimiser steps taken before this call.
        resume_at: batches of this epoch already done (skipped with ``accelerator.skip_first_batches``).
        sums: the running sums of those batches (from an interrupted epoch), else fresh ones.
        freeze_backbone: keep the backbone as it is: eval mode (BatchNorm statistics too) and no update.
        should_stop: read between batches; once true on any process, every process stops after the same
            optimizer step (so a stop never falls inside an accumulation of gradients).
        on_step: called after each batch with the running sums and this epoch's training seconds so far.
        last_good: the last good checkpoint as a non-finite-loss message should name it.
        clip_grad, clip_mode: clip the gradients of the optimizer's parameters before each optimizer step, their
            total L2 norm to ``clip_grad`` (``"norm"``) or each element to ``±clip_grad`` (``"value"``); ``None``:
            no clipping.
        ema: timm's ``ModelEmaV3`` of ``model``, updated after each optimizer step (after the head's hook) with
            its fixed decay, or timm's warm-up decay of the global step when its ``use_warmup`` is set.
        mixup: timm's ``Mixup``: the head's loss is on the mixed images and their soft targets; the running
            ``correct`` count compares the predictions on the mixed images with the batch's own labels.
        scheduler: timm's scheduler; ``step_update(global_step)`` after each optimizer step moves a schedule
            counted in updates (``sched_on_updates``) and leaves one counted in epochs as it is.

    Raises :class:`~robustproto.errors.NonFiniteLossError` (before any weight is changed by that step) naming
    the step, the non-finite terms and ``last_good``.
    """
    step_module.train()
    frozen = list(model.backbone.parameters()) if freeze_backbone else []
    if freeze_backbone:
        model.backbone.eval()  # frozen means its BatchNorm statistics too
    after_step = model.head.supports_after_step
    needs_input_grad = any(reg.needs_input_grad for reg in regs.values())
    sums = dict(sums or epoch_sums(regs))
    batches = accelerator.skip_first_batches(loader, resume_at) if resume_at else loader
    if hasattr(batches, "set_epoch"):
        batches.set_epoch(epoch)  # Accelerate's loaders pass their own epoch count on to our sampler
    batches_done, stopped, stop_asked = resume_at, False, False
    started, seconds_before = time.perf_counter(), sums["seconds"]
    check_replaces_inputs(regs)
    try:
        per_epoch = len(loader)
    except TypeError:  # an iterable without a length: whole epochs only
        per_epoch = 0
    for x, y in batches:
        target = y  # what the loss compares with; y stays the integer labels the running accuracy counts
        if mixup is not None:
            x, target = mix_batch(mixup, x, y)
        if needs_input_grad:
            x.requires_grad_(True)
        done = epoch + (batches_done / per_epoch if per_epoch else 0.0)
        losses = compute_losses(step_module, model, regs, x, target, global_step, accelerator, epoch=done)
        terms = torch.stack([losses.loss.detach().float(), *(p.detach().float() for p in losses.penalties.values())])
        flags = torch.tensor([float(not torch.isfinite(terms).all()), float(bool(should_stop and should_stop()))],
                             device=accelerator.device)
        if accelerator.num_processes > 1:
            flags = accelerator.reduce(flags, "sum")
        if flags[0] > 0:
            bad = [f"{name} = {value}" for name, value in
                   zip(["head loss", *(f"reg/{n}" for n in regs)], terms.tolist()) if not math.isfinite(value)]
            raise NonFiniteLossError(
                f"non-finite loss at step {global_step + 1} (epoch {epoch + 1}, batch {batches_done + 1}): "
                f"{', '.join(bad) or 'on another process'}; stopped before updating the weights. "
                f"Last good checkpoint: {last_good or 'none (no epoch finished yet)'}. "
                "Lower --lr, use --mixed-precision no/bf16, or check the data")
        with accelerator.accumulate(step_module):
            accelerator.backward(losses.total)
            # a prepared optimizer steps and clears gradients only when sync_gradients says the accumulation is done
            stepping = accelerator.sync_gradients
            for p in frozen:
                p.grad = None  # optimisers skip parameters without a gradient
            if stepping and clip_grad is not None:
                _clip(accelerator, optimizer, clip_grad, clip_mode)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        if stepping:
            if after_step:
                with torch.no_grad():
                    model.head.after_step()
            global_step += 1
            if ema is not None:
                # without warm-up a constant decay from the first step: decay 1 keeps the initial weights exactly
                ema.update(model, step=global_step if ema.use_warmup else None)
            if scheduler is not None:
                scheduler.step_update(num_updates=global_step)  # a no-op for a schedule counted in epochs
        batches_done += 1
        sums["loss"] += float(terms[0]) * len(y)
        sums["correct"] += float((losses.scores.detach().argmax(1) == y).sum())
        sums["seen"] += len(y)
        for n in regs:
            sums[f"reg/{n}"] += float(losses.penalties[n].detach()) * len(y)
        if on_step is not None:
            on_step(sums, seconds_before + time.perf_counter() - started)
        stop_asked = stop_asked or bool(flags[1] > 0)
        if stop_asked and stepping:  # every process saw the same flags, so they all stop after this step
            stopped = True
            break
    sums["seconds"] = seconds_before + time.perf_counter() - started
    return EpochResult(sums=sums, batches_done=batches_done, global_step=global_step, stopped=stopped)


def _clip(accelerator, optimizer: torch.optim.Optimizer, clip_grad: float, mode: str) -> None:
    """Clip the gradients of every parameter ``optimizer`` updates (Accelerate unscales fp16 gradients first)."""
    params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
    if mode == "value":
        accelerator.clip_grad_value_(params, clip_grad)
    else:
        accelerator.clip_grad_norm_(params, clip_grad)
