"""Slow, silent, lying and too many connections against a real server process: each is closed within the
documented timeout (the suite's server: idle 1 s, headers 1 s, whole request 2 s, 16 connections) and
the server goes on answering everyone else."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

from adversarial import hostile
from adversarial.hostile import HEADER_TIMEOUT, IDLE_TIMEOUT, MAX_CONNECTIONS, READ_TIMEOUT, request, until_closed

SLACK = 1.5  # seconds a busy CI machine may add to a timer


def connect(served) -> socket.socket:
    return socket.create_connection(served.address, timeout=30)


def error_of(answer: bytes) -> tuple[int, str]:
    head, _, body = answer.partition(b"\r\n\r\n")
    assert b"application/json" in head.lower(), answer[:300]
    return int(head.split()[1]), json.loads(body)["error"]["code"]


def test_a_connection_that_never_sends_a_byte_is_closed_at_the_idle_timeout(served):
    """#3: such a connection stayed open for good (the read timeout started at the first byte)."""
    with connect(served) as sock:
        answer, seconds = until_closed(sock)
    assert answer == b"" and IDLE_TIMEOUT - 0.2 < seconds < IDLE_TIMEOUT + SLACK, seconds


def test_a_keep_alive_connection_is_closed_after_the_idle_timeout(served):
    with connect(served) as sock:
        sock.sendall(request("GET", "/health", key=None))
        assert hostile.read_answer(sock, "GET").status == 200
        start = time.monotonic()
        rest, _ = until_closed(sock)
    assert rest == b"" and time.monotonic() - start < IDLE_TIMEOUT + SLACK


def test_headers_trickled_byte_by_byte_get_408_at_the_header_timeout(served):
    with connect(served) as sock:
        start = time.monotonic()
        sock.sendall(b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\n")
        try:
            for _ in range(40):  # a byte every 0.1 s: far longer than the header timeout
                sock.sendall(b"X")
                time.sleep(0.1)
        except (BrokenPipeError, ConnectionResetError):
            pass
        answer, _ = until_closed(sock)
    seconds = time.monotonic() - start
    assert error_of(answer) == (408, "read_timeout") and seconds < HEADER_TIMEOUT + SLACK, seconds


def test_blank_lines_forever_do_not_hold_a_connection(served):
    with connect(served) as sock:
        start = time.monotonic()
        try:
            for _ in range(40):
                sock.sendall(b"\r\n")
                time.sleep(0.1)
        except (BrokenPipeError, ConnectionResetError):
            pass
        until_closed(sock)
    assert time.monotonic() - start < HEADER_TIMEOUT + SLACK


def test_a_body_trickled_slowly_gets_408_at_the_read_timeout(served):
    body = json.dumps({"input": "x" * 200}).encode()
    with connect(served) as sock:
        start = time.monotonic()
        sock.sendall(request("POST", "/v1/embeddings", b"", length=len(body)))
        try:
            for byte in body:
                sock.sendall(bytes([byte]))
                time.sleep(0.05)
        except (BrokenPipeError, ConnectionResetError):
            pass
        answer, _ = until_closed(sock)
    seconds = time.monotonic() - start
    assert error_of(answer) == (408, "read_timeout") and READ_TIMEOUT - 0.2 < seconds < READ_TIMEOUT + SLACK


def test_a_content_length_longer_than_the_body_is_408_and_shorter_is_a_client_error(served):
    body = b'{"input": "a lie"}'
    with connect(served) as sock:
        sock.sendall(request("POST", "/v1/embeddings", body, length=len(body) + 50))
        answer, seconds = until_closed(sock)
    assert error_of(answer) == (408, "read_timeout") and seconds < READ_TIMEOUT + SLACK
    with connect(served) as sock:  # the body's tail becomes the next "request", which never completes
        sock.sendall(request("POST", "/v1/embeddings", body, length=8))
        first = hostile.read_answer(sock)
        second = hostile.read_answer(sock)
    assert first.status == 400 and first.json()["error"]["code"] == "invalid_json", first
    assert second.status == 408 and second.json()["error"]["code"] == "read_timeout", second


def held(served, socks: list[socket.socket]) -> int:
    """How many of ``socks``' connections the server still holds open (its ESTABLISHED ends in /proc/net/tcp)."""
    ports = {sock.getsockname()[1] for sock in socks}
    count = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, remote, state = line.split()[1:4]
        count += (int(local.rsplit(":", 1)[1], 16) == served.address[1] and state == "01"
                  and int(remote.rsplit(":", 1)[1], 16) in ports)
    return count


def test_a_client_that_never_reads_its_answer_is_cut_off(served):
    """Clients that asked for 4 MB answers and read none of them held their connections for good."""
    body = json.dumps({"input": [f"text {i}" for i in range(512)], "encoding_format": "float"}).encode()
    socks = []
    try:
        for _ in range(3):
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a small window: the answer waits server-side
            sock.connect(served.address)
            sock.sendall(request("POST", "/v1/embeddings", body))
            socks.append(sock)
        deadline = time.monotonic() + 30
        while held(served, socks) < len(socks):  # accepted
            assert time.monotonic() < deadline, held(served, socks)
            time.sleep(0.05)
        deadline = time.monotonic() + 90  # the answers are computed, then held unread, then cut off
        while held(served, socks) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert held(served, socks) == 0, "the server still holds the non-reading clients' connections"
    finally:
        for sock in socks:
            sock.close()


def test_connections_beyond_the_limit_are_refused_with_json_503_and_the_server_recovers(served):
    """#3: there was no connection limit: silent sockets could take every file descriptor."""
    held = [connect(served) for _ in range(MAX_CONNECTIONS + 8)]
    try:
        time.sleep(0.2)
        extra = connect(served)
        extra.sendall(request("GET", "/health", key=None))
        answer, _ = until_closed(extra)
        extra.close()
        assert error_of(answer) == (503, "too_many_connections"), answer[:300]
        assert b"retry-after" in answer.lower()
        closed = 0
        for sock in held:  # every one is closed by the idle timeout; those over the limit at once
            sock.settimeout(IDLE_TIMEOUT + SLACK)
            data, _ = until_closed(sock)
            closed += data == b"" or data.startswith(b"HTTP/1.1 503")
        assert closed == len(held)
    finally:
        for sock in held:
            sock.close()
    assert served.healthy()
