"""Every failure as ``{"error": {"message", "type", "code"}}`` with the right HTTP status.

Only :class:`APIError` (the server's own) and :class:`~pplx_embed.errors.InputError` (a user error
found anywhere in the package) become 4xx. Anything else is a bug: the request gate answers it 500,
logs its traceback and keeps the connection (see ``app._Gate``).

An answer never grows with what the client sent: a client's value is quoted at most
:data:`MAX_QUOTE` characters (:func:`quote`), and any message is cut at :data:`MAX_MESSAGE`.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from pplx_embed.errors import InputError
from pplx_embed.index.store import IndexDamagedError
from pplx_embed.serve.scheduler import Overloaded, ShuttingDown

log = logging.getLogger("pplx_embed.serve")

MAX_QUOTE = 100  # characters of a client's value an error message quotes
MAX_MESSAGE = 1000  # characters of any error message


def clip(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters (the rest counted), lone surrogates escaped so that it encodes as UTF-8."""
    cut = text if len(text) <= limit else f"{text[:limit]}... ({len(text) - limit} more characters)"
    return cut.encode("utf-8", "backslashreplace").decode("utf-8")


def quote(value: str) -> str:
    """A client's value as an error message shows it: the ``repr`` of its first :data:`MAX_QUOTE` characters."""
    more = f"... ({len(value)} characters)" if len(value) > MAX_QUOTE else ""
    return repr(value[:MAX_QUOTE]) + more


class APIError(Exception):
    """An error answered to the client as JSON."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error",
                 code: str = "invalid_request", headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.code, self.headers = status, message, type, code, headers


def error_response(status: int, message: str, type: str, code: str,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    body = {"error": {"message": clip(message, MAX_MESSAGE), "type": type, "code": code}}
    return JSONResponse(body, status, headers=headers)


def _describe(errors: list[dict]) -> str:
    parts = []
    for err in errors[:5]:
        where = ".".join(clip(str(p), MAX_QUOTE) for p in err.get("loc", ()) if p != "body")
        detail = err.get("ctx", {}).get("error") if err.get("type") == "json_invalid" else None
        parts.append(f"{where or 'body'}: {detail or err.get('msg', 'invalid')}")
    more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
    return "; ".join(parts) + more


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> JSONResponse:
        return error_response(exc.status, exc.message, exc.type, exc.code, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = list(exc.errors())
        if any(e.get("type") == "json_invalid" for e in errors):
            return error_response(400, f"request body is not valid JSON: {_describe(errors)}",
                                  "invalid_request_error", "invalid_json")
        return error_response(422, f"invalid request: {_describe(errors)}", "invalid_request_error", "invalid_schema")

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        cause = exc.__cause__
        if exc.status_code == 400 and cause is not None:  # FastAPI could not parse the body (not a JSONDecodeError)
            why = "it is nested too deeply" if isinstance(cause, RecursionError) else str(cause).split(";")[0]
            return error_response(400, f"request body is not valid JSON: {why}", "invalid_request_error",
                                  "invalid_json")
        codes = {404: "not_found", 405: "method_not_allowed"}
        return error_response(exc.status_code, str(exc.detail), "invalid_request_error",
                              codes.get(exc.status_code, "http_error"), getattr(exc, "headers", None))

    @app.exception_handler(InputError)
    async def _input_error(request: Request, exc: InputError) -> JSONResponse:
        if isinstance(exc, IndexDamagedError):  # the operator's problem, not the client's: never answered from
            log.error("served index is damaged on %s %s: %s", request.method, request.url.path, exc, exc_info=exc)
            return error_response(500, str(exc), "server_error", "index_damaged")
        status = 413 if exc.code.startswith("too_many") else 400  # a rule of capacity, or of form
        return error_response(status, str(exc), "invalid_request_error", exc.code)

    @app.exception_handler(Overloaded)
    async def _overloaded(request: Request, exc: Overloaded) -> JSONResponse:
        return error_response(429, str(exc), "rate_limit_error", "queue_full", {"Retry-After": "1"})

    @app.exception_handler(ShuttingDown)
    async def _shutting_down(request: Request, exc: ShuttingDown) -> JSONResponse:
        return error_response(503, str(exc), "server_error", "shutting_down", {"Retry-After": "5"})


def internal_error() -> JSONResponse:
    """The answer to an unexpected exception (already logged with its traceback)."""
    return error_response(500, "internal error; the server logged it", "server_error", "internal_error")
