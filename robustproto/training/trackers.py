"""Experiment trackers (``log_with``) through Accelerate: which to start, and what they are given.

The loop hands Accelerate the names :func:`resolve_trackers` returns (``Accelerator(log_with=...,
project_dir=<output>/trackers)``), starts them with :func:`tracker_config` after setup (``init_trackers``), logs
:func:`epoch_values` of every finished epoch at ``step=epoch`` (so a resumed run continues at its epoch) and
finishes them when :func:`~robustproto.training.train` returns or raises. Accelerate runs them on the main process
only. TensorBoard and Aim write under :data:`TRACKER_DIR` in the run folder (TensorBoard in its
:data:`PROJECT` subfolder); W&B, MLflow and trackio go where their own settings send them (``WANDB_DIR``,
``MLFLOW_TRACKING_URI``, ...), as the project :data:`PROJECT` with the run folder's name as the run's name. A W&B
run's id is kept in the run folder (:data:`WANDB_ID_FILE`), so a resumed run continues the same W&B run.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..config import TRACKERS, TrainConfig
from ..errors import UsageError
from ..utils import atomic_write

__all__ = ["PROJECT", "TRACKER_DIR", "WANDB_ID_FILE", "epoch_values", "resolve_trackers", "tracker_config",
           "tracker_init_kwargs"]

PROJECT = "robustproto"
TRACKER_DIR = "trackers"
WANDB_ID_FILE = "wandb-run-id"  # in TRACKER_DIR: the id of the run's W&B run, read back by --resume


def resolve_trackers(names: tuple[str, ...]) -> list[str]:
    """The trackers to start for ``cfg.log_with`` ``names``: each named one, and for ``all`` every one of
    :data:`~robustproto.config.TRACKERS` Accelerate finds installed. A named tracker that is not installed (or
    ``all`` with none installed) is a UsageError naming ``log_with`` and the pip extra to install; Accelerate
    itself would only skip it with a debug message."""
    if not names:
        return []
    from accelerate.tracking import get_available_trackers

    installed = [str(t) for t in get_available_trackers()]
    for name in names:
        if name != "all" and name not in installed:
            raise UsageError(f"log_with: {name} is not installed; pip install 'robustproto[{name}]', or leave it out "
                             "of --log-with")
    found = [n for n in TRACKERS if n in installed] if "all" in names else []
    if "all" in names and not found:
        raise UsageError(f"log_with: 'all' found no tracker installed ({', '.join(TRACKERS)}); install one, e.g. "
                         "pip install 'robustproto[tensorboard]'")
    return list(dict.fromkeys([n for n in names if n != "all"] + found))


def _flat(prefix: str, value: Any, out: dict[str, bool | int | float | str]) -> None:
    if isinstance(value, Mapping):
        for key, sub in value.items():
            _flat(f"{prefix}/{key}", sub, out)
    elif isinstance(value, (bool, int, float, str)):
        out[prefix] = value
    else:  # lists and None as JSON text: TensorBoard's hparams take scalars only, and drop None
        out[prefix] = json.dumps(value)


def tracker_config(cfg: TrainConfig) -> dict[str, bool | int | float | str]:
    """The resolved config as the trackers' hyperparameters: a flat dict of scalars and strings. Tables are
    flattened to ``key/sub`` keys (``head_opt/prototypes_per_class``), lists and ``None`` written as JSON text
    (``reg`` as ``["lipschitz:weight=10"]``, ``embed_dim`` as ``null``)."""
    out: dict[str, bool | int | float | str] = {}
    for key, value in cfg.to_dict().items():
        _flat(key, value, out)
    return out


def tracker_init_kwargs(cfg: TrainConfig, trackers: list[str]) -> dict[str, dict[str, Any]]:
    """Accelerate's ``init_kwargs`` per tracker: the run's name (the run folder's) where the tracker takes one, and for
    W&B the run's id with ``resume="allow"``: a new id for a new run, written to ``<output>/trackers/wandb-run-id``,
    the saved one for ``cfg.resume`` (W&B then appends to the same run; a run saved before this file existed gets
    a new id). Call it on the main process only: it writes the file."""
    name = Path(cfg.output).resolve().name
    kwargs: dict[str, dict[str, Any]] = {"wandb": {"name": name}, "mlflow": {"run_name": name},
                                         "trackio": {"name": name}}
    if "wandb" in trackers:
        id_file = Path(cfg.output) / TRACKER_DIR / WANDB_ID_FILE
        run_id = id_file.read_text().strip() if cfg.resume and id_file.is_file() else ""
        if not run_id:
            run_id = secrets.token_hex(4)  # W&B ids: letters and digits, unique in the project
            atomic_write(id_file, lambda tmp: Path(tmp).write_text(run_id + "\n"))
        kwargs["wandb"].update(id=run_id, resume="allow")
    return kwargs


def epoch_values(record: Mapping[str, Any]) -> dict[str, float]:
    """The numbers of an epoch's ``metrics.jsonl`` record to log at ``step=record["epoch"]``: every metric but the
    epoch itself (the step) and the processes' weight hashes (text)."""
    return {k: float(v) for k, v in record.items()
            if k != "epoch" and isinstance(v, (int, float)) and not isinstance(v, bool)}
