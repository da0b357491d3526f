"""Shared pieces of the fuzz suites: hostile values, the hypothesis profile, and the case counters.

Every fuzz case either succeeds with a value the field's documented domain allows, or raises one
``ValueError`` that names the field, shows the value and says what is allowed. Counts of cases tried per config
and per subcommand are kept in :data:`COUNTS`; with ``VIDACCEL_FUZZ_COUNTS=<path>`` they are written there as
JSON at the end of the session (``tests/conftest.py``).
"""

from __future__ import annotations

import math
import numbers
from collections import Counter

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from vidaccel.core.validation import shown

#: cases tried, per config / call / subcommand
COUNTS: Counter = Counter()

#: Fixed, derandomised and database-free: the same cases on every machine, no state between runs.
FUZZ = settings(max_examples=30, derandomize=True, database=None, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                                       HealthCheck.function_scoped_fixture])


class _Opaque:
    def __repr__(self):
        return "<opaque>"


#: Values every field meets: wrong types, NaN / inf, negatives, huge numbers, empty and unknown strings.
HOSTILE = [None, True, False, 0, 1, -1, 2, -(10**30), 10**30, 2**63, 2**31, 1.5, -0.5, 0.0, float("nan"),
           float("inf"), float("-inf"), 1e308, "", "   ", "nope", "1", "auto", "\x00", "x" * 10_000, b"1", [], [1],
           [-1], ["x"], [0, 1, 2], (3, 16, 16), {}, {"a": 1}, {"a": "fp8"}, {1, 2}, _Opaque()]

#: Anything at all (small containers, all number kinds, text with any characters).
ANY = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.integers(min_value=-(2**80), max_value=2**80),
              st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12), st.binary(max_size=4)),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.tuples(inner, inner, inner),
                            st.dictionaries(st.text(max_size=4), inner, max_size=3)),
    max_leaves=6)


def is_int(v, lo=None, hi=2**63 - 1) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool) and (lo is None or v >= lo) and v <= hi


def is_num(v, lo=None, hi=None, lo_open=False, hi_open=False, inf=False) -> bool:
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        return False
    try:
        f = float(v)
    except OverflowError:
        return False
    if math.isnan(f) or (math.isinf(f) and not inf):
        return False
    if lo is not None and (f < lo or (lo_open and f == lo)):
        return False
    return hi is None or (f < hi or (not hi_open and f == hi))


def mentions(message: str, value) -> bool:
    """The message shows the value (or, for a container, one of its items)."""
    if shown(value) in message:
        return True
    items = []
    if isinstance(value, dict):
        items = list(value.keys()) + list(value.values())
    elif isinstance(value, (list, tuple, set, frozenset)):
        items = list(value)
    return any(mentions(message, item) for item in items)


def check_refusal(error: Exception, field: str, value) -> None:
    """``error`` is a ``ValueError`` naming ``field``, showing ``value`` and saying what is allowed."""
    message = str(error)
    assert type(error) is ValueError or isinstance(error, ValueError), f"{type(error).__name__}: {message}"
    assert f"{field}=" in message or f"{field}[" in message or f"{field}(" in message, \
        f"{field}: the message does not name the field: {message}"
    assert mentions(message, value), f"{field}={shown(value)}: the message does not show the value: {message}"
    assert "not allowed" in message, f"{field}: the message does not say what is allowed: {message}"
