"""Typed-dataclass settings machinery: dotted `key=value` overrides, a JSON round trip and `--help` listings.

Generic over nested frozen dataclasses whose fields carry attribute docstrings: `prefixrl.config.TrainConfig` and the
flat settings of the stage subcommands (`prefixrl.stages`). Values are converted by each field's annotation; an
unknown key fails with the closest valid key.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import inspect
import textwrap
import types
import typing
from functools import cache
from typing import Any, Literal


def _is_config(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


@cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _paths(cls: type, prefix: str = "") -> dict[str, Any]:
    """Dotted leaf path -> annotation, for every field of `cls` and its nested sections."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        tp = _hints(cls)[f.name]
        if _is_config(tp):
            out.update(_paths(tp, f"{prefix}{f.name}."))
        else:
            out[f"{prefix}{f.name}"] = tp
    return out


def _unknown_key(key: str, valid: list[str], where: str) -> ValueError:
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    hint = f"; did you mean {close[0]!r}?" if close else f"; valid keys: {', '.join(valid)}"
    return ValueError(f"unknown config key {key!r}{where}{hint}")


_TRUE, _FALSE, _NONE = ("true", "1", "yes", "on"), ("false", "0", "no", "off"), ("none", "null", "~")


def _convert(value: Any, tp: Any, key: str) -> Any:
    """`value` (text from the command line, or a JSON value) as an instance of annotation `tp`; ValueError if not."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    text = value.strip() if isinstance(value, str) else None
    if origin in (typing.Union, types.UnionType):
        if value is None or (text is not None and text.lower() in _NONE and type(None) in args):
            if type(None) in args:
                return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _convert(value, arg, key)
            except ValueError as e:
                errors.append(str(e))
        raise ValueError("; ".join(errors))
    if origin is Literal:
        for choice in args:
            if value == choice or (text is not None and text == str(choice)):
                return choice
        raise ValueError(f"{key}={value!r} is not one of {', '.join(map(repr, args))}")
    if origin is tuple:
        if text is not None:
            items = [s.strip() for s in text.strip("()[] ").split(",") if s.strip()]
        elif isinstance(value, (list, tuple)):
            items = list(value)
        else:
            raise ValueError(f"{key}={value!r} is not a sequence; write it as a,b")
        elem = list(args[:-1]) if args and args[-1] is Ellipsis else list(args)
        if args and args[-1] is not Ellipsis and len(items) != len(args):
            raise ValueError(f"{key}={value!r} needs {len(args)} values, e.g. {key}=" + ",".join(["x"] * len(args)))
        return tuple(_convert(v, elem[0] if len(elem) == 1 else elem[i], key) for i, v in enumerate(items))
    if tp is bool:
        if isinstance(value, bool):
            return value
        if text is not None and text.lower() in _TRUE + _FALSE:
            return text.lower() in _TRUE
        raise ValueError(f"{key}={value!r} is not a boolean; use true or false")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if text is not None:
            try:
                return int(text)
            except ValueError:
                pass
        raise ValueError(f"{key}={value!r} is not an integer")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if text is not None:
            try:
                return float(text)
            except ValueError:
                pass
        raise ValueError(f"{key}={value!r} is not a number")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ValueError(f"{key}={value!r} is not a string")
    raise TypeError(f"config field {key} has an unsupported annotation {tp!r}")  # a bug in this module


def to_dict(cfg: Any) -> dict[str, Any]:
    """Nested plain dict of a config (tuples become lists): JSON- and YAML-safe."""

    def plain(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        return list(map(plain, v)) if isinstance(v, tuple) else v

    return plain(cfg)


def from_dict(d: dict[str, Any], cls: type, *, _prefix: str = "") -> Any:
    """Rebuild a config from `to_dict` output; missing keys take their defaults, unknown keys fail by name."""
    if not isinstance(d, dict):
        raise ValueError(f"config section {_prefix.rstrip('.') or '<root>'} must be a mapping, got {d!r}")
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs: dict[str, Any] = {}
    for key, value in d.items():
        if key not in names:
            raise _unknown_key(_prefix + key, [_prefix + n for n in names], "")
        tp = _hints(cls)[key]
        kwargs[key] = from_dict(value, tp, _prefix=f"{_prefix}{key}.") if _is_config(tp) else _convert(value, tp,
                                                                                                      _prefix + key)
    return cls(**kwargs)


def _key_value(item: str, *, what: str, example: str) -> tuple[str, str]:
    key, sep, value = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ValueError(f"{what} {item!r} is not key=value; write e.g. {example}")
    return key, value


def apply_overrides(cfg: Any, overrides: list[str]) -> Any:
    """`cfg` with dotted `key=value` overrides applied, e.g. ["rollout.n=16", "optim.betas=0.9,0.95",
    "model.fp8=None"]. All overrides are applied before validation, so their order does not matter."""
    valid = _paths(type(cfg))
    d = to_dict(cfg)
    for item in overrides:
        key, value = _key_value(item, what="override", example="rollout.n=16")
        if key not in valid:
            sections = [f.name for f in dataclasses.fields(cfg) if _is_config(_hints(type(cfg))[f.name])]
            if key in sections:
                raise ValueError(f"{key!r} is a config section; override one of its fields, e.g. {key}.<field>=...")
            raise _unknown_key(key, sorted(valid), " in override " + repr(item))
        *parents, leaf = key.split(".")
        node = d
        for p in parents:
            node = node[p]
        node[leaf] = _convert(value, valid[key], key)
    return from_dict(d, type(cfg))


@cache
def field_docs(cls: type) -> dict[str, str]:
    """Field name -> its attribute docstring (the string literal right after the field in the class body)."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs: dict[str, str] = {}
    for stmt, nxt in zip(body, body[1:]):
        if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
            if isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant) and isinstance(nxt.value.value, str):
                docs[stmt.target.id] = " ".join(nxt.value.value.split())
    return docs


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(tp))
    if typing.get_origin(tp) is Literal:
        return " | ".join(map(repr, typing.get_args(tp)))
    return "None" if tp is type(None) else tp.__name__ if isinstance(tp, type) else str(tp).replace("typing.", "")


def describe(cfg: Any, *, _prefix: str = "") -> str:
    """One line per field: `dotted.key: type = value` and its docstring on the next line (for `--help`)."""
    lines = []
    cls = type(cfg)
    docs = field_docs(cls)
    for f in dataclasses.fields(cls):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            lines.append(f"[{_prefix}{f.name}] {docs.get(f.name, '')}")
            lines.append(describe(value, _prefix=f"{_prefix}{f.name}."))
        else:
            tp = _type_name(_hints(cls)[f.name])
            lines.append(f"  {_prefix}{f.name}: {tp} = {to_dict(value) if isinstance(value, tuple) else value!r}")
            lines.append(f"      {docs.get(f.name, '')}")
    return "\n".join(lines)


def settings_from_args(cls: type, items: list[str]) -> Any:
    """An instance of the flat config dataclass `cls` from `key=value` items (the stage subcommands' settings, e.g.
    `prefixrl sample problems=hard.jsonl model=/models/x out_dir=traces rank=3 world_size=8`); unknown keys fail
    with the closest valid key, and values are converted by the field's annotation."""
    valid = _paths(cls)
    d: dict[str, Any] = {}
    for item in items:
        key, value = _key_value(item, what="argument", example=f"{next(iter(valid))}=...")
        if key not in valid:
            raise _unknown_key(key, sorted(valid), " in argument " + repr(item))
        d[key] = _convert(value, valid[key], key)
    missing = [f.name for f in dataclasses.fields(cls) if f.name not in d and f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING]  # fmt: skip
    if missing:
        raise ValueError(f"missing required setting(s): {', '.join(f'{m}=...' for m in missing)}")
    return cls(**d)


def describe_fields(cls: type) -> str:
    """`key: type = default` and the docstring of every field of a flat config dataclass (for `--help`)."""
    docs: dict[str, str] = {}
    for base in reversed(cls.__mro__):
        if dataclasses.is_dataclass(base):
            docs.update(field_docs(base))
    lines = []
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else "(required)"
        lines.append(f"  {f.name}: {_type_name(_hints(cls)[f.name])} = {default!r}" if default != "(required)"
                     else f"  {f.name}: {_type_name(_hints(cls)[f.name])} (required)")
        lines.append(f"      {docs.get(f.name, '')}")
    return "\n".join(lines)
