"""Loaders for the evaluation data: BEIR retrieval sets (plain or contextual) and STS pair files.

Every malformed line is reported as ``file:line: what is wrong`` (a :class:`DataError`, a
``ValueError``), so a user can fix the file instead of guessing.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pplx_embed.errors import InputError
from pplx_embed.jsonl import iter_jsonl

_MISSING = object()  # a field a row does not have (never equal to a filter value)


class DataError(InputError):
    """A data file is missing or malformed; the message names the file and line."""


@dataclass
class RetrievalSet:
    """A BEIR set: corpus rows, queries with at least one relevant row, graded qrels.

    ``documents`` is set for contextual sets: ``(doc_id, [corpus row index, ...])`` per document,
    chunks in ``chunk_index`` order, documents in file order.
    """

    name: str
    corpus_ids: list[str]
    corpus_texts: list[str]
    query_ids: list[str]
    query_texts: list[str]
    qrels: dict[str, dict[str, int]]
    documents: list[tuple[str, list[int]]] | None = None
    sampled_from: int | None = None  # corpus size before ``sample_corpus``

    @property
    def contextual(self) -> bool:
        return self.documents is not None


@dataclass
class STSSet:
    """Sentence pairs with gold similarity scores."""

    name: str
    sentences1: list[str]
    sentences2: list[str]
    scores: list[float] = field(default_factory=list)


def _jsonl(path: Path) -> list[tuple[int, dict]]:
    rows = list(iter_jsonl(path, DataError))
    if not rows:
        raise DataError(f"{path}: no rows")
    return rows


def _string(row: dict, key: str, where: str, required: bool = True) -> str:
    value = row.get(key)
    if value is None and not required:
        return ""
    if key == "_id" and isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str):
        raise DataError(f"{where}: field {key!r} must be a string, got {json.dumps(value)[:40]}")
    return value


def _unique(seen: set[str], key: str, where: str) -> None:
    if key in seen:
        raise DataError(f"{where}: duplicate _id {key!r}")
    seen.add(key)


def load_queries(path: Path, where_fields: dict[str, Any] | None = None) -> tuple[list[str], list[str]]:
    """Ids and texts of a ``queries.jsonl`` (only the rows whose fields equal ``where_fields``, if given)."""
    ids, texts, seen = [], [], set()
    for number, row in _jsonl(path):
        where = f"{path}:{number}"
        qid = _string(row, "_id", where)
        _unique(seen, qid, where)
        text = _string(row, "text", where)
        if not text.strip():
            raise DataError(f"{where}: query {qid!r} has an empty text")
        if where_fields and any(row.get(k, _MISSING) != v for k, v in where_fields.items()):
            continue
        ids.append(qid)
        texts.append(text)
    if where_fields and not ids:
        wanted = ", ".join(f"{k}={v!r}" for k, v in where_fields.items())
        raise DataError(f"{path}: no query has {wanted}")
    return ids, texts


def _scored_pairs(path: Path, header: tuple[str, str, str], parse: Callable[[str], float],
                  kind: str) -> Iterator[tuple[int, str, str, float]]:
    """``(line, first, second, score)`` rows of a 3-column tab-separated file (header line optional)."""
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            cols = line.split("\t")
            if number == 1 and cols[:2] == list(header[:2]):
                continue
            if len(cols) != 3:
                raise DataError(f"{path}:{number}: expected 3 tab-separated columns "
                                f"({', '.join(header)}), got {len(cols)}")
            try:
                score = parse(cols[2])
            except ValueError:
                raise DataError(f"{path}:{number}: score {cols[2]!r} is not {kind}") from None
            yield number, cols[0], cols[1], score


def load_qrels(path: Path) -> dict[str, dict[str, int]]:
    """``{query-id: {corpus-id: grade}}`` from a tab-separated qrels file (header optional)."""
    qrels: dict[str, dict[str, int]] = {}
    for _, query_id, corpus_id, grade in _scored_pairs(path, ("query-id", "corpus-id", "score"), int, "an integer"):
        qrels.setdefault(query_id, {})[corpus_id] = grade
    if not qrels:
        raise DataError(f"{path}: no judgements")
    return qrels


def _corpus(path: Path) -> tuple[list[str], list[str], list[tuple[str, list[int]]] | None]:
    ids, texts, seen = [], [], set()
    chunks: dict[str, dict[int, tuple[int, int]]] = {}  # doc_id -> chunk_index -> (row, line)
    rows = _jsonl(path)
    contextual = "doc_id" in rows[0][1]
    for number, row in rows:
        where = f"{path}:{number}"
        cid = _string(row, "_id", where)
        _unique(seen, cid, where)
        title = _string(row, "title", where, required=False)
        text = _string(row, "text", where)
        body = f"{title} {text}".strip() if title.strip() else text
        if not body.strip():
            raise DataError(f"{where}: corpus row {cid!r} has an empty text")
        if contextual:
            doc = row.get("doc_id")
            index = row.get("chunk_index")
            if doc is None or isinstance(doc, (bool, list, dict)):
                raise DataError(f"{where}: contextual row {cid!r} needs a 'doc_id' like the rows before it")
            if isinstance(index, bool) or not isinstance(index, int) or index < 0:
                raise DataError(f"{where}: 'chunk_index' must be a non-negative integer, got {index!r}")
            by_index = chunks.setdefault(str(doc), {})
            if index in by_index:
                raise DataError(f"{where}: chunk {index} of document {doc!r} already given on line "
                                f"{by_index[index][1]}")
            by_index[index] = (len(ids), number)
        elif "doc_id" in row:
            raise DataError(f"{where}: row has a 'doc_id' but the first row has none; "
                            "a contextual corpus needs doc_id + chunk_index on every row")
        ids.append(cid)
        texts.append(body)
    if not contextual:
        return ids, texts, None
    documents = []
    for doc, by_index in chunks.items():
        missing = sorted(set(range(len(by_index))) - set(by_index))
        if missing:
            raise DataError(f"{path}: document {doc!r} lacks chunk_index {missing[0]} "
                            f"(has {len(by_index)} chunks, indices must be 0..{len(by_index) - 1})")
        documents.append((doc, [by_index[k][0] for k in range(len(by_index))]))
    return ids, texts, documents


def load_beir(path: str | Path, split: str = "test", name: str | None = None,
              query_filter: dict[str, Any] | None = None) -> RetrievalSet:
    """A BEIR directory: ``corpus.jsonl``, ``queries.jsonl``, ``qrels/<split>.tsv``.

    Only queries with at least one relevant (grade > 0) row are kept, and with ``query_filter`` only
    those whose fields equal its values (the set's name then says so, e.g. ``medquad[type='symptoms']``);
    qrels naming an unknown query or corpus id are an error (the files do not belong together).
    """
    root = Path(path)
    if not root.is_dir():
        raise DataError(f"{root}: not a directory")
    corpus_ids, corpus_texts, documents = _corpus(root / "corpus.jsonl")
    known_q = set(load_queries(root / "queries.jsonl")[0])
    all_qids, all_qtexts = load_queries(root / "queries.jsonl", query_filter)
    qrels_path = root / "qrels" / f"{split}.tsv"
    qrels = load_qrels(qrels_path)
    known_c = set(corpus_ids)
    for qid, judged in qrels.items():
        if qid not in known_q:
            raise DataError(f"{qrels_path}: query-id {qid!r} is not in queries.jsonl")
        for cid in judged:
            if cid not in known_c:
                raise DataError(f"{qrels_path}: corpus-id {cid!r} (query {qid!r}) is not in corpus.jsonl")
    kept = set(all_qids)
    qrels = {q: j for q, j in qrels.items() if q in kept and any(g > 0 for g in j.values())}
    keep = [i for i, q in enumerate(all_qids) if q in qrels]
    name = name or _name(root)
    if query_filter:
        name += "[" + ",".join(f"{k}={v!r}" for k, v in query_filter.items()) + "]"
    return RetrievalSet(
        name=name,
        corpus_ids=corpus_ids, corpus_texts=corpus_texts,
        query_ids=[all_qids[i] for i in keep], query_texts=[all_qtexts[i] for i in keep],
        qrels=qrels, documents=documents,
    )


def sample_corpus(ds: RetrievalSet, size: int, seed: int = 0) -> RetrievalSet:
    """A smaller corpus for quick runs: every judged row plus seeded random others, in file order.

    Scores on a sampled corpus are higher than on the full one (fewer distractors); results record
    ``sampled_from`` so reports say so. Contextual sets cannot be sampled (documents must stay whole).
    """
    if ds.contextual:
        raise InputError(f"{ds.name} is contextual; its corpus cannot be sampled (documents must stay whole)")
    if size >= len(ds.corpus_ids):
        return ds
    judged = {c for docs in ds.qrels.values() for c in docs}
    keep = {i for i, c in enumerate(ds.corpus_ids) if c in judged}
    if size < len(keep):
        raise InputError(f"cannot sample {size} rows: {ds.name} has {len(keep)} judged rows, all of which are kept")
    import random

    others = [i for i in range(len(ds.corpus_ids)) if i not in keep]
    keep |= set(random.Random(seed).sample(others, size - len(keep)))
    rows = sorted(keep)
    return RetrievalSet(ds.name, [ds.corpus_ids[i] for i in rows], [ds.corpus_texts[i] for i in rows],
                        ds.query_ids, ds.query_texts, ds.qrels, None, len(ds.corpus_ids))


def _name(root: Path) -> str:
    """``covidqa-ctx``; ``medquad/dev`` for a split folder; ``xquad/en`` for one of several parallel sets."""
    siblings = [p for p in root.parent.iterdir() if p.is_dir() and p != root and is_beir(p)]
    return f"{root.parent.name}/{root.name}" if root.name in ("dev", "test", "train") or siblings else root.name


def load_sts(path: str | Path) -> STSSet:
    """A tab-separated STS file with header ``sentence1  sentence2  score`` (no CSV quoting)."""
    path = Path(path)
    s1, s2, scores = [], [], []
    for number, first, second, score in _scored_pairs(path, ("sentence1", "sentence2", "score"), float, "a number"):
        if not first.strip() or not second.strip():
            raise DataError(f"{path}:{number}: empty sentence")
        s1.append(first)
        s2.append(second)
        scores.append(score)
    if not scores:
        raise DataError(f"{path}: no sentence pairs")
    return STSSet(f"{path.parent.name}/{path.stem}", s1, s2, scores)


def is_beir(path: Path) -> bool:
    return (path / "corpus.jsonl").is_file() and (path / "queries.jsonl").is_file()


def parallel_sets(path: str | Path) -> dict[str, Path]:
    """Sub-directories of ``path`` that are BEIR sets (e.g. one per language), by name."""
    root = Path(path)
    return {p.name: p for p in sorted(root.iterdir()) if p.is_dir() and is_beir(p)} if root.is_dir() else {}
