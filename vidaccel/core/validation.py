"""Checks for user-given values: each returns the value (normalised) or raises one ``ValueError`` that names the
field, shows the value and says what is allowed.

Every config ``__post_init__`` and every public entry point that takes numbers, strings or paths validates
through these, so a wrong type is a ``ValueError`` like any other bad value (never a bare ``TypeError`` from a
comparison), NaN and infinities are refused unless a field documents them, and integers stay inside int64
(what torch and the RNGs accept). Pure Python: importing this module costs nothing.

Example::

    check_int("CacheConfig", "interval", 0, lo=1)
    # ValueError: CacheConfig.interval=0 is not allowed: it must be an integer >= 1
"""

from __future__ import annotations

import math
import numbers
import os
from typing import Any, Iterable

__all__ = ["INT64_MAX", "shown", "bad_value", "check_int", "check_number", "check_choice", "check_bool",
           "check_str", "check_str_list", "check_path"]

#: The largest integer torch tensors, RNG seeds and shapes accept.
INT64_MAX = 2**63 - 1
_SHOWN = 60


def shown(value: Any) -> str:
    """``repr(value)``, cut to 60 characters (a 10 kB prompt or a huge integer stays one readable line)."""
    try:
        text = repr(value)
    except Exception:  # a hostile __repr__
        text = f"<{type(value).__name__} object>"
    return text if len(text) <= _SHOWN else text[: _SHOWN - 3] + "..."


def _label(owner: str, name: str) -> str:
    return f"{owner}.{name}" if owner else name


def bad_value(owner: str, name: str, value: Any, allowed: str) -> ValueError:
    """``ValueError("{owner}.{name}={value} is not allowed: {allowed}")`` (``owner`` may be empty)."""
    return ValueError(f"{_label(owner, name)}={shown(value)} is not allowed: {allowed}")


def _num(x) -> str:
    if x == INT64_MAX:
        return "2**63 - 1"
    return f"{x:d}" if isinstance(x, int) else f"{x:g}"


def _describe_range(kind: str, lo, hi, lo_open: bool = False, hi_open: bool = False) -> str:
    if lo is not None and hi is not None:
        return f"{kind} in {'(' if lo_open else '['}{_num(lo)}, {_num(hi)}{')' if hi_open else ']'}"
    if lo is not None:
        return f"{kind} {'>' if lo_open else '>='} {_num(lo)}"
    if hi is not None:
        return f"{kind} {'<' if hi_open else '<='} {_num(hi)}"
    return kind


def check_int(owner: str, name: str, value: Any, lo: int | None = None, hi: int | None = INT64_MAX, *,
              optional: bool = False) -> int | None:
    """An integer (``bool`` is refused) in ``[lo, hi]``; ``None`` passes when ``optional``."""
    if value is None and optional:
        return None
    hi = INT64_MAX if hi is None else hi
    # the int64 ceiling is only worth mentioning to a value that goes past it
    allowed = _describe_range("an integer", lo, None if hi == INT64_MAX else hi)
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise bad_value(owner, name, value, f"it must be {allowed}" + (" or None" if optional else ""))
    value = int(value)
    if lo is not None and value < lo:
        raise bad_value(owner, name, value, f"it must be {allowed}")
    if value > hi:
        raise bad_value(owner, name, value, f"it must be {_describe_range('an integer', lo, hi)}")
    return value


def check_number(owner: str, name: str, value: Any, lo: float | None = None, hi: float | None = None, *,
                 lo_open: bool = False, hi_open: bool = False, allow_inf: bool = False,
                 optional: bool = False) -> float | None:
    """A real number (``bool`` is refused), never NaN, finite unless ``allow_inf``, inside the given bounds."""
    if value is None and optional:
        return None
    kind = "a number" if allow_inf else "a finite number"
    allowed = _describe_range(kind, lo, hi, lo_open, hi_open) + (" or None" if optional else "")
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise bad_value(owner, name, value, f"it must be {allowed}")
    try:
        number = float(value)
    except (OverflowError, ValueError):  # an integer too large for a float
        raise bad_value(owner, name, value, f"it must be {allowed}") from None
    if math.isnan(number) or (math.isinf(number) and not allow_inf):
        raise bad_value(owner, name, value, f"it must be {allowed}")
    if lo is not None and (number < lo or (lo_open and number == lo)):
        raise bad_value(owner, name, value, f"it must be {allowed}")
    if hi is not None and (number > hi or (hi_open and number == hi)):
        raise bad_value(owner, name, value, f"it must be {allowed}")
    return value if isinstance(value, numbers.Integral) else number


def check_choice(owner: str, name: str, value: Any, allowed: Iterable[str], *, optional: bool = False,
                 quoted: bool = False) -> str | None:
    """One of the strings ``allowed`` (exact match); the message lists them (``quoted``: as Python literals)."""
    if value is None and optional:
        return None
    options = tuple(allowed)
    if not isinstance(value, str) or value not in options:
        listed = ", ".join(repr(a) if quoted else a for a in options) + (" or None" if optional else "")
        raise ValueError(f"{_label(owner, name)}={shown(value)} is not allowed; allowed: {listed}")
    return value


def check_bool(owner: str, name: str, value: Any) -> bool:
    """``True`` or ``False`` (not 0/1, not a string)."""
    if not isinstance(value, bool):
        raise bad_value(owner, name, value, "it must be True or False")
    return value


def check_indices(owner: str, name: str, value: Any) -> tuple[int, ...]:
    """Block indices: a list / tuple / set / range of integers in ``[0, 2**63 - 1]``; returned sorted, unique."""
    if not isinstance(value, (list, tuple, set, frozenset, range)) or any(
            not isinstance(i, int) or isinstance(i, bool) or not 0 <= i <= INT64_MAX for i in value):
        raise bad_value(owner, name, value, "it must be a list of block indices (integers >= 0)")
    return tuple(sorted(set(value)))


def check_str(owner: str, name: str, value: Any, *, optional: bool = False, empty: bool = True) -> str | None:
    """A string (``empty=False``: with at least one non-blank character)."""
    if value is None and optional:
        return None
    if not isinstance(value, str) or (not empty and not value.strip()):
        what = "a string" if empty else "a non-empty string"
        raise bad_value(owner, name, value, f"it must be {what}" + (" or None" if optional else ""))
    return value


def check_str_list(owner: str, name: str, value: Any, *, empty_items: bool = True, empty: bool = True,
                   what: str | None = None) -> list[str]:
    """A list or tuple of strings (a single string is refused: it would be read letter by letter)."""
    what = what or ("a list of strings" if empty_items else "a list of non-empty strings")
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
        raise bad_value(owner, name, value, f"it must be {what}")
    if (not empty and not value) or not all(isinstance(v, str) and (empty_items or v.strip()) for v in value):
        raise bad_value(owner, name, value, f"it must be {'a non-empty ' + what[2:] if not empty else what}")
    return list(value)


def check_path(owner: str, name: str, value: Any, *, optional: bool = False) -> str | None:
    """A ``str`` or ``os.PathLike`` path without NUL bytes, returned as ``str``."""
    if value is None and optional:
        return None
    if not isinstance(value, (str, os.PathLike)):
        raise bad_value(owner, name, value, "it must be a path (str or os.PathLike)" + (" or None" if optional else ""))
    try:
        path = os.fspath(value)
    except TypeError:
        raise bad_value(owner, name, value, "it must be a path (str or os.PathLike)") from None
    if not isinstance(path, str) or not path or "\x00" in path:
        raise bad_value(owner, name, value, "it must be a non-empty path without NUL characters")
    return path
