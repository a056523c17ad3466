"""Checks of configuration values: each failure is one line naming the field and what it accepts."""

from __future__ import annotations

import contextlib
from typing import Any


class ConfigError(ValueError):
    """A configuration value is out of range. The message names the field and the allowed values."""


# --------------------------------------------------------------------------------------- checks
def check(cond: bool, name: str, allowed: str, value: Any) -> None:
    if not cond:
        raise ConfigError(f"{name} must be {allowed}, got {value!r}")


def positive(obj: Any, *names: str) -> None:
    for n in names:
        v = getattr(obj, n)
        check(v is not None and v > 0, n, "> 0", v)


def non_negative(obj: Any, *names: str) -> None:
    for n in names:
        v = getattr(obj, n)
        check(v is not None and v >= 0, n, ">= 0", v)


def one_of(obj: Any, name: str, options: tuple[str, ...]) -> None:
    v = getattr(obj, name)
    check(v in options, name, f"one of {list(options)}", v)


def in_unit_interval(obj: Any, *names: str, closed: bool = True) -> None:
    for n in names:
        v = getattr(obj, n)
        ok = 0.0 <= v <= 1.0 if closed else 0.0 < v < 1.0
        check(ok, n, "in [0, 1]" if closed else "in (0, 1)", v)


@contextlib.contextmanager
def section(prefix: str):
    """Prefix the field names of :class:`ConfigError` raised inside with ``prefix.``, so that a
    nested section's error names its full path (``task.preferences.k``, not ``task.k``)."""
    try:
        yield
    except ConfigError as e:
        raise ConfigError(f"{prefix}.{e}") from None
