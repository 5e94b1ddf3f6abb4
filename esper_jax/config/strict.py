"""Strict JSON for any tree of frozen config dataclasses: ``to_dict`` writes it, ``from_dict`` reads it back.

Reading refuses unknown keys, wrong types and values a config's own validation rejects, with a ``ConfigError``
that names the dotted path (``ppo.clip_ratio``) and, for unknown keys, the valid ones. Nothing is coerced except
int → float and list → tuple. The component configs (``PPOConfig``, ``EnvConfig``, ...) validate themselves and
raise ValueError/TypeError; those are re-raised here as ``ConfigError`` with the path of the section.

Three fields of the component configs are typed ``Any``: the network dtypes (any dtype spelling; written as their
names, ``"float32"``) and ``ppo.entropy_coef_per_head`` ((head, weight) pairs; written as an object head → weight,
read back through the class's ``json_readers``).
"""

from __future__ import annotations

import collections.abc
import dataclasses
import json
import types
import typing
from pathlib import Path
from typing import Any, Literal

import numpy as np

__all__ = ["ConfigError", "check_field_types", "from_dict", "read_json", "to_dict"]


class ConfigError(ValueError):
    """A configuration that must not start a run (unknown key, wrong type, out-of-range value)."""


def _encode_any(value: Any) -> Any:
    """JSON form of an ``Any``-typed field: a numpy scalar type → its name; (head, weight) pairs → an object."""
    if isinstance(value, (type, np.dtype)):  # np.float32, jnp.float32, np.dtype("float32")
        return np.dtype(value).name
    if isinstance(value, tuple) and value and all(isinstance(p, tuple) and len(p) == 2 for p in value):
        return {k: v for k, v in value}
    return value


def to_dict(cfg: Any) -> dict[str, Any]:
    """A config tree as plain JSON values (nested objects, tuples → lists)."""
    hints = typing.get_type_hints(type(cfg))
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        if dataclasses.is_dataclass(v):
            v = to_dict(v)
        elif hints.get(f.name) is Any:
            v = _encode_any(v)
        if isinstance(v, tuple):
            v = [list(x) if isinstance(x, tuple) else x for x in v]
        out[f.name] = v
    return out


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def coerce(path: str, tp: Any, value: Any) -> Any:
    """Check ``value`` against annotation ``tp``; returns it with int → float and list → tuple applied."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value  # the owning class validates and normalises it
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return coerce(path, arg, value)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{path}: {value!r} matches none of {_type_name(tp)}")
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices or isinstance(value, bool):
            raise ConfigError(f"{path} must be one of {list(choices)}, got {value!r}")
        return value
    if origin is tuple:
        items = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path} must be a list of {_type_name(items[0])}, got {value!r}")
        if len(items) == 2 and items[1] is Ellipsis:
            items = (items[0],) * len(value)
        elif len(items) != len(value):
            raise ConfigError(f"{path} must be a list of {len(items)} items, got {value!r}")
        return tuple(coerce(f"{path}[{i}]", item, v) for i, (item, v) in enumerate(zip(items, value)))
    if origin is collections.abc.Callable:
        if value is not None:
            raise ConfigError(f"{path} is set by the code, not by a config file; got {value!r}")
        return None
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path} must be a bool (true/false), got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise ConfigError(f"{path} must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
            raise ConfigError(f"{path} must be a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path} must be a string, got {value!r}")
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        return from_dict(tp, value, path)
    raise ConfigError(f"{path}: unsupported annotation {tp}")


def check_field_types(cfg: Any, where: str) -> None:
    """Refuse a field whose value does not have its declared type (validation only: nothing is rewritten)."""
    hints = typing.get_type_hints(type(cfg))
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            if not isinstance(value, tp):
                raise ConfigError(f"{where}{f.name} must be a {tp.__name__}, got {type(value).__name__}")
            continue
        checked = coerce(f"{where}{f.name}", tp, value)
        if type(checked) is not type(value):  # e.g. an int where a float is declared
            raise ConfigError(f"{where}{f.name} must be a {_type_name(tp)}, got {value!r}")


def from_dict(cls: type, data: Any, path: str = "", base: Any = None) -> Any:
    """Strict load of ``cls`` from a JSON object; keys absent from ``data`` keep ``base``'s values (default: the
    class defaults). Nested sections merge the same way."""
    where = path or "config"
    if not isinstance(data, dict):
        raise ConfigError(f"{where} must be a JSON object, got {type(data).__name__}")
    valid = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(data) - set(valid))
    if unknown:
        names = [f"{path}.{k}" if path else k for k in unknown]
        raise ConfigError(f"{where}: unknown key(s) {names}; valid keys: {valid}")
    hints = typing.get_type_hints(cls)
    defaults = {f.name: f.default for f in dataclasses.fields(cls) if f.default is not dataclasses.MISSING}
    kwargs = {}
    for key, value in data.items():
        tp, sub = hints[key], f"{path}.{key}" if path else key
        if dataclasses.is_dataclass(tp) and not isinstance(value, tp):
            # a section merges over the base's section, else over the field's default instance
            kwargs[key] = from_dict(tp, value, sub, getattr(base, key) if base is not None else defaults.get(key))
        elif tp is Any and key in getattr(cls, "json_readers", {}):
            try:
                kwargs[key] = cls.json_readers[key](value)
            except (TypeError, ValueError) as exc:
                raise ConfigError(f"{sub}: {exc}") from None
        else:
            kwargs[key] = coerce(sub, tp, value)
    try:
        return dataclasses.replace(base, **kwargs) if base is not None else cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:
        # The sections name their fields "PPOConfig.gamma"; say where in the file that is: "ppo.gamma".
        message, prefix = str(exc), f"{cls.__name__}."
        if path and prefix in message:
            raise ConfigError(message.replace(prefix, f"{path}.")) from None
        raise ConfigError(f"{where}: {message}") from None


def read_json(path: str | Path) -> Any:
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid JSON: {exc}") from None
