"""Binary first stage + int8 rescoring vs exact float search, on real MiniLM embeddings of shared data."""

from __future__ import annotations

import json

import numpy as np

from pplx_embed.index import Index


def _texts(path, field: str, limit: int) -> list[str]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line)[field] for line, _ in zip(f, range(limit))]


def test_recall_at_10_of_binary_plus_int8_rescoring(tmp_path, minilm, shared_data):
    # corpus: the XQuAD (en) questions and MedQuAD (dev) questions; queries: held-out MedQuAD questions
    corpus = _texts(shared_data / "xquad/en/queries.jsonl", "text", 1190) + \
        _texts(shared_data / "medquad/dev/queries.jsonl", "text", 400)
    queries = _texts(shared_data / "medquad/train.jsonl", "query", 100)
    docs = minilm.encode(corpus)
    q = minilm.encode(queries)
    exact = np.argsort(-(q @ docs.T), axis=1)[:, :10]  # MiniLM floats are unit-norm: IP = cosine

    ix = Index.create(str(tmp_path / "ix"), minilm.name, embedder=minilm)
    ix.add(texts=corpus, ids=[str(i) for i in range(len(corpus))], vectors=docs)
    rows, _ = ix.search_rows(q, 10)
    recall = np.mean([len(set(r.tolist()) & set(e.tolist())) / 10 for r, e in zip(rows, exact)])
    assert recall >= 0.98, recall
    hamming_only, _ = ix.search_rows(q, 10, rescore="none")
    recall_binary = np.mean([len(set(r.tolist()) & set(e.tolist())) / 10 for r, e in zip(hamming_only, exact)])
    assert recall_binary < recall  # rescoring is what brings binary search to float quality
    # searching by text embeds the query with the index's own model
    hit = ix.search(queries[0], 1)[0]
    assert hit.id == str(exact[0][0]) or hit.text in [corpus[i] for i in exact[0][:3]]
    ix.close()
    reopened = Index.open(str(tmp_path / "ix"))  # loads its model from the recorded name
    assert reopened.search(queries[0], 1)[0].id == hit.id and reopened.embedder.name == minilm.name
    reopened.close()
