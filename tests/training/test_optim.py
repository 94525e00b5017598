"""The learning-rate schedules of :mod:`robustproto.training.optim` against their closed forms."""

from __future__ import annotations

import pytest
import torch

from robustproto.config import resolve_config
from robustproto.training import create_scheduler

UPDATES = 10  # optimizer updates per epoch


def _lr_after(cfg, updates: list[int]) -> list[float]:
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=cfg.lr)
    scheduler = create_scheduler(cfg, optimizer, UPDATES)
    rates = []
    for t in updates:
        scheduler.step_update(t)
        rates.append(optimizer.param_groups[0]["lr"])
    return rates


def test_wongs_cyclic_schedule_rises_and_falls_linearly_per_update():
    # Wong et al. 2020: from 0 up to 0.2 over the first 2/5 of the run, then down to 0, per iteration
    cfg = resolve_config({"epochs": 15, "lr": 0.2, "sched": "poly", "decay_rate": 1.0, "warmup_epochs": 6,
                          "warmup_prefix": True, "warmup_lr": 0.0, "sched_on_updates": True})
    steps = [0, 1, 30, 59, 60, 61, 105, 149, 150]
    peak, total = 6 * UPDATES, 15 * UPDATES
    expected = [0.2 * t / peak if t <= peak else 0.2 * (total - t) / (total - peak) for t in steps]
    assert _lr_after(cfg, steps) == pytest.approx(expected, abs=1e-12)


def test_a_schedule_counted_in_epochs_ignores_updates():
    cfg = resolve_config({"epochs": 4, "lr": 0.1, "sched": "cosine"})
    assert _lr_after(cfg, [0, 5, 39]) == [0.1, 0.1, 0.1]
