"""Small helpers every layer shares: a model's device, eval mode that restores every module's own mode, atomic file
writes, one-line descriptions of an underlying error, and the installed version of robustproto.

This module imports nothing from the package: every layer may use it.
"""

from __future__ import annotations

import importlib.metadata
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from torch import nn

__all__ = ["atomic_write", "describe_error", "eval_mode", "model_device", "package_version"]


def package_version() -> str:
    """The installed version of robustproto (``robustproto.__version__``), ``0.0.0+unknown`` when it runs from
    a source tree that is not installed. For modules below the package root, which must not import it."""
    try:
        return importlib.metadata.version("robustproto")
    except importlib.metadata.PackageNotFoundError:
        return "0.0.0+unknown"


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


def describe_error(exc: BaseException) -> str:
    """``"TypeName: first line of the message"``, for one-line errors that name what went wrong underneath."""
    return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | Path, write: Callable[[str], Any]) -> None:
    """Write ``path`` all at once or not at all: ``write(tmp)`` writes a temporary file beside it (a ``str``
    path), which is then given the mode ``open()`` would give (umask) and moved onto ``path`` with
    ``os.replace``. When ``write`` raises, ``path`` keeps its old content, the temporary file is removed and
    the error propagates. Missing parent folders are created."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes the file private; give it the mode open() would
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
