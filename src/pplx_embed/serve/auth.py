"""Bearer API keys: 401 without a valid key, 403 for a key not allowed the requested model.

Keys are kept only as SHA-256 digests and never logged. A keys file is JSON mapping each key to
the model names it may use, or ``"*"`` for all: ``{"sk-team-a": ["query"], "sk-ops": "*"}``. A name
grants the model under every name it answers to (``minilm`` also grants
``sentence-transformers/all-MiniLM-L6-v2``); a split alias grants only requests for the alias.
The key is checked before the request body is read; the model scope once the body names the model.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Collection
from pathlib import Path

from pplx_embed.errors import InputError
from pplx_embed.serve.errors import APIError

ALL = "*"


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


class KeyRing:
    """Which models each API key may use; empty means the server is open."""

    def __init__(self, keys: dict[str, list[str] | str] | None = None):
        self._allowed: dict[str, frozenset[str] | str] = {}
        for key, models in (keys or {}).items():
            if not isinstance(key, str) or not key:
                raise InputError("API keys must be non-empty strings")
            if models != ALL and not (isinstance(models, list) and all(isinstance(m, str) for m in models)):
                raise InputError('each API key maps to a list of model names or "*"')
            self._allowed[_digest(key)] = ALL if models == ALL else frozenset(models)

    @classmethod
    def from_options(cls, api_keys: list[str] | None = None, keys_file: str | None = None) -> KeyRing:
        """Keys given directly (allowed every model) plus those of a JSON keys file."""
        keys: dict[str, list[str] | str] = {key: ALL for key in api_keys or []}
        if keys_file:
            path = Path(keys_file)
            if not path.is_file():
                raise InputError(f"API keys file not found: {keys_file}")
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
            except json.JSONDecodeError as exc:
                raise InputError(f"API keys file {keys_file} is not valid JSON ({exc.msg})") from None
            if not isinstance(data, dict):
                raise InputError(f'API keys file {keys_file} must be a JSON object {{"key": ["model", ...] | "*"}}')
            keys.update(data)
        return cls(keys)

    @property
    def enabled(self) -> bool:
        return bool(self._allowed)

    def check(self, authorization: str | None, names: Collection[str] | None = None) -> None:
        """Raise 401/403 :class:`APIError` unless the ``Authorization`` header is a valid key and,
        given ``names`` (those a requested model answers to), allows one of them."""
        if not self._allowed:
            return
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise APIError(401, "missing API key: send 'Authorization: Bearer <key>'", "authentication_error",
                           "missing_api_key", {"WWW-Authenticate": "Bearer"})
        allowed = self._allowed.get(_digest(token.strip()))
        if allowed is None:
            raise APIError(401, "invalid API key", "authentication_error", "invalid_api_key",
                           {"WWW-Authenticate": "Bearer"})
        if names is not None and allowed != ALL and allowed.isdisjoint(names):
            raise APIError(403, f"this API key may not use model {next(iter(names), '')!r}", "permission_error",
                           "model_not_allowed")

    def allows(self, authorization: str | None, names: Collection[str]) -> bool:
        try:
            self.check(authorization, names)
        except APIError:
            return False
        return True
