"""uvicorn's HTTP/1.1 protocol with the server's manners: JSON for malformed requests, a whole-request read timeout.

uvicorn answers a request it cannot parse with plain text, and waits forever for the rest of a request
that stops arriving (only idle keep-alive connections time out). :class:`Protocol` answers the first
``400 {"error": ...}`` and gives each request ``read_timeout`` seconds from its first byte to its last:
then ``408 {"error": ...}`` if no answer was started, and the connection closes.
"""

from __future__ import annotations

import json

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol


def _error_bytes(status: int, message: str, code: str) -> bytes:
    return json.dumps({"error": {"message": message, "type": "invalid_request_error", "code": code}}).encode()


class Protocol(H11Protocol):
    read_timeout = 30.0

    def _send_error(self, status: int, reason: bytes, message: str, code: str) -> None:
        body = _error_bytes(status, message, code)
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

    # ---- the read timeout: armed at a request's first byte, disarmed once it is all received ----
    def connection_made(self, transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._read_timer = None

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._watch()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._watch()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _watch(self) -> None:
        receiving = self.conn.their_state is h11.SEND_BODY or (
            self.conn.their_state is h11.IDLE and bool(self.conn.trailing_data[0]))
        if not receiving:
            self._disarm()
        elif self._read_timer is None and not self.transport.is_closing():
            self._read_timer = self.loop.call_later(self.read_timeout, self._timed_out)

    def _disarm(self) -> None:
        if getattr(self, "_read_timer", None) is not None:
            self._read_timer.cancel()
            self._read_timer = None

    def _timed_out(self) -> None:
        self._read_timer = None
        if self.transport.is_closing():
            return
        if self.cycle is not None and self.cycle.response_started:
            self.transport.close()
            return
        self._send_error(408, b"Request Timeout", f"the request was not received within {self.read_timeout:g} s",
                         "read_timeout")


def uvicorn_config(app, read_timeout: float = 30.0, **options) -> uvicorn.Config:
    """A ``uvicorn.Config`` serving ``app`` with :class:`Protocol` (``options`` as uvicorn's)."""
    protocol = type("Protocol", (Protocol,), {"read_timeout": read_timeout})
    return uvicorn.Config(app, http=protocol, **options)
