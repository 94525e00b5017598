"""Small helpers every layer shares: a model's device, and eval mode that restores every module's own mode."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn

__all__ = ["eval_mode", "model_device"]


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put every module of ``model`` in eval mode for the block; afterwards give each module back the
    ``training`` flag it had (``model.train(old)`` would not: a frozen BatchNorm inside a training model,
    or a training submodule of an eval model, would come back in the wrong mode)."""
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        yield model
    finally:
        for module, training in modes.items():
            module.training = training


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (or buffer); the CPU for a module that has neither."""
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return torch.device("cpu")
