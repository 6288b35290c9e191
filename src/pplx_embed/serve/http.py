"""uvicorn's HTTP/1.1 protocol with the server's manners: JSON for malformed requests, a timeout for every
phase of a connection, a connection limit, and access-log lines that quote little and no secrets.

uvicorn answers a request it cannot parse with plain text, keeps a connection that never sends a byte
(or stops half-way through a request) open for good, and takes every connection offered. With
:class:`Protocol` (its numbers from :class:`~pplx_embed.serve.limits.ServeLimits`):

* malformed HTTP is answered ``400 {"error": ...}`` and the connection closed;
* a connection without a request is closed after ``idle_timeout`` seconds: before its first byte and
  between keep-alive requests alike (uvicorn's keep-alive timer, armed at the start too);
* a request has ``header_timeout`` seconds from its first byte for its headers and ``read_timeout``
  for all of it: then ``408 {"error": ...}`` (unless an answer was started) and the connection closes;
* a client that reads nothing more of its answer for ``idle_timeout`` seconds is cut off (else the
  unread answer and the connection would be held for good);
* a connection beyond ``max_connections`` is answered ``503 {"error": ...}`` when it speaks (within a
  second) and closed.
"""

from __future__ import annotations

import json
import logging
import re

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from pplx_embed.serve.errors import clip
from pplx_embed.serve.limits import ServeLimits

TIMED_OUT = "pplx.read_timed_out"  # set in a request's ASGI scope when the protocol answered it 408
REFUSED_WAIT = 1.0  # seconds a connection beyond the limit may take to send its request before it is closed
_SECRET = re.compile(r"(?i)([?&;][^=&;]*(?:key|token|secret|password|auth)[^=&;]*=)[^&;#\s]*")
LOGGED_CHARACTERS = 200  # of any one field of an access-log line


def _error_bytes(message: str, code: str, type: str = "invalid_request_error") -> bytes:
    return json.dumps({"error": {"message": message, "type": type, "code": code}}).encode()


class Protocol(H11Protocol):
    limits = ServeLimits()

    def _send_error(self, status: int, reason: bytes, message: str, code: str) -> None:
        body = _error_bytes(message, code)
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                   (b"connection", b"close")]
        try:
            for event in (h11.Response(status_code=status, headers=headers, reason=reason), h11.Data(data=body),
                          h11.EndOfMessage()):
                self.transport.write(self.conn.send(event))
        except h11.LocalProtocolError:  # an answer was already started: just close
            pass
        self.transport.close()

    def send_400_response(self, msg: str) -> None:
        self._send_error(400, b"Bad Request", f"malformed HTTP request: {msg}", "invalid_http")

    # ---- the connection limit and the idle timeout from the first moment ------------------------------
    def connection_made(self, transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._timer = None
        self._lost = False
        self._first_byte: float | None = None  # when the request now arriving began
        self._refused = len(self.connections) > self.limits.max_connections
        wait = min(REFUSED_WAIT, self.timeout_keep_alive) if self._refused else self.timeout_keep_alive
        self.timeout_keep_alive_task = self.loop.call_later(wait, self.timeout_keep_alive_handler)

    def _refuse(self) -> None:
        body = _error_bytes(f"the server holds its limit of {self.limits.max_connections} connections; retry shortly",
                            "too_many_connections", "server_error")
        self.transport.write(b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n"
                             b"content-length: %d\r\nretry-after: 1\r\nconnection: close\r\n\r\n%s" % (len(body), body))
        self.transport.close()

    # ---- the header and read timeouts: from a request's first byte until it is all received -------------
    def data_received(self, data: bytes) -> None:
        if self._refused:
            self._unset_keepalive_if_required()
            self._refuse()
            return
        if self._first_byte is None and self.conn.their_state is h11.IDLE:
            self._first_byte = self.loop.time()
        super().data_received(data)
        self._watch()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._watch()
        if self.transport.get_write_buffer_size():  # the client has not taken all of the answer yet
            self.loop.call_later(self.timeout_keep_alive, self._cut_if_stalled, self.transport.get_write_buffer_size())

    def _cut_if_stalled(self, pending: int) -> None:
        """Abort a connection whose client has read nothing more of its answer for an idle timeout (asyncio
        would otherwise hold the unread answer, and the connection, for good)."""
        if self._lost or not (left := self.transport.get_write_buffer_size()):
            return
        if left >= pending:
            self.transport.abort()
        else:
            self.loop.call_later(self.timeout_keep_alive, self._cut_if_stalled, left)

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        self._disarm()
        super().connection_lost(exc)

    def _watch(self) -> None:
        """Arm the timer of the phase the request now arriving is in: headers, body, or none."""
        state = self.conn.their_state
        if state is h11.IDLE and self._first_byte is None and self.conn.trailing_data[0]:  # a pipelined request
            self._first_byte = self.loop.time()
        if state is h11.SEND_BODY:
            limit = self.limits.read_timeout
        elif state is h11.IDLE and self._first_byte is not None:
            limit = min(self.limits.header_timeout, self.limits.read_timeout)
        else:  # received (the request timeout takes over), or the connection is closing
            self._first_byte = None
            self._disarm()
            return
        self._unset_keepalive_if_required()  # a request is arriving: no longer idle
        deadline = self._first_byte + limit
        if self._timer is None or self._timer.when() != deadline:
            self._disarm()
            if not self.transport.is_closing():
                self._timer = self.loop.call_at(deadline, self._timed_out)

    def _disarm(self) -> None:
        if getattr(self, "_timer", None) is not None:
            self._timer.cancel()
            self._timer = None

    def _timed_out(self) -> None:
        self._timer = None
        if self.transport.is_closing():
            return
        body = self.conn.their_state is h11.SEND_BODY
        if body and self.cycle is not None:
            self.cycle.scope[TIMED_OUT] = True  # the app's gate counts it 408, not a client gone
            if self.cycle.response_started:  # answered already (e.g. 413 before the body): nothing more to say
                self.transport.close()
                return
        what, limit = ("request", self.limits.read_timeout) if body else (
            "request's headers", min(self.limits.header_timeout, self.limits.read_timeout))
        self._send_error(408, b"Request Timeout", f"the {what} did not arrive within {limit:g} s", "read_timeout")


class _AccessLog(logging.Filter):
    """uvicorn's access lines quote the client's method and path: each cut to LOGGED_CHARACTERS, secrets in
    the query string (``api_key=``, ``token=`` ...) redacted."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(loggable(a) if isinstance(a, str) else a for a in record.args)
        return True


def loggable(text: str) -> str:
    """A client's text as a log line may show it: secrets in a query string redacted, at most LOGGED_CHARACTERS."""
    return clip(_SECRET.sub(r"\1[redacted]", text), LOGGED_CHARACTERS)


ACCESS_LOG = _AccessLog()


def uvicorn_config(app, limits: ServeLimits | None = None, **options) -> uvicorn.Config:
    """A ``uvicorn.Config`` serving ``app`` with :class:`Protocol` and ``limits``' timeouts (``options``: uvicorn's)."""
    limits = limits or ServeLimits()
    protocol = type("Protocol", (Protocol,), {"limits": limits})
    config = uvicorn.Config(app, http=protocol, timeout_keep_alive=limits.idle_timeout, **options)
    logging.getLogger("uvicorn.access").addFilter(ACCESS_LOG)  # after Config, which sets up uvicorn's logging
    return config
