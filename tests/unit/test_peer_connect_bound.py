"""Peer calls give up on a peer that does not accept the connection long before the request's
timeout (a deleted pod's address drops SYNs), and still wait that long for a slow answer."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from pgquorum.agent.quorum.peers import CONNECT_TIMEOUT, UNREACHABLE, post_json


@pytest.fixture
def full_listener() -> Iterator[int]:
    """A port whose accept queue is full: the kernel drops further SYNs, as for a vanished host."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(0)
    port = srv.getsockname()[1]
    fillers = []
    for _ in range(4):
        c = socket.socket()
        c.setblocking(False)
        c.connect_ex(("127.0.0.1", port))
        fillers.append(c)
    time.sleep(0.2)
    yield port
    for c in fillers:
        c.close()
    srv.close()


def test_a_peer_that_never_accepts_is_given_up_after_the_connect_bound(full_listener: int) -> None:
    started = time.monotonic()
    status, reason = post_json(f"http://127.0.0.1:{full_listener}/vote", {}, None, timeout=10.0)
    took = time.monotonic() - started
    assert status == UNREACHABLE, reason
    assert took < 10.0 / 2, took  # not the request's 10 s: the connect bound (plus scheduling)
    assert took >= CONNECT_TIMEOUT * 0.9, took


def test_a_slow_answer_still_gets_the_whole_request_timeout() -> None:
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(4)
    port = srv.getsockname()[1]

    def answer_late() -> None:
        conn, _ = srv.accept()
        conn.settimeout(5)
        seen = b""
        while b"\r\n\r\n" not in seen:
            seen += conn.recv(65536)
        time.sleep(CONNECT_TIMEOUT * 3)  # longer than the connect bound, shorter than the timeout
        conn.sendall(b'HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n{"vote": null}')
        conn.shutdown(socket.SHUT_WR)
        # read what is left of the request before closing: closing with unread data sends a reset
        with contextlib.suppress(OSError):
            while conn.recv(65536):
                pass
        conn.close()

    t = threading.Thread(target=answer_late, daemon=True)
    t.start()
    status, body = post_json(f"http://127.0.0.1:{port}/vote", {}, None, timeout=5.0)
    t.join(5)
    srv.close()
    assert status == 200 and body == {"vote": None}
