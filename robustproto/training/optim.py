"""timm's optimizer and learning-rate scheduler for a run, refused before the first step when the config cannot work.

An optimizer is first run for a few steps on a throwaway weight with the run's lr and weight decay (the probe),
so a value it cannot work with (an lr whose update overflows float32, an optimizer the loop cannot drive) is a
:class:`~robustproto.errors.UsageError` naming the option to change, not an error from inside training.
"""

from __future__ import annotations

import torch
from torch import nn

from ..config import TrainConfig
from ..errors import UsageError
from ..utils import describe_error, model_device

__all__ = ["create_optimizer", "create_scheduler"]

_PROBE_STEPS = 5


def create_scheduler(cfg: TrainConfig, optimizer: torch.optim.Optimizer, updates_per_epoch: int):
    """timm's scheduler ``cfg.sched`` over ``optimizer``, stepped to epoch (and update) 0; ``None`` for ``"none"``.

    It spans the run's ``cfg.epochs`` whether or not the warm-up is a prefix (timm adds a prefix warm-up to its
    ``num_epochs``), and with ``cfg.sched_on_updates`` it is counted in optimizer updates, ``updates_per_epoch`` to
    an epoch (the loop calls ``step_update`` after each); otherwise in epochs. Either way it is a function of the
    count alone: a resumed run builds it again and steps it to where it resumes. A schedule timm cannot build or
    compute for these settings is a :class:`~robustproto.errors.UsageError` naming ``sched``.
    """
    if cfg.sched == "none":
        return None
    from timm.scheduler import create_scheduler_v2

    try:
        scheduler, _ = create_scheduler_v2(
            optimizer, sched=cfg.sched, num_epochs=cfg.epochs - (cfg.warmup_epochs if cfg.warmup_prefix else 0),
            decay_rate=cfg.decay_rate, min_lr=cfg.min_lr, warmup_epochs=cfg.warmup_epochs,
            warmup_lr=cfg.lr * 0.01 if cfg.warmup_lr is None else cfg.warmup_lr, warmup_prefix=cfg.warmup_prefix,
            step_on_epochs=not cfg.sched_on_updates, updates_per_epoch=updates_per_epoch)
        scheduler.step(0)
        scheduler.step_update(0)
    except (ArithmeticError, AssertionError, ValueError) as exc:
        raise UsageError(f"sched: timm's '{cfg.sched}' schedule fails for these epochs/warmup_epochs "
                         f"({describe_error(exc)}); pass smaller --epochs/--warmup-epochs or another --sched") from exc
    return scheduler


def _timm_optimizer(name: str, params: nn.Module | list[nn.Parameter], lr: float,
                    weight_decay: float) -> torch.optim.Optimizer:
    from timm.optim import create_optimizer_v2

    try:
        return create_optimizer_v2(params, opt=name, lr=lr, weight_decay=weight_decay)
    except (AssertionError, ValueError, KeyError) as exc:
        raise UsageError(f"optimizer: timm cannot create '{name}' ({exc}); use one of "
                         "timm.optim.list_optimizers(), e.g. adam, adamw, sgd") from exc


def _probe_failure(name: str, lr: float, weight_decay: float, device: torch.device) -> str | None:
    """How optimizer ``name`` fails in a few steps on a throwaway float32 weight of ones with a unit gradient
    on ``device`` (that of the training, as some optimizers run only on CUDA).

    ``None`` when it keeps the weight finite; else a phrase such as ``"fails in its step (RuntimeError: ...)"``.
    Only errors a value can cause are caught (``RuntimeError``, ``ValueError``, ``ArithmeticError``).
    """
    weight = nn.Parameter(torch.ones(2, 2, device=device))
    optimizer = _timm_optimizer(name, [weight], lr, weight_decay)
    try:
        for _ in range(_PROBE_STEPS):
            weight.grad = torch.ones_like(weight)
            optimizer.step()
    except (ArithmeticError, RuntimeError, ValueError) as exc:
        return f"fails in its step ({describe_error(exc)})"
    bad = weight.detach()[~torch.isfinite(weight.detach())]
    if len(bad):
        return f"turns a test weight of 1 with gradient 1 into {float(bad[0])} within {_PROBE_STEPS} steps"
    return None


def create_optimizer(cfg: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    """timm's optimizer ``cfg.optimizer`` over ``model``'s parameters (timm's parameter groups), with ``cfg.lr``
    and ``cfg.weight_decay``, once the probe shows it can take a step with them on ``model``'s device.

    When it cannot, a :class:`~robustproto.errors.UsageError` names the option to change: ``optimizer`` (it fails
    even at the default lr without weight decay), ``weight_decay`` (it works without it) or ``lr``.
    """
    device = model_device(model)
    failure = _probe_failure(cfg.optimizer, cfg.lr, cfg.weight_decay, device)
    if failure is not None:
        default_lr = TrainConfig.lr
        if _probe_failure(cfg.optimizer, default_lr, 0.0, device) is not None:
            key, fix = "optimizer", "choose another --optimizer, e.g. adam, adamw, sgd"
        elif cfg.weight_decay > 0 and _probe_failure(cfg.optimizer, cfg.lr, 0.0, device) is None:
            key, fix = "weight_decay", "pass a smaller --weight-decay"
        else:
            key, fix = "lr", f"pass a smaller --lr (default {default_lr:g})"
        raise UsageError(f"{key}: timm's {cfg.optimizer} with lr={cfg.lr:g} and weight_decay={cfg.weight_decay:g} "
                         f"{failure}; {fix}")
    return _timm_optimizer(cfg.optimizer, model, cfg.lr, cfg.weight_decay)
