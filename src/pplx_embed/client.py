"""Python client of the pplx-embed server (sync :class:`Client` and async :class:`AsyncClient`).

Vectors come back as numpy arrays exactly as ``Embedder.encode`` returns them: ``int8`` → int8
``[n, d]``, ``binary`` → packed uint8 ``[n, d/8]``, ``float`` → float32 ``[n, d]``::

    from pplx_embed.client import Client
    with Client("http://127.0.0.1:8000", api_key="sk-...") as client:
        vectors = client.embed(["a query", "a document"], model="query", quantization="int8")
"""

from __future__ import annotations

from typing import Any, Self

import httpx
import numpy as np

from pplx_embed.wire import decode_contextual, decode_embeddings, format_for, request_body


class ServerError(RuntimeError):
    """An error answered by the server: HTTP ``status`` plus the ``type``/``code``/``message`` it sent."""

    def __init__(self, status: int, message: str, type: str = "", code: str = "", retry_after: str | None = None):
        super().__init__(f"{status} {code or type}: {message}")
        self.status, self.message, self.type, self.code, self.retry_after = status, message, type, code, retry_after


def _json(response: httpx.Response) -> Any:
    if response.status_code >= 400:
        try:
            error = response.json()["error"]
            raise ServerError(response.status_code, error["message"], error.get("type", ""), error.get("code", ""),
                              response.headers.get("retry-after"))
        except (ValueError, KeyError, TypeError):
            raise ServerError(response.status_code, response.text[:500]) from None
    return response.json()


def _embeddings(payload: dict, quantization: str, single: bool) -> np.ndarray:
    matrix = decode_embeddings(payload["data"], format_for(quantization))
    return matrix[0] if single else matrix


def _contextual(payload: dict, quantization: str) -> list[np.ndarray]:
    return decode_contextual(payload, format_for(quantization))


def _headers(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


class Client:
    """Blocking client; ``embed`` / ``embed_contextual`` mirror ``Embedder.encode`` / ``encode_contextual``."""

    def __init__(self, base_url: str = "http://127.0.0.1:8000", api_key: str | None = None, timeout: float = 120.0):
        self._http = httpx.Client(base_url=base_url, headers=_headers(api_key), timeout=timeout)

    def embed(self, texts: str | list[str], model: str | None = None, quantization: str = "int8",
              dimensions: int | None = None) -> np.ndarray:
        """``[n, d]`` vectors (one vector for a single string) in the requested precision."""
        payload = _json(self._http.post("/v1/embeddings", json=request_body(texts, model, dimensions, quantization)))
        return _embeddings(payload, quantization, isinstance(texts, str))

    def embed_contextual(self, documents: list[list[str]], model: str | None = None, quantization: str = "int8",
                         dimensions: int | None = None) -> list[np.ndarray]:
        """One ``[n_chunks, d]`` array per document (late chunking)."""
        body = request_body(documents, model, dimensions, quantization)
        return _contextual(_json(self._http.post("/v1/contextualizedembeddings", json=body)), quantization)

    def models(self) -> list[dict]:
        return _json(self._http.get("/v1/models"))["data"]

    def health(self) -> dict:
        return _json(self._http.get("/health"))

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class AsyncClient:
    """The same as :class:`Client`, with ``await``."""

    def __init__(self, base_url: str = "http://127.0.0.1:8000", api_key: str | None = None, timeout: float = 120.0):
        self._http = httpx.AsyncClient(base_url=base_url, headers=_headers(api_key), timeout=timeout)

    async def embed(self, texts: str | list[str], model: str | None = None, quantization: str = "int8",
                    dimensions: int | None = None) -> np.ndarray:
        response = await self._http.post("/v1/embeddings", json=request_body(texts, model, dimensions, quantization))
        return _embeddings(_json(response), quantization, isinstance(texts, str))

    async def embed_contextual(self, documents: list[list[str]], model: str | None = None,
                               quantization: str = "int8", dimensions: int | None = None) -> list[np.ndarray]:
        body = request_body(documents, model, dimensions, quantization)
        response = await self._http.post("/v1/contextualizedembeddings", json=body)
        return _contextual(_json(response), quantization)

    async def models(self) -> list[dict]:
        return _json(await self._http.get("/v1/models"))["data"]

    async def health(self) -> dict:
        return _json(await self._http.get("/health"))

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()
