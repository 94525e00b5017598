"""What a training run leaves in its output folder, written atomically, and :func:`load`.

``OUT/model.safetensors``  weights of the ProtoModel; metadata: ``config`` (resolved TrainConfig
                           JSON), ``spec`` (what :func:`robustproto.wrap` needs), ``plugins``
                           (which distribution provided the head and backbone), ``robustproto_version``
``OUT/model_ema.safetensors``  (``--model-ema``) the EMA of the weights, in the same format; load it with
                           ``load(OUT, ema=True)``
``OUT/config.json``        the resolved TrainConfig
``OUT/metrics.jsonl``      one JSON object per completed epoch
``OUT/state/``             Accelerate ``save_state`` (weights, optimizer, RNG, scaler) plus
                           ``progress.json``: what ``--resume OUT`` continues from

Every file is written to a temporary name and moved into place with ``os.replace``, so a crash
never leaves a half-written file; the state folder is swapped in the same spirit.

A checkpoint may store its tensors under other names than the ProtoModel's, as ``robustproto export`` does so that
timm loads the same file: its metadata ``state_dict_names`` (JSON ``{name in the file: name in the model}``) then
maps every tensor, and the normalisation buffers, which such a file does not hold, keep the values :func:`build_model`
gives them from the spec.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

import torch

from .errors import MissingFileError, PluginError, UsageError
from .utils import atomic_write, describe_error, package_version

if TYPE_CHECKING:
    from .model import ProtoModel

__all__ = ["append_jsonl", "build_model", "load", "load_run_config", "load_state", "read_jsonl", "read_metadata",
           "require_state", "save_model", "save_state", "state_dir", "weights_sha256", "write_json"]

MODEL_FILE = "model.safetensors"
EMA_FILE = "model_ema.safetensors"
CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
STATE_DIR = "state"
PROGRESS_FILE = "progress.json"


def write_json(path: str | Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON with sorted keys (and a final newline) to ``path``, atomically."""

    def write(tmp: str) -> None:
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=2, sort_keys=True)
            f.write("\n")

    atomic_write(path, write)


def read_jsonl(path: str | Path) -> list[dict]:
    """The JSON objects of ``path``, one per non-blank line; ``[]`` when the file does not exist."""
    path = Path(path)
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def append_jsonl(path: str | Path, records: Iterable[dict], keep: list[dict] | None = None) -> None:
    """Rewrite ``path`` atomically as ``keep`` (default: its current lines) followed by ``records``."""
    lines = [json.dumps(r, sort_keys=True) for r in (read_jsonl(path) if keep is None else keep)]
    lines += [json.dumps(r, sort_keys=True) for r in records]

    def write(tmp: str) -> None:
        Path(tmp).write_text("".join(line + "\n" for line in lines))

    atomic_write(path, write)


def weights_sha256(model: torch.nn.Module) -> str:
    """A hash of every parameter and buffer (names and bytes): equal hashes mean identical weights."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _plugin_sources(spec: dict[str, Any]) -> dict[str, dict[str, str | None]]:
    """Which distribution registered the head and the backbone, so :func:`load` can say what to install."""
    from .registry import head_registry

    out: dict[str, dict[str, str | None]] = {}
    heads = head_registry.describe()
    out["head"] = {"name": spec["head"], "source": heads.get(spec["head"], {}).get("source")}
    backbone_source = None
    try:
        import importlib.metadata as metadata

        import timm

        module = timm.models.model_entrypoint(spec["backbone"]).__module__
        for ep in metadata.entry_points(group="robustproto.backbones"):
            if ep.value == module and ep.dist is not None:
                backbone_source = f"{ep.dist.metadata['Name']} {ep.dist.version}"
    except Exception:  # provenance only improves error messages; never fail a save over it
        pass
    out["backbone"] = {"name": spec["backbone"], "source": backbone_source or "timm"}
    return out


def save_model(model: "ProtoModel", path: Path, config: dict[str, Any] | None = None) -> None:
    """Write the model's weights to ``path`` (safetensors) with the metadata :func:`load` rebuilds it from."""
    from safetensors.torch import save_model as _save

    metadata = {
        "format": "robustproto",
        "robustproto_version": package_version(),
        "spec": json.dumps(model.spec, sort_keys=True),
        "plugins": json.dumps(_plugin_sources(model.spec), sort_keys=True),
        "config": json.dumps(config or {}, sort_keys=True),
    }
    atomic_write(Path(path), lambda tmp: _save(model, tmp, metadata=metadata))


def _model_file(path: str | Path, ema: bool = False) -> Path:
    path = Path(path)
    file = path / (EMA_FILE if ema else MODEL_FILE) if path.is_dir() or path.suffix != ".safetensors" else path
    if ema and not file.is_file():
        raise MissingFileError(f"no EMA weights at {file}: the run was trained without --model-ema (load the raw "
                                "weights without ema=True)")
    if not file.is_file():
        raise MissingFileError(f"no model checkpoint at {file}: pass the output folder of `robustproto train` "
                                f"(it holds {MODEL_FILE})")
    return file


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The metadata of a robustproto checkpoint (``spec``, ``config``, ``plugins``, ``state_dict_names`` parsed from
    JSON, ``{}`` where absent)."""
    from safetensors import safe_open

    file = _model_file(path)
    try:
        with safe_open(str(file), framework="pt") as f:
            raw = f.metadata() or {}
    except Exception as exc:
        raise UsageError(f"cannot read checkpoint {file}: it is corrupt or not a safetensors file ({describe_error(exc)}); "
                         "train again or restore it from a backup") from exc
    if raw.get("format") != "robustproto" or "spec" not in raw:
        raise UsageError(f"{file} is a safetensors file but not a robustproto checkpoint (no model spec in its "
                         "metadata); load plain weights with safetensors.torch.load_file")
    meta: dict[str, Any] = dict(raw)
    for key in ("spec", "config", "plugins", "state_dict_names"):
        meta[key] = json.loads(raw.get(key) or "{}")
    return meta


def build_model(spec: dict[str, Any]) -> "ProtoModel":
    """A freshly initialised ProtoModel of ``spec`` (what :attr:`ProtoModel.spec` holds): the model a checkpoint's
    weights are loaded into."""
    from .model import wrap

    spec = dict(spec)
    return wrap(spec.pop("backbone"), head=spec.pop("head"), num_classes=spec.pop("num_classes"),
                embed_dim=spec.pop("embed_dim"), head_options=spec.pop("head_options"),
                mean=spec.pop("mean"), std=spec.pop("std"), **spec.pop("backbone_kwargs"))


def _load_renamed(model: torch.nn.Module, file: Path, names: dict[str, str]) -> None:
    """Load a file whose tensors carry other names (``names``: file → model); only ``normalize.*`` may be absent."""
    from safetensors.torch import load_file

    state = model.state_dict()
    tensors = load_file(str(file))
    unknown = sorted(set(tensors) - set(names)) + sorted(set(names.values()) - set(state))
    missing = sorted(k for k in set(state) - set(names.values()) if not k.startswith("normalize."))
    if unknown or missing:
        raise ValueError(f"tensors the model lacks {unknown[:3]}, model weights the file lacks {missing[:3]}")
    state.update({names[k]: v for k, v in tensors.items()})
    model.load_state_dict(state, strict=True)


def load(path: str | Path, device: str | torch.device = "cpu", *, ema: bool = False) -> "ProtoModel":
    """Rebuild a trained model from ``OUT`` (or ``OUT/model.safetensors``), in eval mode on ``device``; ``OUT`` may
    also be a folder written by ``robustproto export``. With ``ema=True`` a run folder gives its EMA weights
    (``OUT/model_ema.safetensors``, written by ``--model-ema``; that file's path loads them too).

    Plugins are looked up by name; a missing one raises :class:`robustproto.PluginError` that
    names the distribution that provided it when the model was saved.
    """
    from safetensors.torch import load_model

    file = _model_file(path, ema)
    meta = read_metadata(file)
    try:
        model = build_model(meta["spec"])
    except PluginError as exc:
        sources = meta["plugins"]
        hint = "; ".join(f"its {kind} '{info['name']}' came from {info['source']}"
                         for kind, info in sources.items() if info.get("source"))
        raise PluginError(f"cannot rebuild {file}: {exc}. {hint} (pip install that distribution)") from exc
    try:
        if meta["state_dict_names"]:
            _load_renamed(model, file, meta["state_dict_names"])
        else:
            load_model(model, str(file), strict=True)
    except Exception as exc:
        raise UsageError(f"cannot load the weights of {file}: {describe_error(exc)}; the file is corrupt or was written by "
                         "an incompatible version of a plugin") from exc
    return model.to(device).eval()


def load_run_config(run_dir: str | Path) -> dict[str, Any]:
    """The resolved config of a previous run (``OUT/config.json``), for ``--resume``."""
    file = Path(run_dir) / CONFIG_FILE
    if not file.is_file():
        raise MissingFileError(f"nothing to resume in {run_dir}: {CONFIG_FILE} is missing (pass the --output "
                                "folder of an earlier `robustproto train`)")
    try:
        return json.loads(file.read_text())
    except json.JSONDecodeError as exc:
        raise UsageError(f"{file} is not valid JSON ({exc}); the run folder is damaged") from exc


def state_dir(run_dir: str | Path) -> Path | None:
    """The latest complete Accelerate state of a run, or ``None``.

    ``state.old`` is the previous state, left only if a crash came between the two renames of a swap.
    """
    for name in (STATE_DIR, STATE_DIR + ".old"):
        candidate = Path(run_dir) / name
        if (candidate / PROGRESS_FILE).is_file():
            return candidate
    return None


def save_state(accelerator, run_dir: Path, progress: dict[str, Any]) -> Path:
    """Accelerate ``save_state`` into ``run_dir/state`` (via a temporary folder swapped in); every process calls it."""
    run_dir = Path(run_dir)
    final, tmp, old = run_dir / STATE_DIR, run_dir / (STATE_DIR + ".tmp"), run_dir / (STATE_DIR + ".old")
    if accelerator.is_main_process and tmp.exists():
        shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        write_json(tmp / PROGRESS_FILE, progress)
        if final.exists():
            if old.exists():
                shutil.rmtree(old)
            os.replace(final, old)
        os.replace(tmp, final)
        if old.exists():
            shutil.rmtree(old)
    accelerator.wait_for_everyone()
    return final


def require_state(run_dir: str | Path) -> Path:
    """:func:`state_dir`, or a clear error when the run has none."""
    found = state_dir(run_dir)
    if found is None:
        raise MissingFileError(f"nothing to resume in {run_dir}: no complete training state ({STATE_DIR}/) — the "
                                "run stopped before its first epoch ended; start it again without --resume")
    return found


def load_state(accelerator, run_dir: Path) -> dict[str, Any]:
    """Restore the latest state of ``run_dir`` into the prepared objects; returns its progress record."""
    found = require_state(run_dir)
    try:
        accelerator.load_state(str(found))
    except Exception as exc:
        raise UsageError(f"cannot restore the training state in {found}: {describe_error(exc)}; the state is corrupt or "
                         "from a different model/optimizer configuration") from exc
    return json.loads((found / PROGRESS_FILE).read_text())
