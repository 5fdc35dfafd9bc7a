"""Declared valid values of config fields, checked before a run does any work.

A config dataclass declares a field's range or choices where it declares its default:

    steps: int = setting(300, ge=0)
    family: str = setting("gpt2", choices=("gpt2", "llama"))
    tags: list[str] = setting(factory=list)

`check_fields` walks a config (a dataclass, or the OmegaConf node Hydra composes from one) with its nested
configs and raises `SettingError` naming the first value outside its declared range by its full key
(`train.batch_size=0 must be >= 1`). A value of None (an optional setting left unset) is not checked.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Sequence
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

_BOUNDS = (("ge", ">=", lambda v, b: v >= b), ("gt", ">", lambda v, b: v > b),
           ("le", "<=", lambda v, b: v <= b), ("lt", "<", lambda v, b: v < b))  # fmt: skip


class SettingError(ValueError):
    """A setting outside its declared range or choices, or a key no config declares."""


def setting(
    default: Any = dataclasses.MISSING,
    *,
    factory: Any = dataclasses.MISSING,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    choices: Sequence[Any] | None = None,
) -> Any:
    """A dataclass field with its default (or default `factory`) and the values it accepts."""
    metadata = {k: v for k, v in (("ge", ge), ("gt", gt), ("le", le), ("lt", lt)) if v is not None}
    if choices is not None:
        metadata["choices"] = tuple(choices)
    if factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def describe(f: dataclasses.Field) -> str:
    """The declared valid values of a field, as a phrase ("an integer >= 1", "one of gpt2, llama"), or ""."""
    if "choices" in f.metadata:
        return "one of " + ", ".join(map(str, f.metadata["choices"]))
    return " and ".join(f"{symbol} {f.metadata[key]}" for key, symbol, _ in _BOUNDS if key in f.metadata)


def violation(f: dataclasses.Field, value: Any) -> str | None:
    """Why `value` is not valid for field `f` ("must be >= 1"), or None when it is."""
    if value is None:
        return None
    if isinstance(value, list | tuple | ListConfig):  # a list setting: the range is each element's
        bad = [v for v in value if violation(f, v)]
        return f"holds {bad[0]!r}: each element must be {describe(f)}" if bad else None
    if "choices" in f.metadata and value not in f.metadata["choices"]:
        return "is not " + describe(f)
    for key, _symbol, ok in _BOUNDS:
        if key in f.metadata and isinstance(value, int | float) and not ok(value, f.metadata[key]):
            return f"must be {describe(f)}"
    return None


def _config_type(node: Any) -> type | None:
    if isinstance(node, DictConfig):
        t = OmegaConf.get_type(node)
        return t if dataclasses.is_dataclass(t) else None
    return type(node) if dataclasses.is_dataclass(node) and not isinstance(node, type) else None


def _is_missing(node: Any, name: str) -> bool:
    return isinstance(node, DictConfig) and OmegaConf.is_missing(node, name)


def check_fields(node: Any, path: str = "") -> None:
    """Raise `SettingError` for the first field of `node` (a config dataclass or its OmegaConf node), or of a
    config nested in it, whose value is outside its declared range; `path` prefixes the key in the message."""
    t = _config_type(node)
    if t is None:
        return
    for f in dataclasses.fields(t):
        if _is_missing(node, f.name):
            continue
        value = getattr(node, f.name)
        why = violation(f, value)
        if why:
            raise SettingError(f"{path}{f.name}={value!r} {why}")
        children = value if isinstance(value, list | tuple | ListConfig) else [value]
        for i, child in enumerate(children):
            sub = f"{path}{f.name}." if children is not value else f"{path}{f.name}[{i}]."
            check_fields(child, sub)


def check_known_keys(given: Any, schema: DictConfig, path: str = "") -> None:
    """Raise `SettingError` for a key of `given` (a mapping, e.g. what Hydra composed with `+train.stpes=10`)
    that the config `schema` (the OmegaConf node of a config dataclass) does not declare, naming the closest
    declared key. Free-form mappings (`task.options`) are not checked."""
    if _config_type(schema) is None or not hasattr(given, "items"):
        return
    known = list(schema.keys())
    for key, value in given.items():
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f"did you mean {path}{close[0]}?" if close else f"known: {', '.join(known)}"
            raise SettingError(f"{path}{key} is not a setting of {_config_type(schema).__name__}; {hint}")
        child = schema._get_node(key)
        if isinstance(child, DictConfig) and not _is_missing(schema, key):
            check_known_keys(value, child, f"{path}{key}.")


def field_docs(cls: type) -> dict[str, str]:
    """The comment lines above each field of dataclass `cls` in its source, joined: the settings' documentation."""
    import inspect
    import re

    try:
        lines = inspect.getsource(cls).splitlines()
    except (OSError, TypeError):
        return {}
    names = {f.name for f in dataclasses.fields(cls)}
    docs, comment = {}, []
    for line in lines[1:]:
        stripped = line.strip()
        if stripped.startswith("#"):
            comment.append(stripped.lstrip("#").strip())
            continue
        match = re.match(r"\s+(\w+)\s*:", line)
        if match and match.group(1) in names and comment:
            docs[match.group(1)] = " ".join(comment)
        comment = []
    return docs


def setting_rows(node: Any, path: str = "") -> list[tuple[str, Any, str, str]]:
    """(key, value, valid values, documentation) of every setting of `node` (a config dataclass's OmegaConf
    node) and of the configs nested in it, in declaration order."""
    t = _config_type(node)
    if t is None:
        return []
    docs, rows = field_docs(t), []
    for f in dataclasses.fields(t):
        child = node._get_node(f.name) if isinstance(node, DictConfig) else getattr(node, f.name)
        if _config_type(child) is not None and not _is_missing(node, f.name):
            rows += setting_rows(child, f"{path}{f.name}.")
            continue
        value = "???" if _is_missing(node, f.name) else getattr(node, f.name)
        if isinstance(value, DictConfig | ListConfig):
            value = OmegaConf.to_container(value)
        rows.append((f"{path}{f.name}", value, describe(f), docs.get(f.name, "")))
    return rows
