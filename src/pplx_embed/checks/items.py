"""The rule for what an index stores beside a vector: item ids and JSON metadata.

Ids are non-empty strings of at most 1,024 characters, unique within a batch. Metadata is a JSON object
with valid top-level keys, at most 32 levels deep and 10,000 values, integers within 64 bits, finite
numbers, and valid Unicode everywhere (what SQLite's JSON functions, PostgreSQL's jsonb and Milvus hold).
"""

from __future__ import annotations

import math
import re
from typing import Any

from pplx_embed.checks.texts import check_unicode
from pplx_embed.errors import InputError

MAX_ID_LENGTH = 1024
MAX_METADATA_DEPTH = 32
MAX_METADATA_VALUES = 10_000
INT64 = (-(2**63), 2**63 - 1)
KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,63}$")


def check_ids(ids: Any, what: str = "ids") -> list[str]:
    """A batch's ids: a list of unique, non-empty strings of valid Unicode, at most 1,024 characters each."""
    if isinstance(ids, str) or not isinstance(ids, (list, tuple)):
        raise InputError(f"{what} must be a list of strings, got {type(ids).__name__}")
    for i, id_ in enumerate(ids):
        if not isinstance(id_, str) or not id_ or len(id_) > MAX_ID_LENGTH:
            raise InputError(f"{what} must be non-empty strings of at most {MAX_ID_LENGTH} characters, "
                             f"got {str(id_)[:80]!r}")
        check_unicode(id_, f"{what[:-1] if what.endswith('s') else what} {i}")
    if len(set(ids)) != len(ids):
        raise InputError(f"{what} repeat within the batch; each may appear once")
    return list(ids)


def scalar_ok(value: Any) -> bool:
    """A JSON scalar every store compares exactly: strings, booleans, int64 integers, finite floats, null."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return True
    if isinstance(value, int):
        return INT64[0] <= value <= INT64[1]
    return isinstance(value, float) and math.isfinite(value)


def check_key(key: Any, what: str) -> str:
    if not isinstance(key, str) or not KEY.match(key):
        raise InputError(f"{what} key {str(key)[:80]!r} is not valid (1-64 letters, digits, _ . -; "
                         "starting with a letter or _)")
    return key


def check_metadata(metadata: Any) -> dict[str, Any]:
    """One item's metadata (``None``: ``{}``), checked iteratively: deep nesting cannot exhaust the stack."""
    if metadata is None:
        return {}
    if not isinstance(metadata, dict):
        raise InputError(f"metadata must be an object (dict), got {type(metadata).__name__}")
    for key in metadata:
        check_key(key, "metadata")
    stack, seen = [(metadata, 1)], 0
    while stack:
        value, depth = stack.pop()
        seen += 1
        if depth > MAX_METADATA_DEPTH or seen > MAX_METADATA_VALUES:
            raise InputError(f"metadata is nested deeper than {MAX_METADATA_DEPTH} levels or holds more than "
                             f"{MAX_METADATA_VALUES} values")
        if isinstance(value, dict):
            for key in value:
                if not isinstance(key, str):
                    raise InputError("metadata object keys must be strings")
                check_unicode(key, "a metadata key")
            stack += [(v, depth + 1) for v in value.values()]
        elif isinstance(value, (list, tuple)):
            stack += [(v, depth + 1) for v in value]
        elif isinstance(value, str):
            check_unicode(value, "a metadata value")
        elif not scalar_ok(value):
            raise InputError(f"metadata holds {str(value)[:40]!r}: values must be JSON (strings, 64-bit integers, "
                             "finite numbers, booleans, null, lists, objects)")
    return dict(metadata)
