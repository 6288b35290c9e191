"""Retrieval through each framework gives the nDCG@10 of ``pplx-embed eval`` on the same data.

XQuAD-en (all 240 paragraphs, the first 300 questions) and COVID-QA with late chunking (the first 8 documents
of covidqa-ctx, whole, with every question judged on them), each written as a BEIR set so ``pplx-embed eval``
reads exactly what the frameworks get. MiniLM with right truncation, int8 vectors; the frameworks search
the index (binary first stage, int8 rescoring of 100 candidates), which is eval's ``binary+rescore``.
The reference runs once for the module; each framework embeds the data through its own classes.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pplx_embed.eval.datasets import RetrievalSet, load_beir
from pplx_embed.eval.metrics import evaluate
from pplx_embed.eval.runner import run
from pplx_embed.eval.tasks import Settings

XQUAD_QUESTIONS = 300  # of 1,190 (every paragraph stays): enough to compare, quick on 2 cores
COVID_DOCUMENTS = 8  # whole documents (120 chunks) and the 74 questions judged on them
TOLERANCE = 0.1  # nDCG@10 points (0–100 scale)


def subset(source: Path, out: Path, documents: int | None = None, questions: int | None = None) -> Path:
    """A BEIR set of ``source``'s first ``documents`` documents (contextual sets; default: every row) and its first
    ``questions`` questions judged on them, written to ``out`` — what both eval and the frameworks read."""
    rows = [json.loads(line) for line in (source / "corpus.jsonl").read_text(encoding="utf-8").splitlines()]
    if documents is not None:
        keep = set(list(dict.fromkeys(r["doc_id"] for r in rows))[:documents])
        rows = [r for r in rows if r["doc_id"] in keep]
    ids = {r["_id"] for r in rows}
    qrels = [line.split("\t") for line in (source / "qrels" / "test.tsv").read_text().splitlines()[1:]]
    judged = {q for q, corpus_id, _ in qrels if corpus_id in ids}
    queries = [line for line in (source / "queries.jsonl").read_text(encoding="utf-8").splitlines()
               if json.loads(line)["_id"] in judged][:questions]
    asked = {json.loads(line)["_id"] for line in queries}
    (out / "qrels").mkdir(parents=True)
    (out / "corpus.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    (out / "queries.jsonl").write_text("\n".join(queries) + "\n", encoding="utf-8")
    (out / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(
        "\t".join(q) + "\n" for q in qrels if q[0] in asked and q[1] in ids))
    return out


@pytest.fixture(scope="module")
def sets(shared_data, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("sets")
    return {"xquad": subset(shared_data / "xquad" / "en", root / "xquad-en", questions=XQUAD_QUESTIONS),
            "covid": subset(shared_data / "covidqa-ctx", root / "covidqa-ctx", documents=COVID_DOCUMENTS)}


@pytest.fixture(scope="module")
def covid(sets) -> Path:
    return sets["covid"]


@pytest.fixture(scope="module")
def data(sets) -> dict[str, RetrievalSet]:
    return {name: load_beir(path) for name, path in sets.items()}


@pytest.fixture(scope="module")
def reference(minilm, sets) -> dict[str, float]:
    """nDCG@10 (points) of ``pplx-embed eval --model minilm --truncation right -q binary+rescore`` on both sets."""
    settings = Settings(precisions=("binary+rescore",), truncation="right")
    xquad = run(minilm, sets["xquad"], settings)
    late = [r for r in run(minilm, sets["covid"], settings, contextual=True) if r["mode"] == "late"]
    return {"xquad": 100 * xquad[0]["metrics"]["ndcg@10"], "covid": 100 * late[0]["metrics"]["ndcg@10"]}


@pytest.fixture(scope="module")
def documents(covid) -> list[tuple[str, str, list[str], list[int]]]:
    """Each covid document as (doc id, its text, its chunks, the chunks' offsets): the chunks placed at their
    source offsets (``char_start``), gaps filled with spaces."""
    docs: dict[str, tuple[str, list[str], list[int]]] = {}
    for line in (covid / "corpus.jsonl").read_text(encoding="utf-8").splitlines():
        row = json.loads(line)  # rows come grouped by document, chunks in order
        text, chunks, starts = docs.get(row["doc_id"], ("", [], []))
        docs[row["doc_id"]] = (text + " " * (row["char_start"] - len(text)) + row["text"], chunks + [row["text"]],
                               starts + [row["char_start"]])
    return [(doc_id, *value) for doc_id, value in docs.items()]


def ndcg(ds: RetrievalSet, ranked: dict[str, list[str]]) -> float:
    return 100 * evaluate(ds.qrels, {q: {d: float(len(ids) - r) for r, d in enumerate(ids)}
                                     for q, ids in ranked.items()})["ndcg@10"]


def check(name: str, got: dict[str, float], reference: dict[str, float]) -> None:
    print(f"{name}: nDCG@10 xquad/en {got['xquad']:.2f} (eval {reference['xquad']:.2f}), covidqa-ctx late "
          f"{got['covid']:.2f} (eval {reference['covid']:.2f})")
    for key in ("xquad", "covid"):
        assert abs(got[key] - reference[key]) <= TOLERANCE, (name, key, got[key], reference[key])


def test_langchain_matches_eval(data, documents, reference, tmp_path):
    from langchain_core.documents import Document

    from pplx_embed.integrations.langchain import PplxEmbeddings, PplxVectorStore

    xq, cv = data["xquad"], data["covid"]
    emb = PplxEmbeddings(model="minilm", precision="int8", truncation="right")
    store = PplxVectorStore.from_texts(xq.corpus_texts, emb, ids=xq.corpus_ids, location=tmp_path / "xquad")
    retriever = store.as_retriever(search_kwargs={"k": 10})
    got = {"xquad": ndcg(xq, {q: [d.id for d in retriever.invoke(t)] for q, t in zip(xq.query_ids, xq.query_texts)})}

    late = PplxVectorStore(PplxEmbeddings(model="minilm", precision="int8", truncation="right", contextual=True),
                           tmp_path / "covid")
    docs = documents
    late.add_contextual_documents([Document(page_content=text) for _, text, _, _ in docs],
                                  chunks=[chunks for _, _, chunks, _ in docs], ids=[d for d, _, _, _ in docs])
    hits = {q: late.similarity_search(t, k=10) for q, t in zip(cv.query_ids, cv.query_texts)}
    got["covid"] = ndcg(cv, {q: [f"{d.metadata['doc_id']}#{d.metadata['position']}" for d in h]
                             for q, h in hits.items()})
    starts = {f"{d}#{i}": s for d, _, _, ss in docs for i, s in enumerate(ss)}
    assert all(d.metadata["char_start"] == starts[d.id] for h in hits.values() for d in h)
    check("LangChain", got, reference)


def test_llama_index_matches_eval(data, documents, reference, tmp_path):
    from llama_index.core import Document, VectorStoreIndex
    from llama_index.core.schema import TextNode

    from pplx_embed.integrations.llama_index import PplxEmbedding, PplxVectorStore, nodes_from_chunks

    xq, cv = data["xquad"], data["covid"]
    emb = PplxEmbedding(model_name="minilm", precision="int8", truncation="right")
    store = PplxVectorStore(location=tmp_path / "xquad", embed_model=emb)
    store.add(emb([TextNode(id_=i, text=t) for i, t in zip(xq.corpus_ids, xq.corpus_texts)]))
    retriever = VectorStoreIndex.from_vector_store(store, embed_model=emb).as_retriever(similarity_top_k=10)
    got = {"xquad": ndcg(xq, {q: [h.node.node_id for h in retriever.retrieve(t)]
                              for q, t in zip(xq.query_ids, xq.query_texts)})}

    late = PplxEmbedding(model_name="minilm", precision="int8", truncation="right", contextual=True)
    store = PplxVectorStore(location=tmp_path / "covid", embed_model=late)
    nodes = [n for d, text, chunks, _ in documents for n in nodes_from_chunks(Document(text=text, doc_id=d), chunks)]
    store.add(late(nodes))
    retriever = VectorStoreIndex.from_vector_store(store, embed_model=late).as_retriever(similarity_top_k=10)
    got["covid"] = ndcg(cv, {q: [h.node.node_id for h in retriever.retrieve(t)]
                             for q, t in zip(cv.query_ids, cv.query_texts)})
    check("LlamaIndex", got, reference)


def test_haystack_matches_eval(data, documents, reference, tmp_path):
    from haystack import Document, Pipeline

    from pplx_embed.integrations.haystack import (
        PplxContextualDocumentEmbedder,
        PplxDocumentEmbedder,
        PplxDocumentStore,
        PplxEmbeddingRetriever,
        PplxTextEmbedder,
    )

    def retrieve(store: PplxDocumentStore, ds: RetrievalSet, contextual: bool) -> dict[str, list[str]]:
        query = Pipeline()
        query.add_component("embedder", PplxTextEmbedder(model="minilm", precision="int8", truncation="right",
                                                         contextual=contextual))
        query.add_component("retriever", PplxEmbeddingRetriever(document_store=store, top_k=10))
        query.connect("embedder.embedding", "retriever.query_embedding")
        return {q: [d.id for d in query.run({"embedder": {"text": t}})["retriever"]["documents"]]
                for q, t in zip(ds.query_ids, ds.query_texts)}

    xq, cv = data["xquad"], data["covid"]
    store = PplxDocumentStore(location=tmp_path / "xquad", model="minilm", precision="int8")
    embedder = PplxDocumentEmbedder(model="minilm", precision="int8", truncation="right")
    store.write_documents(embedder.run([Document(id=i, content=t) for i, t in zip(xq.corpus_ids,
                                                                                 xq.corpus_texts)])["documents"])
    got = {"xquad": ndcg(xq, retrieve(store, xq, contextual=False))}

    chunks = [Document(id=f"{d}#{i}", content=c, meta={"source_id": d, "split_id": i, "split_idx_start": s})
              for d, _, cs, ss in documents for i, (c, s) in enumerate(zip(cs, ss))]
    store = PplxDocumentStore(location=tmp_path / "covid", model="minilm", precision="int8", contextual=True)
    late = PplxContextualDocumentEmbedder(model="minilm", precision="int8", truncation="right")
    store.write_documents(late.run(chunks)["documents"])
    got["covid"] = ndcg(cv, retrieve(store, cv, contextual=True))
    check("Haystack", got, reference)
