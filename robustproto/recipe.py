"""Recipe syntax: what a value in a recipe TOML or on the command line means.

A recipe is a TOML file; a flag is a string. This module reads the file (:func:`read_toml`), parses the small
languages of option values (``key=value,...`` options, ``NAME[:key=value,...]`` regularizers, ``0.1,8/255``
budgets, norm names) and converts one value to the type a configuration field is annotated with
(:func:`convert`). It knows no field: the schema is :mod:`robustproto.config`. Every bad value is a
:class:`~robustproto.errors.UsageError` whose message starts with the key (or flag) it came from.

This module imports nothing from the package but :mod:`robustproto.errors`.
"""

from __future__ import annotations

import ast
import copy
import sys
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .errors import MissingFileError, UsageError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

__all__ = ["NORMS", "convert", "format_reg", "freeze_table", "normalize_norm", "parse_eps", "parse_options",
           "parse_reg", "read_toml", "thaw"]

NORMS = ("Linf", "L2")
# the annotation of a regularizer list: ((name, options), ...); a string item is parsed by parse_reg
REG_ITEM = tuple[str, Mapping[str, Any]]


def read_toml(path: str | Path, key: str = "config") -> dict[str, Any]:
    """The TOML file at ``path`` as a dict; a missing file is a MissingFileError, an unreadable one a UsageError,
    both naming ``key``."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"{key}: recipe not found: {path}; pass --{key} the path of a recipe TOML file")
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"{key}: recipe {path} is not valid TOML ({exc}); fix the file") from exc
    except UnicodeDecodeError as exc:
        raise UsageError(f"{key}: recipe {path} is not UTF-8 text ({exc.reason}); pass a TOML file") from exc


def _literal(text: str) -> Any:
    """A Python literal if ``text`` is one (``3``, ``0.1``, ``True``, ``[1, 2]``), else the string itself."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


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


def parse_options(items: str | Sequence[str] | Mapping[str, Any], key: str) -> dict[str, Any]:
    """``["k=v", ...]`` or ``"k=v,k2=v2"`` or a mapping → ``{k: literal(v)}`` (``-`` in names read as ``_``)."""
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
                raise UsageError(f"{key}: expected key=value, got '{part}'")
            out[name] = _literal(value.strip())
    return out


def parse_reg(spec: str) -> tuple[str, dict[str, Any]] | None:
    """``"NAME[:k=v,...]"`` → ``(name, options)``; ``"none"`` → ``None``."""
    name, _, rest = str(spec).partition(":")
    name = name.strip()
    if not name:
        raise UsageError(f"reg: expected NAME[:key=value,...], got '{spec}'")
    if name.lower() == "none":
        if rest.strip():
            raise UsageError(f"reg: 'none' takes no options, got '{spec}'")
        return None
    return name, parse_options(rest, f"reg '{name}'")


def format_reg(name: str, options: Mapping[str, Any]) -> str:
    """The inverse of :func:`parse_reg`: ``("lipschitz", {"weight": 10})`` → ``"lipschitz:weight=10"``."""
    if not options:
        return name
    return name + ":" + ",".join(f"{k}={v!r}" for k, v in options.items())


def parse_eps(items: Sequence[Any] | None, option: str = "--eps") -> list[float] | None:
    """``["0,0.1", "0.3"]`` or ``["8/255"]`` (or numbers) → ``[0.0, 0.1, 0.3]`` / ``[0.0314]``; a UsageError
    names ``option`` and the bad item."""
    if items is None or isinstance(items, (str, int, float)):
        items = [] if items is None else [items]
    if not items:
        return None
    out = []
    for item in items:
        if isinstance(item, (int, float)) and not isinstance(item, bool):
            out.append(float(item))
            continue
        for part in str(item).split(","):
            part = part.strip()
            if not part:
                continue
            try:
                num, _, den = part.partition("/")
                out.append(float(num) / (float(den) if den else 1.0))
            except (ValueError, ZeroDivisionError):
                raise UsageError(f"{option}: '{part}' is not a number (e.g. 0.1,0.3 or 8/255)") from None
    return out


def normalize_norm(norm: str, key: str = "norm") -> str:
    """``"linf"``, ``"inf"``, ``"Linf"`` → ``"Linf"``; ``"l2"``, ``"2"`` → ``"L2"``; anything else a UsageError."""
    name = str(norm).strip().lower()
    if name in ("linf", "inf", "l_inf"):
        return "Linf"
    if name in ("l2", "2", "l_2"):
        return "L2"
    raise UsageError(f"{key}: '{norm}' is not one of {', '.join(NORMS)}")


def freeze_table(value: Any, key: str) -> types.MappingProxyType:
    """A TOML table kept as written, read-only at the top (its values are copied, lists stay lists)."""
    if not isinstance(value, Mapping):
        raise UsageError(f"{key}: expected a table, got {value!r}")
    return types.MappingProxyType({str(k): copy.deepcopy(thaw(v)) for k, v in value.items()})


def thaw(value: Any) -> Any:
    """Plain JSON-able data: read-only mappings → dicts, recursively (lists and tuples keep their type)."""
    if isinstance(value, Mapping):
        return {k: thaw(v) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return type(value)(thaw(v) for v in value)
    return value


def _optional(tp: Any) -> tuple[bool, Any]:
    """``(True, X)`` for ``X | None`` / ``Optional[X]``, else ``(False, tp)``."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return True, args[0]
    return False, tp


def convert(key: str, tp: Any, value: Any) -> Any:
    """``value`` (from a recipe, a flag or Python) as the annotation ``tp`` says, or a UsageError naming ``key``.

    Handles ``str``, ``int``, ``float``, ``bool``, ``X | None``, ``tuple[X, ...]`` (a string is a comma list),
    ``Mapping[str, Any]`` (``key=value`` options, read-only), ``Mapping[str, X]`` (a table of X, read-only) and
    the regularizer item ``tuple[str, Mapping[str, Any]]`` (a string is ``NAME[:key=value,...]``)."""
    optional, tp = _optional(tp)
    if value is None:
        if optional:
            return None
        raise UsageError(f"{key}: a value is required")
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.strip().lower() in ("true", "1", "yes")
        if not isinstance(value, bool):
            raise UsageError(f"{key}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not (isinstance(value, int) or (isinstance(value, str) and
                                                                      value.strip().lstrip("-").isdigit())):
            raise UsageError(f"{key}: expected an integer, got {value!r}")
        return int(value)
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise UsageError(f"{key}: expected a number, got {value!r}")
    if tp is str:
        if not isinstance(value, (str, Path)):
            raise UsageError(f"{key}: expected a string, got {value!r}")
        return str(value)
    if tp == REG_ITEM:
        if isinstance(value, str):
            value = parse_reg(value)
            if value is None:
                return None
        if isinstance(value, (tuple, list)) and len(value) == 2 and isinstance(value[1], Mapping):
            return str(value[0]), types.MappingProxyType(parse_options(value[1], f"{key} '{value[0]}'"))
        raise UsageError(f"{key}: expected NAME[:key=value,...], got {value!r}")
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        if args[0] is float:
            items = parse_eps(value, key) or []
        elif isinstance(value, str):
            items = [value] if args[0] == REG_ITEM else [v.strip() for v in value.split(",") if v.strip()]
        elif isinstance(value, (Sequence, set, frozenset)) and not isinstance(value, (str, bytes, Mapping)):
            items = list(value)
        else:
            raise UsageError(f"{key}: expected a list, got {value!r}")
        out = tuple(convert(key, args[0], v) for v in items)
        return tuple(v for v in out if v is not None)  # "none" in a regularizer list adds none
    if origin is Mapping:
        if args[1] is Any:
            return types.MappingProxyType(parse_options(value, key))
        if not isinstance(value, Mapping):
            raise UsageError(f"{key}: expected a table, got {value!r}")
        return types.MappingProxyType({str(k): convert(f"{key} {k}", args[1], v) for k, v in value.items()})
    raise TypeError(f"{key}: no conversion to {tp!r}")  # a bug in the schema, not in the input
