"""The rule for metadata filters: ``{"key": value}`` equality on top-level metadata keys, every key must match.

At most 32 keys; values are JSON scalars (strings of at most 1,024 characters, 64-bit integers, finite numbers,
booleans, null). Numbers compare as numbers: an integral float (``3.0``) is the integer ``3``, so it matches a
stored ``3`` or ``3.0`` in every store.
"""

from __future__ import annotations

from typing import Any

from pplx_embed.checks.items import check_key, scalar_ok
from pplx_embed.checks.texts import check_unicode
from pplx_embed.errors import InputError

MAX_FILTER_KEYS = 32
MAX_FILTER_STRING = 1024


class Filter(dict):
    """A filter that passed :func:`check_filter` (numbers canonical: integral floats are ints)."""


def check_filter(where: Any) -> Filter:
    """``where`` (``None``: no filter) as a :class:`Filter`."""
    if isinstance(where, Filter):
        return where
    if where is None:
        return Filter()
    if not isinstance(where, dict):
        raise InputError(f"filter must be an object of metadata key -> value, got {type(where).__name__}")
    if len(where) > MAX_FILTER_KEYS:
        raise InputError(f"filter has {len(where)} keys; at most {MAX_FILTER_KEYS} are allowed")
    out = Filter()
    for key, value in where.items():
        check_key(key, "filter")
        if isinstance(value, str):
            if len(value) > MAX_FILTER_STRING:
                raise InputError(f"filter value for {key!r} is longer than {MAX_FILTER_STRING} characters")
            check_unicode(value, f"filter value for {key!r}")
        elif not scalar_ok(value):
            raise InputError(f"filter value for {key!r} must be a string, a 64-bit integer, a finite number, "
                             "a boolean or null")
        if isinstance(value, float) and value.is_integer() and abs(value) < 2**63:
            value = int(value)
        out[key] = value
    return out
