"""Typed, validated experiment settings: a frozen dataclass per paper, profiles as instances.

A paper module declares ``@dataclass(frozen=True) class P3Settings`` with type hints, calls
:func:`check_fields` from its ``__post_init__`` (types; lists become tuples, mappings
(``dict[K, V]`` hints) new dicts with checked keys and values) and declares its profiles as
instances. :func:`from_profile` is its ``settings(profile, overrides)``: unknown
profile or key -> :class:`SettingsError` naming it and the valid ones; a value of the wrong
type or range -> :class:`SettingsError` naming the setting and the value.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Mapping
from typing import Any, Literal, TypeVar, Union

__all__ = ["SettingsError", "check_fields", "from_profile"]

T = TypeVar("T")


class SettingsError(ValueError):
    """A setting name or value that is not allowed (names it and what is allowed)."""


def _type_text(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(hint))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_text(a) for a in typing.get_args(hint))
    if origin is dict:
        k, v = typing.get_args(hint) or (Any, Any)
        return f"a mapping of {_type_text(k)} to {_type_text(v)}"
    if hint is Any:
        return "any value"
    if origin is tuple:
        args = typing.get_args(hint)
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a sequence of {_type_text(args[0])}"
        return f"a sequence of {len(args)} values (" + ", ".join(_type_text(a) for a in args) + ")"
    if hint is type(None):
        return "None"
    return getattr(hint, "__name__", str(hint))


def _coerce(value: Any, hint: Any) -> tuple[bool, Any]:
    """(True, value as stored) when ``value`` fits type hint ``hint``, else (False, None)."""
    origin = typing.get_origin(hint)
    if origin is Literal:
        return (value in typing.get_args(hint) and not isinstance(value, bool)), value
    if origin in (Union, types.UnionType):
        for arg in typing.get_args(hint):
            ok, out = _coerce(value, arg)
            if ok:
                return True, out
        return False, None
    if hint is Any:
        return True, value
    if origin is dict:  # stored as a new dict (a profile's dict is never shared)
        if not isinstance(value, Mapping):
            return False, None
        kh, vh = typing.get_args(hint) or (Any, Any)
        out_d = {}
        for k, v in value.items():
            ok_k, ck = _coerce(k, kh)
            ok_v, cv = _coerce(v, vh)
            if not (ok_k and ok_v):
                return False, None
            out_d[ck] = cv
        return True, out_d
    if origin is tuple:
        if not isinstance(value, list | tuple):
            return False, None
        args = typing.get_args(hint)
        elems = [args[0]] * len(value) if len(args) == 2 and args[1] is Ellipsis else list(args)
        if len(elems) != len(value):
            return False, None
        out = []
        for v, h in zip(value, elems, strict=True):
            ok, c = _coerce(v, h)
            if not ok:
                return False, None
            out.append(c)
        return True, tuple(out)
    if hint is type(None):
        return value is None, value
    if hint is bool:
        return isinstance(value, bool), value
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if hint is float:  # an int is a float too (kept as given: cache keys see the same value)
        return isinstance(value, int | float) and not isinstance(value, bool), value
    return isinstance(value, hint), value


def check_counts(obj: Any, paper: str, minimums: Mapping[str, int],
                 optional: tuple[str, ...] = ()) -> None:
    """The common value ranges of a paper's settings: each ``minimums`` field an integer >= its
    minimum, each ``optional`` field None or an integer >= 1, and ``lr`` (when the settings
    have one) a finite number > 0 -> :class:`SettingsError` naming the setting and value."""
    for name, minimum in minimums.items():
        if getattr(obj, name) < minimum:
            raise SettingsError(f"{paper} setting {name}={getattr(obj, name)!r}: expected an "
                                f"integer >= {minimum}")
    for name in optional:
        value = getattr(obj, name)
        if value is not None and value < 1:
            raise SettingsError(f"{paper} setting {name}={value!r}: None or an integer >= 1")
    lr = getattr(obj, "lr", None)
    if lr is not None and not (math.isfinite(lr) and lr > 0):
        raise SettingsError(f"{paper} setting lr={lr!r}: expected a finite number > 0")


def check_fields(obj: Any, paper: str) -> None:
    """Check every field of frozen dataclass ``obj`` against its type hint; store lists as
    tuples. A mismatch -> :class:`SettingsError` naming the setting, the value and the type."""
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        ok, out = _coerce(value, hints[f.name])
        if not ok:
            raise SettingsError(f"{paper} setting {f.name}={value!r}: expected "
                                f"{_type_text(hints[f.name])}")
        if out is not value:
            object.__setattr__(obj, f.name, out)


def from_profile(profiles: Mapping[str, T], profile: str, overrides: Mapping[str, Any] | None,
                 paper: str) -> T:
    """Profile ``profile`` of ``profiles`` with ``overrides`` (setting name -> value) applied
    and validated (the dataclass's ``__post_init__``)."""
    if profile not in profiles:
        raise SettingsError(f"{paper}: unknown profile {profile!r}; choose one of "
                            f"{sorted(profiles)}")
    base = profiles[profile]
    overrides = dict(overrides or {})
    names = [f.name for f in dataclasses.fields(base)]  # type: ignore[arg-type]
    unknown = sorted(set(overrides) - set(names))
    if unknown:
        raise SettingsError(f"{paper}: unknown override key(s) {unknown}; known: "
                            f"{sorted(names)}")
    return dataclasses.replace(base, **overrides)  # type: ignore[type-var]
