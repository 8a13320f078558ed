"""Typed configs: dataclasses built from YAML plus ``--set a.b=c`` overrides, validated on build.

Every config in LDP is a (possibly nested) dataclass whose fields carry a docstring-like comment
and whose ``__post_init__`` performs cross-field checks. This module turns plain dicts (from YAML
or the CLI) into those objects and back, refusing unknown keys and ill-typed values with one clear
:class:`~ldp.errors.UsageError` line, so a bad config fails before any work starts.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from ldp.errors import UsageError, first_line

__all__ = [
    "apply_overrides",
    "build",
    "dump_yaml",
    "load",
    "parse_overrides",
    "read_mapping",
    "to_dict",
]

T = TypeVar("T")


def parse_overrides(pairs: list[str] | tuple[str, ...] | None) -> dict[str, Any]:
    """``["a.b=3", "c=[1,2]"]`` -> ``{"a.b": 3, "c": [1, 2]}``; values are parsed as YAML scalars."""
    out: dict[str, Any] = {}
    for pair in pairs or ():
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--set expects key=value, got {pair!r}")
        try:
            out[key.strip()] = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            out[key.strip()] = raw
    return out


def apply_overrides(data: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Return a copy of ``data`` with dotted-key ``overrides`` set (intermediate dicts created)."""
    data = _deepcopy(data)
    for dotted, value in overrides.items():
        node = data
        parts = dotted.split(".")
        for part in parts[:-1]:
            nxt = node.get(part)
            if nxt is None:
                nxt = node[part] = {}
            if not isinstance(nxt, dict):
                raise UsageError(f"--set {dotted}: {part!r} is not a section")
            node = nxt
        node[parts[-1]] = value
    return data


def build(cls: type[T], data: dict[str, Any] | None, *, where: str = "") -> T:
    """Build dataclass ``cls`` from a plain dict, recursively, with type checks.

    Unknown keys, wrong types and failing ``__post_init__`` checks raise :class:`UsageError`
    naming the offending dotted key.
    """
    data = dict(data or {})
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - names)
    if unknown:
        raise UsageError(
            f"unknown config key {where + unknown[0]!r}; known keys: {', '.join(sorted(names))}"
        )
    kwargs = {}
    fields_by_name = {f.name: f for f in dataclasses.fields(cls)}
    for name, value in data.items():
        value = _over_field_default(fields_by_name[name], value)
        kwargs[name] = _coerce(hints[name], value, where + name)
    try:
        return cls(**kwargs)
    except UsageError:
        raise
    except (ValueError, TypeError) as exc:
        raise UsageError(f"invalid config{' ' + where.rstrip('.') if where else ''}: {exc}") from None


def _over_field_default(field: dataclasses.Field, value: Any) -> Any:
    """A partial section given for a field whose default is a configured instance (``loop:
    LoopConfig = LoopConfig(max_steps=300)``) overrides that instance's values, not the class's:
    ``--set loop.batch_size=8`` keeps ``max_steps=300``."""
    if not isinstance(value, dict) or field.default_factory is dataclasses.MISSING:
        return value
    default = field.default_factory()
    if not dataclasses.is_dataclass(default):
        return value
    return deep_merge(to_dict(default), value)


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``override`` merged in recursively (dicts merge, other values replace)."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def read_mapping(path: str | Path) -> dict[str, Any]:
    """A YAML file's top-level mapping, checked: it exists, is UTF-8, parses, is a mapping
    whose keys (at every depth) are strings. Anything else raises one :class:`UsageError` line."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"config file not found: {path}")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UsageError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    except OSError as exc:
        raise UsageError(f"{path}: cannot read ({exc.strerror})") from None
    try:
        loaded = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise UsageError(f"{path}: not valid YAML ({first_line(exc)})") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise UsageError(f"{path}: expected a mapping at the top level")
    _check_keys(loaded, path, "")
    return loaded


def _check_keys(node: Any, path: Path, where: str) -> None:
    if isinstance(node, dict):
        for key, value in node.items():
            if not isinstance(key, str):
                raise UsageError(f"{path}: key {key!r}{' under ' + where.rstrip('.') if where else ''} is not a string")
            _check_keys(value, path, f"{where}{key}.")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            _check_keys(value, path, f"{where}{i}.")


def load(
    cls: type[T], path: str | Path | None = None, overrides: list[str] | dict[str, Any] | None = None
) -> T:
    """Load ``cls`` from a YAML file (optional) and apply ``--set`` style overrides."""
    data = read_mapping(path) if path is not None else {}
    if overrides:
        ov = overrides if isinstance(overrides, dict) else parse_overrides(overrides)
        data = apply_overrides(data, ov)
    return build(cls, data)


def to_dict(obj: Any) -> Any:
    """Dataclass (nested) -> plain dict of YAML/JSON-safe values."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    if isinstance(obj, Path):
        return str(obj)
    return obj


def dump_yaml(obj: Any) -> str:
    return yaml.safe_dump(to_dict(obj), sort_keys=False)


def _deepcopy(data: Any) -> Any:
    if isinstance(data, dict):
        return {k: _deepcopy(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_deepcopy(v) for v in data]
    return data


def _coerce(tp: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, key)
            except UsageError as exc:
                errors.append(str(exc))
        raise UsageError(errors[0] if errors else f"{key}: invalid value {value!r}")
    if origin is typing.Literal:
        if value not in args:
            raise UsageError(f"{key}: expected one of {', '.join(map(repr, args))}, got {value!r}")
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise UsageError(f"{key}: expected a section (mapping), got {value!r}")
        return build(tp, value, where=key + ".")
    if origin in (list, tuple):
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
            raise UsageError(f"{key}: expected a list, got {value!r}")
        item_tp = args[0] if args else Any
        items = [_coerce(item_tp, v, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise UsageError(f"{key}: expected a mapping, got {value!r}")
        vt = args[1] if len(args) == 2 else Any
        return {k: _coerce(vt, v, f"{key}.{k}") for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise UsageError(f"{key}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
            return int(value)
        raise UsageError(f"{key}: expected an integer, got {value!r}")
    if tp is float:
        number = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):
            try:
                number = float(value)  # YAML reads "1e-4" as a string
            except ValueError:
                pass
        if number is None:
            raise UsageError(f"{key}: expected a number, got {value!r}")
        if not math.isfinite(number):
            raise UsageError(f"{key}: expected a finite number, got {value!r}")
        return number
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise UsageError(f"{key}: expected a string, got {value!r}")
    if isinstance(tp, type) and isinstance(value, tp):
        return value
    raise UsageError(f"{key}: cannot use {value!r} as {getattr(tp, '__name__', tp)}")
