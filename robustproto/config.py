"""The resolved training configuration: one frozen dataclass, built recipe → CLI overrides.

Every ``robustproto train`` option has the same key in a recipe TOML (``--batch-size`` is
``batch_size``; ``-`` and ``_`` are interchangeable in recipe keys). A recipe may also carry an
``[eval]`` table, kept verbatim for ``robustproto eval``. Unknown keys and bad values are
rejected with a :class:`ValueError` that names the key.
"""

from __future__ import annotations

import ast
import dataclasses
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

__all__ = ["DEFAULT_THRESHOLDS", "EvalSettings", "NORMS", "TrainConfig", "load_recipe", "normalize_norm", "parse_eps",
           "parse_options", "parse_reg", "resolve_config"]

DATASETS = ("mnist-small", "mnist", "fashion-mnist", "cifar10", "cifar100", "imagefolder")
AUGMENTATIONS = ("auto", "none", "crop-flip", "shift-rotate")
MIXED_PRECISION = ("no", "fp16", "bf16")
# timm schedulers that are a function of the epoch alone (resume rebuilds them and steps to the epoch)
SCHEDULERS = ("cosine", "tanh", "step", "multistep", "poly", "constant", "none")


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run depends on. Field names are the recipe keys and CLI options."""

    backbone: str = "resnet18"
    backbone_opt: Mapping[str, Any] = field(default_factory=dict)
    head: str = "linear"
    head_opt: Mapping[str, Any] = field(default_factory=dict)
    reg: tuple[tuple[str, Mapping[str, Any]], ...] = ()
    embed_dim: int | None = None
    pretrained_weights: str | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    dataset: str = "mnist-small"
    data_dir: str | None = None
    download: bool = False
    img_size: int | None = None
    max_train_samples: int | None = None
    max_test_samples: int | None = None
    augment: str = "auto"
    workers: int = 0

    epochs: int = 5
    batch_size: int = 64
    optimizer: str = "adam"
    lr: float = 1e-3
    weight_decay: float = 0.0
    sched: str = "cosine"
    warmup_epochs: int = 0
    freeze_backbone_epochs: int = 0
    init_samples: int = 2048
    mixed_precision: str = "no"
    seed: int = 0

    output: str = "runs/latest"
    resume: str | None = None
    eval: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            object.__setattr__(self, f.name, _coerce(f.name, getattr(self, f.name)))
        _check_values(self)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (``reg`` as ``["name:k=v,..."]`` strings, as a recipe writes it)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["reg"] = [format_reg(name, opts) for name, opts in self.reg]
        for key in ("backbone_opt", "head_opt", "eval"):
            out[key] = dict(out[key])
        for key in ("mean", "std"):
            out[key] = list(out[key]) if out[key] is not None else None
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    def replace(self, **changes: Any) -> "TrainConfig":
        return resolve_config(self.to_dict(), changes)


_FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}
_INTS = {"embed_dim", "img_size", "max_train_samples", "max_test_samples", "workers", "epochs", "batch_size",
         "warmup_epochs", "freeze_backbone_epochs", "init_samples", "seed"}
_FLOATS = {"lr", "weight_decay"}
_STRS = {"augment", "backbone", "head", "dataset", "optimizer", "sched", "mixed_precision", "output", "data_dir",
         "pretrained_weights", "resume"}
_OPTIONAL = {"embed_dim", "img_size", "max_train_samples", "max_test_samples", "data_dir", "pretrained_weights",
             "resume", "mean", "std"}


def _literal(text: str) -> Any:
    """A Python literal if ``text`` is one (``3``, ``0.1``, ``True``, ``[1, 2]``), else the string itself."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def parse_options(items: str | list[str] | Mapping[str, Any], key: str) -> dict[str, Any]:
    """``["k=v", ...]`` or ``"k=v,k2=v2"`` or a mapping → ``{k: literal(v)}``."""
    if isinstance(items, Mapping):
        return {str(k).replace("-", "_"): v for k, v in items.items()}
    if isinstance(items, str):
        items = [items] if items else []
    out: dict[str, Any] = {}
    for item in items:
        for part in _split_top_level(str(item)):
            name, sep, value = part.partition("=")
            name = name.strip().replace("-", "_")
            if not sep or not name.isidentifier():
                raise ValueError(f"{key}: expected key=value, got '{part}'")
            out[name] = _literal(value.strip())
    return out


def _split_top_level(text: str) -> list[str]:
    """Split on commas that are not inside brackets or quotes (``a=[1,2],b=3`` → two parts)."""
    parts, depth, quote, start = [], 0, None, 0
    for i, ch in enumerate(text):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return [p.strip() for p in parts if p.strip()]


def parse_reg(spec: str) -> tuple[str, dict[str, Any]] | None:
    """``"NAME[:k=v,...]"`` → ``(name, options)``; ``"none"`` → ``None``."""
    name, _, rest = str(spec).partition(":")
    name = name.strip()
    if not name:
        raise ValueError(f"reg: expected NAME[:key=value,...], got '{spec}'")
    if name.lower() == "none":
        if rest.strip():
            raise ValueError(f"reg: 'none' takes no options, got '{spec}'")
        return None
    return name, parse_options(rest, f"reg '{name}'")


def format_reg(name: str, options: Mapping[str, Any]) -> str:
    if not options:
        return name
    return name + ":" + ",".join(f"{k}={v!r}" for k, v in options.items())


def _coerce(key: str, value: Any) -> Any:
    """Normalise one field's value (recipes and CLIs give strings, lists, tables) or fail naming the key."""
    if value is None:
        if key in _OPTIONAL:
            return None
        raise ValueError(f"{key}: a value is required")
    if key in ("backbone_opt", "head_opt", "eval"):
        if key == "eval":
            if not isinstance(value, Mapping):
                raise ValueError(f"eval: expected a table, got {value!r}")
            return dict(value)
        return parse_options(value, key)
    if key == "reg":
        out = []
        for spec in [value] if isinstance(value, str) else value:
            if isinstance(spec, (tuple, list)) and len(spec) == 2 and isinstance(spec[1], Mapping):
                out.append((str(spec[0]), dict(spec[1])))
            elif (parsed := parse_reg(spec)) is not None:
                out.append(parsed)
        return tuple(out)
    if key in ("mean", "std"):
        items = value.split(",") if isinstance(value, str) else list(value)
        try:
            return tuple(float(v) for v in items)
        except (TypeError, ValueError):
            raise ValueError(f"{key}: expected comma-separated numbers, got {value!r}") from None
    if key == "download":
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        if not isinstance(value, bool):
            raise ValueError(f"download: expected true or false, got {value!r}")
        return value
    if key in _INTS:
        if isinstance(value, bool) or not (isinstance(value, int) or (isinstance(value, str) and
                                                                      value.strip().lstrip("-").isdigit())):
            raise ValueError(f"{key}: expected an integer, got {value!r}")
        return int(value)
    if key in _FLOATS:
        try:
            if isinstance(value, bool):
                raise TypeError
            return float(value)
        except (TypeError, ValueError):
            raise ValueError(f"{key}: expected a number, got {value!r}") from None
    if key in _STRS:
        if not isinstance(value, (str, Path)):
            raise ValueError(f"{key}: expected a string, got {value!r}")
        return str(value)
    raise ValueError(f"unknown key '{key}'")  # pragma: no cover - every field is handled above


def _check_values(cfg: TrainConfig) -> None:
    def choice(key: str, allowed: tuple[str, ...]) -> None:
        if getattr(cfg, key) not in allowed:
            raise ValueError(f"{key}: '{getattr(cfg, key)}' is not one of {', '.join(allowed)}")

    choice("dataset", DATASETS)
    choice("augment", AUGMENTATIONS)
    choice("mixed_precision", MIXED_PRECISION)
    choice("sched", SCHEDULERS)
    positive = ("epochs", "batch_size", "embed_dim", "img_size", "max_train_samples", "max_test_samples",
                "init_samples")
    for key in positive:
        value = getattr(cfg, key)
        if value is not None and value <= 0:
            raise ValueError(f"{key}: must be positive, got {value}")
    for key in ("workers", "warmup_epochs", "freeze_backbone_epochs", "seed"):
        if getattr(cfg, key) < 0:
            raise ValueError(f"{key}: must not be negative, got {getattr(cfg, key)}")
    if cfg.warmup_epochs and cfg.sched == "none":
        raise ValueError(f"warmup_epochs: sched 'none' has no warm-up, got warmup_epochs={cfg.warmup_epochs}; "
                         "pass --sched (e.g. constant) or --warmup-epochs 0")
    if cfg.warmup_epochs and cfg.warmup_epochs >= cfg.epochs:
        raise ValueError(f"warmup_epochs: {cfg.warmup_epochs} is not fewer than epochs ({cfg.epochs}), so the run "
                         "ends before the learning rate reaches lr; pass --warmup-epochs below --epochs")
    if not (math.isfinite(cfg.lr) and cfg.lr > 0):
        raise ValueError(f"lr: must be a positive finite number, got {cfg.lr}")
    if not (math.isfinite(cfg.weight_decay) and cfg.weight_decay >= 0):
        raise ValueError(f"weight_decay: must be a finite number ≥ 0, got {cfg.weight_decay}")
    if (cfg.mean is None) != (cfg.std is None):
        raise ValueError("mean/std: give both or neither")
    if cfg.mean is not None and len(cfg.mean) != len(cfg.std):
        raise ValueError(f"std: has {len(cfg.std)} channels but mean has {len(cfg.mean)}")
    if cfg.mean is not None and not all(map(math.isfinite, cfg.mean)):
        raise ValueError(f"mean: must be finite numbers, got {list(cfg.mean)}")
    if cfg.std is not None and not all(math.isfinite(s) and s > 0 for s in cfg.std):
        raise ValueError(f"std: must be positive finite numbers, got {list(cfg.std)}")


def load_recipe(path: str | Path) -> dict[str, Any]:
    """Read a recipe TOML into a dict of config keys (``-`` in keys read as ``_``).

    A missing file is a FileNotFoundError, an unreadable one a ValueError; both name ``config``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config: recipe not found: {path}; pass --config the path of a recipe TOML file")
    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"config: recipe {path} is not valid TOML ({exc}); fix the file") from None
    except UnicodeDecodeError as exc:
        raise ValueError(f"config: recipe {path} is not UTF-8 text ({exc.reason}); pass a TOML file") from None
    return {str(k).replace("-", "_"): v for k, v in data.items()}


def resolve_config(*layers: Mapping[str, Any] | None) -> TrainConfig:
    """Merge layers (e.g. saved run config → recipe → CLI overrides; later wins, ``None`` values skipped)."""
    merged: dict[str, Any] = {}
    for layer in layers:
        for key, value in (layer or {}).items():
            key = str(key).replace("-", "_")
            if key not in _FIELDS:
                raise ValueError(f"unknown key '{key}' (known: {', '.join(sorted(_FIELDS))})")
            if value is None:
                continue
            merged[key] = value
    return TrainConfig(**merged)


# ------------------------------------------------------------------ evaluation settings
NORMS = ("Linf", "L2")
DEFAULT_THRESHOLDS = {"L2": 1.5, "Linf": 0.3}


def normalize_norm(norm: str) -> str:
    """``"linf"``, ``"inf"``, ``"Linf"`` → ``"Linf"``; ``"l2"``, ``"2"`` → ``"L2"``; anything else is a ValueError."""
    key = str(norm).strip().lower()
    if key in ("linf", "inf", "l_inf"):
        return "Linf"
    if key in ("l2", "2", "l_2"):
        return "L2"
    raise ValueError(f"norm: '{norm}' is not one of Linf, L2")


@dataclass(frozen=True)
class EvalSettings:
    """What ``robustproto eval`` runs, resolved recipe ``[eval]`` table → CLI flags (later wins).

    A recipe's ``[eval]`` table has the CLI's keys (``attack``, ``eps``, ``norm``, ``n_samples``,
    ``batch_size``, ``attack_opt``, ``bisection_steps``, ``threshold``) and may instead hold one sub-table per
    norm (``L2 = {attack = [...], eps = [...], threshold = 1.5}``) to evaluate several norms in one report.
    A ``certify`` sub-table (``norm``, ``n_samples``, ``radii``) is for ``robustproto certify``.
    """

    attacks: Mapping[str, tuple[str, ...]]
    eps: Mapping[str, tuple[float, ...]]
    thresholds: Mapping[str, float]
    attack_options: Mapping[str, Mapping[str, Any]]
    n_samples: int | None = None
    batch_size: int = 128
    bisection_steps: int = 0

    @classmethod
    def resolve(cls, table: Mapping[str, Any] | None, **cli: Any) -> "EvalSettings":
        table = {str(k).replace("-", "_"): v for k, v in (table or {}).items()}
        known = {"attack", "eps", "norm", "n_samples", "batch_size", "attack_opt", "bisection_steps", "threshold",
                 "certify", *NORMS}
        unknown = sorted(set(table) - known)
        if unknown:
            raise ValueError(f"[eval]: unknown key(s) {', '.join(unknown)} (known: {', '.join(sorted(known))})")
        per_norm = {n: dict(table[n]) for n in NORMS if n in table}
        for n, sub in per_norm.items():
            bad = sorted(set(sub) - {"attack", "eps", "threshold"})
            if bad:
                raise ValueError(f"[eval.{n}]: unknown key(s) {', '.join(bad)} (known: attack, eps, threshold)")

        def pick(key, default=None):
            return cli[key] if cli.get(key) is not None else table.get(key, default)

        norm = normalize_norm(pick("norm", "Linf"))
        as_list = lambda v: [v] if isinstance(v, (str, int, float)) else list(v or [])  # noqa: E731
        if cli.get("attack") or (not per_norm) or (cli.get("norm") and norm not in per_norm):
            attacks = {norm: tuple(as_list(pick("attack")))}
            eps = {norm: as_list(pick("eps", per_norm.get(norm, {}).get("eps")))}
        else:
            attacks = {n: tuple(as_list(sub.get("attack"))) for n, sub in per_norm.items()
                       if cli.get("norm") is None or n == norm}
            eps = {n: as_list(cli["eps"] if cli.get("eps") is not None else per_norm[n].get("eps"))
                   for n in attacks}
        if not any(attacks.values()):
            raise ValueError("no attack to run: pass --attack NAME (repeatable) or put attack = [...] in [eval]")
        try:
            eps = {n: tuple(float(e) for e in v) for n, v in eps.items()}
        except (TypeError, ValueError):
            raise ValueError(f"eps: expected numbers, got {eps}") from None
        thresholds = {n: _number(sub["threshold"], f"[eval.{n}] threshold") for n, sub in per_norm.items()
                      if "threshold" in sub}
        given = pick("threshold")
        if given is not None:
            thresholds.update({normalize_norm(k): _number(v, "threshold") for k, v in
                               parse_options(given, "threshold").items()}
                              if not isinstance(given, (int, float)) else {norm: _number(given, "threshold")})
        options: dict[str, dict[str, Any]] = {}
        raw_opts = pick("attack_opt", {})
        items = raw_opts.items() if isinstance(raw_opts, Mapping) else (s.partition(":")[::2] for s in as_list(raw_opts))
        for name, spec in items:
            options.setdefault(str(name).strip(), {}).update(parse_options(spec, f"attack_opt {name}"))
        n_samples = pick("n_samples")
        return cls(attacks, eps, thresholds, options,
                   None if n_samples is None else _count(n_samples, "n_samples", minimum=1),
                   _count(pick("batch_size", 128), "batch_size", minimum=1),
                   _count(pick("bisection_steps", 0), "bisection_steps", minimum=0))


def _number(value: Any, key: str) -> float:
    """``float(value)`` or a ValueError naming the key (a recipe or CLI value that is not a number)."""
    try:
        if isinstance(value, bool):
            raise TypeError
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{key}: '{value}' is not a number (e.g. L2=1.5,Linf=0.3)") from None


def _count(value: Any, key: str, minimum: int) -> int:
    """An integer ≥ ``minimum`` or a ValueError naming the key."""
    if isinstance(value, bool) or not isinstance(value, int) and not (isinstance(value, str) and
                                                                      value.strip().lstrip("-").isdigit()):
        raise ValueError(f"{key}: expected an integer, got {value!r}")
    if int(value) < minimum:
        raise ValueError(f"{key}: must be ≥ {minimum}, got {value}")
    return int(value)


def parse_eps(items: Sequence[str] | None, option: str = "--eps") -> list[float] | None:
    """``["0,0.1", "0.3"]`` or ``["8/255"]`` → ``[0.0, 0.1, 0.3]`` / ``[0.0314]``; a ValueError names ``option`` and
    the bad item."""
    if not items:
        return None
    out = []
    for item in items:
        for part in str(item).split(","):
            part = part.strip()
            if not part:
                continue
            try:
                num, _, den = part.partition("/")
                out.append(float(num) / (float(den) if den else 1.0))
            except (ValueError, ZeroDivisionError):
                raise ValueError(f"{option}: '{part}' is not a number (e.g. 0.1,0.3 or 8/255)") from None
    return out
