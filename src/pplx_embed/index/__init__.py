"""Retrieval indexes for pplx-embed vectors: binary first stage, int8 rescoring, one interface.

>>> from pplx_embed.index import Index
>>> ix = Index.create("my-index", "minilm", embedder=emb)     # or Index.open("my-index")
>>> ix.add(["a text", ...], ids=["a", ...], metadata=[{"lang": "en"}, ...])
>>> ix.search("a query", k=10, filter={"lang": "en"})          # -> [Hit(id, score, text, metadata, ...)]

The location picks the backend (:mod:`pplx_embed.index.locations`): a directory, ``milvus:…``,
``postgresql://…`` or ``pgserver:…``.
"""

from pplx_embed.index.locations import Index
from pplx_embed.index.store import Hit, IndexDamagedError, IndexNotFoundError, VectorStore

__all__ = ["Hit", "Index", "IndexDamagedError", "IndexNotFoundError", "VectorStore"]
