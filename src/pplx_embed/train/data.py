"""Training data: pair / triplet / contextual examples, curriculum phases and sharded batches.

* pairs JSONL: ``{"query", "positive"}`` (optional ``"negative"``: str or list, ``"lang"``,
  ``"query_lang"``, ``"positive_lang"``);
* contextual: a BEIR directory whose corpus rows carry ``doc_id``/``chunk_index`` (as
  ``covidqa-ctx``), or JSONL ``{"chunks": [str, ...], "queries": [{"query": str, "chunk": int}]}``.

Every malformed line raises ``ValueError`` naming the file and line.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

from pplx_embed.errors import InputError
from pplx_embed.jsonl import iter_jsonl
from pplx_embed.train.config import PhaseConfig


@dataclass
class Pair:
    query: str
    positive: str
    negatives: list[str] = field(default_factory=list)
    lang: str | None = None
    query_lang: str | None = None
    positive_lang: str | None = None


@dataclass
class ContextualExample:
    """A query and the chunk of its document that answers it."""

    query: str
    chunks: list[str]
    positive: int


def read_jsonl(path: str | Path) -> list[tuple[str, dict]]:
    """``(file:line, object)`` for every non-blank line."""
    rows = [(f"{path}:{number}", row) for number, row in iter_jsonl(path)]
    if not rows:
        raise InputError(f"{path}: no training examples")
    return rows


def _text(row: dict, key: str, where: str) -> str:
    value = row.get(key)
    if not isinstance(value, str) or not value.strip():
        raise InputError(f"{where}: field {key!r} must be a non-empty string")
    return value


def load_pairs(path: str | Path) -> list[Pair]:
    """Query/positive pairs (with optional negatives and languages) from JSONL."""
    pairs = []
    for where, row in read_jsonl(path):
        negatives = row.get("negative", row.get("negatives", []))
        negatives = [negatives] if isinstance(negatives, str) else negatives
        if not isinstance(negatives, list) or not all(isinstance(n, str) and n.strip() for n in negatives):
            raise InputError(f"{where}: 'negative' must be a non-empty string or a list of them")
        pairs.append(Pair(_text(row, "query", where), _text(row, "positive", where), negatives,
                          row.get("lang"), row.get("query_lang"), row.get("positive_lang")))
    return pairs


def pair_row(pair: Pair) -> dict:
    """A pair as its JSONL object (what :func:`load_pairs` reads back)."""
    row = {"query": pair.query, "positive": pair.positive}
    if pair.negatives:
        row["negative"] = pair.negatives
    for key in ("lang", "query_lang", "positive_lang"):
        if getattr(pair, key) is not None:
            row[key] = getattr(pair, key)
    return row


def write_pairs(path: str | Path, pairs: list[Pair]) -> Path:
    """Write pairs as JSONL, atomically (complete or absent)."""
    import json

    from pplx_embed.atomic import write_text

    write_text(Path(path), "".join(json.dumps(pair_row(p)) + "\n" for p in pairs))
    return Path(path)


def load_contextual(path: str | Path) -> list[ContextualExample]:
    """Contextual examples from a contextual BEIR directory or a JSONL of documents with queries."""
    path = Path(path)
    if path.is_dir():
        from pplx_embed.eval.datasets import load_beir

        data = load_beir(path)
        if not data.contextual:
            raise InputError(f"{path}: corpus rows have no doc_id/chunk_index; not a contextual set")
        where = {}  # corpus row -> (document number, chunk position)
        for d, (_, rows) in enumerate(data.documents):
            for k, row in enumerate(rows):
                where[row] = (d, k)
        row_of = {cid: i for i, cid in enumerate(data.corpus_ids)}
        chunks = [[data.corpus_texts[r] for r in rows] for _, rows in data.documents]
        out = []
        for qid, text in zip(data.query_ids, data.query_texts):
            for cid, grade in data.qrels.get(qid, {}).items():
                if grade > 0 and cid in row_of:
                    d, k = where[row_of[cid]]
                    out.append(ContextualExample(text, chunks[d], k))
        return out
    out = []
    for where_line, row in read_jsonl(path):
        chunks = row.get("chunks")
        if not isinstance(chunks, list) or not chunks or not all(isinstance(c, str) for c in chunks):
            raise InputError(f"{where_line}: 'chunks' must be a non-empty list of strings")
        for q in row.get("queries", []):
            if not isinstance(q, dict) or not isinstance(q.get("chunk"), int) or not 0 <= q["chunk"] < len(chunks):
                raise InputError(f"{where_line}: each query needs a 'chunk' index into 'chunks'")
            out.append(ContextualExample(_text(q, "query", where_line), chunks, q["chunk"]))
    return out


def _langs(pair: Pair) -> tuple[str | None, str | None]:
    return pair.query_lang or pair.lang, pair.positive_lang or pair.lang


def select_phase(pairs: list[Pair], phase: PhaseConfig, seed: int = 0) -> list[Pair]:
    """The examples of one curriculum phase: language filter, cross-lingual filter, size cap."""
    out = []
    for pair in pairs:
        query_lang, positive_lang = _langs(pair)
        if phase.langs is not None and not (query_lang in phase.langs and positive_lang in phase.langs):
            continue
        if phase.cross_lingual is not None and (query_lang != positive_lang) != phase.cross_lingual:
            continue
        out.append(pair)
    if phase.max_examples is not None and len(out) > phase.max_examples:
        out = random.Random(seed).sample(out, phase.max_examples)
    if not out:
        raise InputError(f"curriculum phase {phase.name or phase.data!r} selects no examples from {phase.data}")
    return out


def epoch_batches(n: int, batch_size: int, seed: int, epoch: int, rank: int = 0,
                  world_size: int = 1) -> list[list[int]]:
    """This process's example indices for each step of one epoch.

    A seeded permutation is cut into global batches of ``batch_size × world_size`` (the last
    incomplete one dropped); process ``rank`` takes slice ``rank`` of each. One process with
    ``batch_size × 2`` therefore sees exactly the union of two processes' batches, in rank order.
    """
    order = list(range(n))
    random.Random(seed * 1_000_003 + epoch).shuffle(order)
    step = batch_size * world_size
    if n < step:
        raise InputError(f"{n} examples cannot fill one batch of {batch_size} × {world_size} processes")
    return [order[s + rank * batch_size : s + (rank + 1) * batch_size] for s in range(0, n - step + 1, step)]
