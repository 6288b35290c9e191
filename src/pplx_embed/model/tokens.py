"""Text → token sequences: the checkpoint's tokenizer, its special tokens, the context limit and late chunking.

Takes checked input (:class:`~pplx_embed.checks.Texts`, :class:`~pplx_embed.checks.Documents`) and returns
the engine's :class:`~pplx_embed.model.pooling.Sequence` objects. A text over the context is refused with a
clear error unless a truncation side is given; a text over ``max_chars`` characters is refused (or cut)
before the tokenizer sees it, since tokenizing megabytes to refuse them costs gigabytes.
"""

from __future__ import annotations

from pathlib import Path

from pplx_embed.checks.texts import Documents, Texts
from pplx_embed.errors import InputError
from pplx_embed.model.late_chunking import join_chunks, macro_windows
from pplx_embed.model.pooling import Sequence

#: A text longer than this many characters per context token is refused (or cut, when truncating) untokenized:
#: real text averages 3-6 characters per token.
CHARS_PER_TOKEN = 16


class TextTokenizer:
    """A checkpoint's tokenizer with the runtime's rules: special tokens, context limit, truncation, late chunking."""

    def __init__(self, path: Path, max_length: int):
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
        #: longest input in tokens, special tokens included
        self.max_length = max_length
        self.prefix, self.suffix = self._special_tokens()

    # ---- facts -------------------------------------------------------------------------------
    @property
    def max_chars(self) -> int:
        """Longest text tokenized, in characters (``CHARS_PER_TOKEN`` per context token)."""
        return self.max_length * CHARS_PER_TOKEN

    @property
    def room(self) -> int:
        """Tokens a text may have besides the special tokens."""
        return self.max_length - len(self.prefix) - len(self.suffix)

    @property
    def pad_id(self) -> int:
        return self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0

    @property
    def sep_id(self) -> int:
        """The separator between late-chunked chunks (``<|endoftext|>`` for pplx, ``[SEP]`` for BERT)."""
        sep = self.tokenizer.sep_token_id
        return sep if sep is not None else self.tokenizer.eos_token_id

    def _special_tokens(self) -> tuple[list[int], list[int]]:
        """The ids the tokenizer puts before and after a text (``[CLS]``/``[SEP]`` for BERT, none for Qwen)."""
        bare = self.tokenizer("a", add_special_tokens=False)["input_ids"]
        full = self.tokenizer("a", add_special_tokens=True)["input_ids"]
        for start in range(len(full) - len(bare) + 1):
            if full[start : start + len(bare)] == bare:
                return full[:start], full[start + len(bare) :]
        return [], []

    # ---- texts -------------------------------------------------------------------------------
    def fit(self, items: list[int] | str, room: int, truncation: str | None, where: str, unit: str = "tokens"):
        """``items`` (token ids, or a text's characters) cut to ``room`` as ``truncation`` says, else InputError."""
        if len(items) <= room:
            return items
        if truncation == "right":
            return items[:room]
        if truncation == "left":
            return items[len(items) - room :]
        raise InputError(f"{where} has {len(items)} {unit}, more than the model's limit of {room}; "
                         "shorten it or pass truncation='right' (or 'left')", code="too_many_tokens")

    def body_ids(self, texts: Texts | tuple[str, ...], truncation: str | None = None, cap: bool = True,
                 what: str = "text") -> list[list[int]]:
        """Token ids of each text without special tokens; with ``cap``, a text over :attr:`max_chars` is cut
        (when truncating) or refused before the tokenizer sees it."""
        if not texts:
            return []
        if cap:
            texts = [self.fit(t, self.max_chars, truncation, f"{what} {i}", "characters") for i, t in enumerate(texts)]
        return [e.ids for e in self.tokenizer.backend_tokenizer.encode_batch(list(texts), add_special_tokens=False)]

    def tokenize(self, texts: Texts, truncation: str | None = None) -> list[list[int]]:
        """Model input ids for each text (special tokens included), checked against the context."""
        return [self.prefix + self.fit(ids, self.room, truncation, f"text {i}") + self.suffix
                for i, ids in enumerate(self.body_ids(texts, truncation))]

    def count(self, texts: Texts) -> list[int]:
        """Tokens each text costs as a model input (before any truncation; never capped)."""
        extra = len(self.prefix) + len(self.suffix)
        return [len(ids) + extra for ids in self.body_ids(texts, cap=False)]

    def sequences(self, texts: Texts, truncation: str | None = None) -> list[Sequence]:
        """One engine input per text."""
        return [Sequence(ids) for ids in self.tokenize(texts, truncation)]

    def contextual(self, documents: Documents, truncation: str | None = None) -> tuple[list[Sequence], list[int]]:
        """Late chunking's engine inputs: the sequences (one per macro-window) and the document each belongs to."""
        sequences, owners = [], []
        for d, doc in enumerate(documents):
            chunks = [self.fit(ids, self.room, truncation, f"document {d} chunk {k}")
                      for k, ids in enumerate(self.body_ids(doc, truncation, what=f"document {d} chunk"))]
            for core, window in macro_windows([len(c) for c in chunks], self.room):
                seq = join_chunks([chunks[k] for k in window], self.sep_id, self.prefix, self.suffix)
                offset = core.start - window.start
                seq.spans = seq.spans[offset : offset + len(core)]
                sequences.append(seq)
                owners.append(d)
        return sequences, owners
