"""Where the frameworks' vectors come from: a local ``Embedder`` or a server, in one precision.

Every framework class holds one :class:`EmbeddingSource`. It returns numpy arrays:

* ``float``  — float32, as ``Embedder.encode`` returns it (L2-normalized for models that normalize);
* ``int8``   — the model's int8 codes ``clamp(round(tanh(x)·127))`` (int8; frameworks get them as floats);
* ``binary`` — the sign bits as ±1 (int8; frameworks get ±1 floats).

int8 and binary vectors are compared by cosine, like the index does (for ±1 vectors cosine is
``1 - 2·hamming/dims``). Local mode loads the model on first use, once per process for the same
:class:`~pplx_embed.options.EmbedderOptions`, and runs it off the event loop in async calls;
remote mode speaks the Perplexity wire (``base64_int8`` / ``base64_binary``; ``float`` needs a
pplx-embed server) through :mod:`pplx_embed.client`, in requests within the API's limits.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import numpy as np

from pplx_embed.checks.texts import check_documents, check_texts, check_truncation
from pplx_embed.client import AsyncClient, Client, ServerError
from pplx_embed.errors import InputError
from pplx_embed.model.quantization import unpack_binary
from pplx_embed.options import EmbedderOptions

if TYPE_CHECKING:
    from pplx_embed.embedder import Embedder

PRECISIONS = ("float", "int8", "binary")
_LOCAL = {"float": "float", "int8": "int8", "binary": "pm1"}  # Embedder.encode's name for each precision
# Per request in remote mode, well inside the hosted API's limits (512 inputs, 16,000 chunks, 120,000 tokens)
MAX_REQUEST_TEXTS = 128
MAX_REQUEST_CHUNKS = 2048
MAX_REQUEST_CHARS = 200_000  # ~50,000 tokens of ordinary text

_loaded: dict[EmbedderOptions, tuple[Embedder, threading.Lock]] = {}
_loading = threading.Lock()


def check_precision(precision: object) -> str:
    if precision not in PRECISIONS:
        raise InputError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    return precision  # type: ignore[return-value]


def check_dimensions(dimensions: object) -> int | None:
    """``None`` or a positive integer (the model checks its own range when it embeds)."""
    if dimensions is not None and (isinstance(dimensions, bool) or not isinstance(dimensions, int)
                                   or dimensions < 1):
        raise InputError(f"dimensions must be a positive integer or None, got {dimensions!r}")
    return dimensions


def _batches(chars: list[int], chunks: list[int] | None = None) -> Iterator[slice]:
    """Consecutive slices of inputs (``chars`` characters and ``chunks`` chunks each) that fit one request."""
    start = n_chars = n_chunks = 0
    for i, size in enumerate(chars):
        count = chunks[i] if chunks else 1
        if i > start and (i - start >= MAX_REQUEST_TEXTS or n_chars + size > MAX_REQUEST_CHARS
                          or n_chunks + count > MAX_REQUEST_CHUNKS):
            yield slice(start, i)
            start, n_chars, n_chunks = i, 0, 0
        n_chars += size
        n_chunks += count
    if start < len(chars):
        yield slice(start, len(chars))


class EmbeddingSource:
    """One model (and optionally a query model) at one precision and Matryoshka size, local or remote.

    ``contextual``: the model is a contextual (late-chunking) one, so single texts and queries are
    embedded as one-chunk documents (``[[text]]``, as the model card says); ``query_model``, when
    given, embeds queries instead (the model card's pairing: pplx-embed-v1 queries,
    pplx-embed-context-v1 chunks). ``truncation`` cuts over-long texts (local mode; a server
    decides its own). Nothing loads or connects until the first embedding.
    """

    def __init__(self, model: str | None = None, *, precision: str = "float", dimensions: int | None = None,
                 truncation: str | None = None, contextual: bool = False, query_model: str | None = None,
                 base_url: str | None = None, api_key: str | None = None, options: EmbedderOptions | None = None,
                 timeout: float = 120.0):
        self.precision = check_precision(precision)
        self.dimensions = check_dimensions(dimensions)
        check_truncation(truncation)
        for name, value in (("model", model), ("query_model", query_model), ("base_url", base_url)):
            if value is not None and (not isinstance(value, str) or not value.strip()):
                raise InputError(f"{name} must be a non-empty string or None, got {value!r}")
        if options is not None and not isinstance(options, EmbedderOptions):
            raise InputError(f"options must be an EmbedderOptions, got {type(options).__name__}")
        self.model, self.query_model, self.contextual = model, query_model, bool(contextual)
        self.truncation, self.base_url, self.timeout = truncation, base_url, timeout
        self._api_key = api_key
        if base_url is not None:
            if model is None:
                raise InputError("remote mode (base_url) needs model=, the server's or the hosted API's model name")
            if truncation is not None or options is not None:
                raise InputError("truncation and options are local-mode settings; a server loads and truncates "
                                 "with its own (pplx-embed serve --truncation ...)")
            self._options = None
        else:
            options = options or EmbedderOptions.from_env()
            self._options = options.replace(model=model) if model is not None else options
        self._client: Client | None = None

    @property
    def remote(self) -> bool:
        return self.base_url is not None

    # ---- what the vectors are -----------------------------------------------------------------
    @property
    def model_name(self) -> str:
        """The name an index records for these vectors: the model as given (``model``, else the options' or
        ``$PPLX_EMBED_MODEL``; with none of them, the default model's name, which loads it)."""
        if self.model is not None:
            return self.model
        return self._options.model if self._options.model is not None else self._local()[0].name

    # ---- local mode ---------------------------------------------------------------------------
    def _local(self, query: bool = False) -> tuple[Embedder, threading.Lock]:
        options = self._options.replace(model=self.query_model) if query and self.query_model else self._options
        with _loading:
            if options not in _loaded:
                from pplx_embed.embedder import Embedder

                _loaded[options] = (Embedder(options=options), threading.Lock())
            return _loaded[options]

    def embedder(self, query: bool = False) -> Embedder:
        """The loaded local model (the query model with ``query=True``), shared by every source in the process
        with the same options — e.g. for ``Index.use(...)``."""
        if self.remote:
            raise InputError(f"this source embeds remotely through {self.base_url}; it has no local model")
        return self._local(query)[0]

    def _local_encode(self, texts: list[str], query: bool) -> np.ndarray:
        embedder, lock = self._local(query)
        with lock:  # one forward pass at a time per loaded model
            return embedder.encode(texts, _LOCAL[self.precision], self.dimensions, truncation=self.truncation)

    def _local_contextual(self, documents: list[list[str]]) -> list[np.ndarray]:
        embedder, lock = self._local()
        with lock:
            return embedder.encode_contextual(documents, _LOCAL[self.precision], self.dimensions,
                                              truncation=self.truncation)

    # ---- remote mode --------------------------------------------------------------------------
    @property
    def _wire(self) -> str:
        return "float" if self.precision == "float" else self.precision  # client quantization names

    def _decode(self, array: np.ndarray) -> np.ndarray:
        return unpack_binary(array) if self.precision == "binary" else array

    @contextmanager
    def _answers(self) -> Iterator[None]:
        """A server's refusal (4xx: wrong key, unknown model, bad dimensions …) becomes one InputError line."""
        try:
            yield
        except ServerError as exc:
            if 400 <= exc.status < 500:
                raise InputError(f"{self.base_url} refused the request: {exc.status} {exc.code or exc.type}: "
                                 f"{exc.message}") from None
            raise

    def _client_sync(self) -> Client:
        if self._client is None:
            self._client = Client(self.base_url, self._api_key, self.timeout)
        return self._client

    # ---- embedding ----------------------------------------------------------------------------
    def embed(self, texts: list[str], query: bool = False) -> np.ndarray:
        """``[n, d]`` vectors of ``texts`` (queries with ``query=True``) in the source's precision."""
        texts = list(check_texts(texts))
        if not texts:
            return np.zeros((0, 0), np.float32)
        if self.contextual and not (query and self.query_model):
            return np.concatenate(self.embed_contextual([[t] for t in texts]))
        model = self.query_model if query and self.query_model else self.model
        if not self.remote:
            return self._local_encode(texts, query)
        client, out = self._client_sync(), []
        with self._answers():
            for part in _batches([len(t) for t in texts]):
                out.append(client.embed(texts[part], model, self._wire, self.dimensions))
        return self._decode(np.concatenate(out))

    def embed_contextual(self, documents: list[list[str]]) -> list[np.ndarray]:
        """Late chunking: one ``[n_chunks, d]`` array per document (chunks in order)."""
        documents = [list(d) for d in check_documents(documents)]
        if not documents:
            return []
        if not self.remote:
            return self._local_contextual(documents)
        client, out = self._client_sync(), []
        with self._answers():
            for part in _batches([sum(map(len, d)) for d in documents], [len(d) for d in documents]):
                out += client.embed_contextual(documents[part], self.model, self._wire, self.dimensions)
        return [self._decode(a) for a in out]

    async def aembed(self, texts: list[str], query: bool = False) -> np.ndarray:
        """:meth:`embed` without blocking the event loop: the async client remotely, a worker thread locally."""
        texts = list(check_texts(texts))
        if not texts:
            return np.zeros((0, 0), np.float32)
        if not self.remote:
            return await asyncio.to_thread(self.embed, texts, query)
        if self.contextual and not (query and self.query_model):
            return np.concatenate(await self.aembed_contextual([[t] for t in texts]))
        model = self.query_model if query and self.query_model else self.model
        out = []
        async with AsyncClient(self.base_url, self._api_key, self.timeout) as client:
            with self._answers():
                for part in _batches([len(t) for t in texts]):
                    out.append(await client.embed(texts[part], model, self._wire, self.dimensions))
        return self._decode(np.concatenate(out))

    async def aembed_contextual(self, documents: list[list[str]]) -> list[np.ndarray]:
        documents = [list(d) for d in check_documents(documents)]
        if not documents:
            return []
        if not self.remote:
            return await asyncio.to_thread(self.embed_contextual, documents)
        out = []
        async with AsyncClient(self.base_url, self._api_key, self.timeout) as client:
            with self._answers():
                for part in _batches([sum(map(len, d)) for d in documents], [len(d) for d in documents]):
                    out += await client.embed_contextual(documents[part], self.model, self._wire, self.dimensions)
        return [self._decode(a) for a in out]

    def warm_up(self) -> None:
        """Load the local model(s) now (a no-op remotely)."""
        if not self.remote:
            self._local()
            if self.query_model:
                self._local(query=True)

    def close(self) -> None:
        """Close the HTTP connection pool (remote mode); a local model stays loaded for the process."""
        if self._client is not None:
            self._client.close()
            self._client = None


def as_floats(vectors: np.ndarray) -> list[list[float]]:
    """Vectors as the plain float lists frameworks pass around (int8 codes and ±1 as floats)."""
    return np.asarray(vectors, dtype=np.float64).tolist()
