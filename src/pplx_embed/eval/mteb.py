"""An MTEB adapter: lets ``mteb.evaluate`` run our models (encoder protocol, no instruction prefix).

pplx-embed models embed queries and documents as they are, so the adapter never adds a prompt:
for query batches it uses the bare query (``batch["query"]``) when mteb supplies one, else the text.

    import mteb
    from pplx_embed.eval.mteb import MTEBEncoder
    model = MTEBEncoder("pplx-embed-v1-0.6b", quantization="int8")
    mteb.evaluate(model, mteb.get_tasks(tasks=["SciFact"]))   # needs the benchmark data locally
"""

from __future__ import annotations

from typing import Any

import numpy as np
from mteb.models import ModelMeta
from mteb.models.abs_encoder import AbsEncoder

from pplx_embed.errors import InputError
from pplx_embed.model.quantization import cosine_similarity

OUTPUTS = ("float", "int8", "pm1")  # vectors mteb can compare by cosine


class MTEBEncoder(AbsEncoder):
    """``Embedder`` behind mteb's ``EncoderProtocol``.

    ``quantization`` is ``float``, ``int8`` or ``pm1`` (binary as ±1, so cosine equals the
    Hamming similarity); ``dimensions`` truncates (MRL). Empty texts, which the core refuses,
    embed as zero vectors (similarity 0 to everything).
    """

    def __init__(self, model_name: str | None = None, revision: str | None = None, *, device: str | None = None,
                 embedder=None, quantization: str = "float", dimensions: int | None = None,
                 truncation: str | None = "right", batch_size: int | None = None, **kwargs: Any) -> None:
        if quantization not in OUTPUTS:
            raise InputError(f"quantization for mteb must be one of {', '.join(OUTPUTS)}, got {quantization!r}")
        if embedder is None:
            from pplx_embed.embedder import Embedder

            embedder = Embedder(model_name, device=device)
        self.model = embedder
        self.quantization = quantization
        self.dimensions = dimensions
        self.truncation = truncation
        self.batch_size = batch_size
        info = embedder.info()
        name = embedder.name if "/" in embedder.name else f"pplx-embed/{embedder.name}"
        self.mteb_model_meta = ModelMeta.create_empty().model_copy(update={
            "name": name, "revision": revision, "n_parameters": info["parameters"],
            "max_tokens": info["max_length"], "embed_dim": dimensions or embedder.dimension,
            "similarity_fn_name": "cosine", "use_instructions": False, "framework": ["PyTorch"],
        })

    def encode(self, inputs, *, task_metadata=None, hf_split: str = "", hf_subset: str = "",
               prompt_type=None, **kwargs: Any) -> np.ndarray:
        """Embed every text of the mteb data loader, in order, without any prompt."""
        texts: list[str] = []
        for batch in inputs:
            texts += batch["query"] if "query" in batch else batch["text"]
        width = self.dimensions or self.model.dimension
        out = np.zeros((len(texts), width), np.float32)
        keep = [i for i, t in enumerate(texts) if t and t.strip()]
        if keep:
            vectors = self.model.encode([texts[i] for i in keep], quantization=self.quantization,
                                        dimensions=self.dimensions, batch_size=self.batch_size,
                                        truncation=self.truncation)
            out[keep] = vectors.astype(np.float32)
        return out

    def similarity(self, embeddings1, embeddings2) -> np.ndarray:
        return cosine_similarity(np.asarray(embeddings1), np.asarray(embeddings2))

    def similarity_pairwise(self, embeddings1, embeddings2) -> np.ndarray:
        a, b = np.atleast_2d(np.asarray(embeddings1, np.float32)), np.atleast_2d(np.asarray(embeddings2, np.float32))
        a = a / np.maximum(np.linalg.norm(a, axis=-1, keepdims=True), 1e-12)
        b = b / np.maximum(np.linalg.norm(b, axis=-1, keepdims=True), 1e-12)
        return (a * b).sum(-1)


def local_retrieval_task(path, name: str | None = None, split: str = "test"):
    """An mteb retrieval task over a local BEIR directory (read with ``eval.datasets.load_beir``),
    so ``mteb.evaluate`` can run without a hub."""
    from datasets import Dataset
    from mteb.abstasks.retrieval import AbsTaskRetrieval
    from mteb.abstasks.task_metadata import TaskMetadata

    from pplx_embed.eval.datasets import load_beir

    ds = load_beir(path, split)
    task_name = name or "Local" + "".join(part.title() for part in ds.name.replace("/", "-").split("-"))

    class LocalRetrieval(AbsTaskRetrieval):
        metadata = TaskMetadata(
            type="Retrieval", name=task_name, main_score="ndcg_at_10",
            description=f"Local BEIR set {path}", reference=None,
            dataset={"path": str(path), "revision": "local"}, category="t2t", eval_splits=[split],
            eval_langs=["eng-Latn"], date=None, dialect=[], domains=[], task_subtypes=[], license="not specified",
            annotations_creators="derived", modalities=["text"], sample_creation="found", bibtex_citation="",
        )

        def load_data(self, num_proc: int | None = None, **kwargs: Any) -> None:
            split_data = {
                "queries": Dataset.from_dict({"id": ds.query_ids, "text": ds.query_texts}),
                "corpus": Dataset.from_dict({"id": ds.corpus_ids, "text": ds.corpus_texts,
                                             "title": [""] * len(ds.corpus_ids)}),
                "relevant_docs": ds.qrels, "top_ranked": None,
            }
            self.dataset = {"default": {split: split_data}}
            self.data_loaded = True

    return LocalRetrieval()
