"""Typed, loud construction of frozen config dataclasses from parsed YAML.

`build(cls, raw, ctx)` walks a mapping against the dataclass's fields: unknown keys are refused
with a did-you-mean hint, every value is checked against its annotation (bool is not an int,
an int is accepted where a float is expected), nested dataclasses recurse, and the class's own
`validate(ctx)` method (if any) checks ranges and cross-field rules.  All failures raise
`ScenarioError` naming the file, the full key path and the value.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

from sim.errors import ScenarioError, fail

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Ctx:
    """Where a value came from: the file and the dotted key path inside it."""

    file: str
    path: str = ""

    def at(self, key: str | int) -> Ctx:
        if isinstance(key, int):
            return Ctx(self.file, f"{self.path}[{key}]")
        return Ctx(self.file, f"{self.path}.{key}" if self.path else key)

    def error(self, message: str, *value: Any) -> ScenarioError:
        return fail(self.file, self.path, message, *value)


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in get_args(tp))
    if origin in (list, tuple):
        return "a list"
    if origin is dict:
        return "a mapping"
    if tp is type(None):
        return "null"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(tp, str(tp))


def coerce(tp: Any, value: Any, ctx: Ctx) -> Any:
    """Check `value` against annotation `tp` and return it in the annotated form."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin is Literal:
        if value in get_args(tp) and not isinstance(value, bool) or (isinstance(value, bool) and value in get_args(tp)):
            return value
        raise ctx.error(f"expected one of {_type_name(tp)}", value)
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        classes = [a for a in args if isinstance(a, type) and dataclasses.is_dataclass(a)]
        if isinstance(value, dict) and len(classes) == 1:
            return build(classes[0], value, ctx)   # keep the inner error's full key path
        for arg in args:
            if arg is type(None):
                continue
            try:
                return coerce(arg, value, ctx)
            except ScenarioError:
                continue
        raise ctx.error(f"expected {_type_name(tp)}", value)
    if origin is tuple or origin is list:
        if not isinstance(value, list | tuple):
            raise ctx.error("expected a list", value)
        args = get_args(tp)
        item_tp = args[0] if args else Any
        items = [coerce(item_tp, v, ctx.at(i)) for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ctx.error("expected a mapping", value)
        ktp, vtp = get_args(tp) or (Any, Any)
        return {coerce(ktp, k, ctx): coerce(vtp, v, ctx.at(str(k))) for k, v in value.items()}
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return build(tp, value, ctx)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ctx.error("expected true or false", value)
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ctx.error("expected an integer", value)
    if tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        raise ctx.error("expected a number", value)
    if tp is str:
        if isinstance(value, str):
            return value
        raise ctx.error("expected a string", value)
    raise ctx.error(f"unsupported type {tp!r}")  # a programming error, still one line


def build(cls: type[T], raw: Any, ctx: Ctx) -> T:
    """Construct dataclass `cls` from mapping `raw`, refusing unknown keys and wrong types."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ctx.error("expected a mapping", raw)
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}  # type: ignore[arg-type]
    aliases: dict[str, str] = getattr(cls, "_aliases", {})
    kwargs: dict[str, Any] = {}
    for key, value in raw.items():
        name = aliases.get(key, key)
        if not isinstance(key, str) or name not in fields:
            hint = difflib.get_close_matches(str(key), list(fields) + list(aliases), n=1)
            did = f"; did you mean '{hint[0]}'?" if hint else f"; expected one of: {', '.join(fields)}"
            raise ctx.at(str(key)).error(f"unknown key{did}")
        kwargs[name] = coerce(hints[name], value, ctx.at(str(key)))
    missing = [
        n for n, f in fields.items()
        if n not in kwargs and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise ctx.at(missing[0]).error("required key is missing")
    obj = cls(**kwargs)
    validate = getattr(obj, "validate", None)
    if callable(validate):
        validate(ctx)
    return obj


def positive(ctx: Ctx, key: str, value: float | int, *, allow_zero: bool = False) -> None:
    """Refuse a non-positive number (or a negative one with allow_zero)."""
    if value < 0 or (value == 0 and not allow_zero):
        raise ctx.at(key).error("must be >= 0" if allow_zero else "must be > 0", value)


_ = typing  # keep typing imported for get_type_hints on postponed annotations
