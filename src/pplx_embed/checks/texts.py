"""The rule for texts: strings of valid Unicode with some content; contextual documents: non-empty lists of chunks.

:func:`check_texts` turns what a caller gave into :class:`Texts` (and :func:`check_documents` into
:class:`Documents`); everything below the edge takes those types as checked, the way TEI's router hands
its backends a ``ValidEncoding``.
"""

from __future__ import annotations

from typing import Any

from pplx_embed.errors import InputError

TRUNCATIONS = ("right", "left")


class Texts(tuple):
    """Texts that passed :func:`check_texts`: strings, valid Unicode, none blank."""

    __slots__ = ()


class Documents(tuple):
    """Contextual documents that passed :func:`check_documents`: each a :class:`Texts`-like tuple of chunks
    (valid Unicode; a chunk may be empty: it embeds to a zero vector), none without chunks."""

    __slots__ = ()


def check_unicode(text: str, where: str) -> str:
    """``text`` if it encodes as UTF-8 (no lone surrogates), else InputError naming ``where``."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InputError(f"{where} is not valid Unicode ({exc.reason} at character {exc.start})") from None
    return text


def _strings(value: Any, what: str) -> list:
    if isinstance(value, str):
        return [value]
    if not isinstance(value, (list, tuple)):
        raise InputError(f"expected a {what} string or a list of them, got {type(value).__name__}")
    for i, item in enumerate(value):
        if not isinstance(item, str):
            raise InputError(f"{what} {i} must be a string, got {type(item).__name__}")
    return list(value)


def check_texts(value: Any, *, what: str = "text", required: bool = False) -> Texts:
    """``value`` (one string or a list of strings) as :class:`Texts`; ``required``: at least one."""
    if isinstance(value, Texts):
        texts = value
    else:
        texts = _strings(value, what)
        for i, text in enumerate(texts):
            if not text.strip():
                raise InputError(f"{what} {i} is empty; every {what} needs some content", code="empty_input")
            check_unicode(text, f"{what} {i}")
        texts = Texts(texts)
    if required and not texts:
        raise InputError(f"nothing given: give at least one {what}", code="empty_input")
    return texts


def check_documents(value: Any, *, required: bool = False) -> Documents:
    """``value`` (a list of documents, each a non-empty list of chunk strings) as :class:`Documents`."""
    if isinstance(value, Documents):
        documents = value
    else:
        if not isinstance(value, (list, tuple)):
            raise InputError(f"documents must be a list of documents, each a list of chunk strings, "
                             f"got {type(value).__name__}")
        checked = []
        for d, doc in enumerate(value):
            if isinstance(doc, str) or not isinstance(doc, (list, tuple)) or not doc:
                raise InputError(f"document {d} must be a non-empty list of chunk strings", code="empty_input")
            chunks = _strings(doc, f"document {d} chunk")
            for k, chunk in enumerate(chunks):
                check_unicode(chunk, f"document {d} chunk {k}")
            checked.append(tuple(chunks))
        documents = Documents(checked)
    if required and not documents:
        raise InputError("no documents given; give at least one", code="empty_input")
    return documents


def check_truncation(truncation: Any) -> str | None:
    """``None`` (refuse over-long texts), ``right`` or ``left``."""
    if truncation is not None and truncation not in TRUNCATIONS:
        raise InputError(f"truncation must be right, left or unset, got {str(truncation)[:40]!r}")
    return truncation
