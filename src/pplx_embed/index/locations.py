"""Where an index lives: one registry of location schemes, each served by its backend.

===================================  ===========================================================
location                             backend
===================================  ===========================================================
``path/to/dir``                      :class:`~pplx_embed.index.embedded.EmbeddedIndex` (files)
``milvus:file.db#collection``        :class:`~pplx_embed.index.milvus.MilvusStore` (Milvus Lite)
``milvus://host:port/collection``    :class:`~pplx_embed.index.milvus.MilvusStore` (a server)
``postgresql://…/db#table``          :class:`~pplx_embed.index.pgvector.PgVectorStore`
``pgserver:datadir#table``           :class:`~pplx_embed.index.pgvector.PgVectorStore` (local)
===================================  ===========================================================

Every backend's ``create`` takes the same options (``full_dimension``, ``store_float``,
``contextual``, ``first_stage``, ``query_model``, ``embedder``) and maps them to its own terms
itself; a backend that cannot honour one raises :class:`~pplx_embed.errors.InputError`.
"""

from __future__ import annotations

import importlib
import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pplx_embed.index.store import VectorStore

# (prefixes, "module:Class"), first match wins; anything else is a directory of the embedded index
SCHEMES: tuple[tuple[tuple[str, ...], str], ...] = (
    (("milvus:",), "pplx_embed.index.milvus:MilvusStore"),
    (("postgresql://", "postgres://", "pgserver:"), "pplx_embed.index.pgvector:PgVectorStore"),
)
DIRECTORY = "pplx_embed.index.embedded:EmbeddedIndex"


def backend(location: str | os.PathLike) -> type[VectorStore]:
    """The store class that serves ``location``."""
    target = next((target for prefixes, target in SCHEMES if str(location).startswith(prefixes)), DIRECTORY)
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


class Index:
    """Open or create an index by location; both return a :class:`~pplx_embed.index.store.VectorStore`."""

    @staticmethod
    def create(location: str | os.PathLike, model: str, dimensions: int | None = None, *,
               full_dimension: int | None = None, store_float: bool = False, contextual: bool = False,
               first_stage: str | None = None, query_model: str | None = None, embedder=None) -> VectorStore:
        """A new, empty index at ``location`` for vectors of ``model`` at ``dimensions`` (default: full).

        ``query_model`` (same dimension) embeds the queries, e.g. ``pplx-embed-v1-0.6b`` for an index of
        ``pplx-embed-context-v1-0.6b`` chunks. ``first_stage``: ``flat`` / ``ivf`` (embedded, Milvus) or
        ``hnsw`` (pgvector); ``None`` is the backend's default.
        """
        from pplx_embed.errors import InputError
        from pplx_embed.model.checkpoint import recorded_name

        if not isinstance(model, str) or not model:
            raise InputError("model must be a non-empty name")
        model = recorded_name(model)  # the name results record: an alias (minilm) is stored as its hub id
        query_model = recorded_name(query_model) if query_model else query_model
        if embedder is not None:
            if recorded_name(embedder.name) != model:
                raise InputError(f"embedder is {embedder.name!r} but the index is for {model!r}")
            full_dimension = full_dimension or embedder.dimension
        return backend(location).create(str(location), model, dimensions, full_dimension=full_dimension,
                                        store_float=store_float, contextual=contextual, first_stage=first_stage,
                                        query_model=query_model, embedder=embedder)

    @staticmethod
    def open(location: str | os.PathLike, embedder=None) -> VectorStore:
        """Open the index at ``location``; ``embedder`` (optional) is its model or its query model."""
        return backend(location).open(str(location), embedder=embedder)
