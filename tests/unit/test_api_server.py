"""The HTTP layer of the REST API on a real loopback socket: framing, limits, headers, JSON errors."""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from api_fakes import TOKEN, FakeLoop

from pgquorum.agent.api.server import ApiServer, parse_listen
from pgquorum.agent.api.validate import MAX_BODY
from pgquorum.agent.config import ApiSettings, ConfigError


@pytest.fixture
def loop(tmp_path: Path) -> FakeLoop:
    token = tmp_path / "api-token"
    token.write_text(TOKEN + "\n")
    token.chmod(0o600)
    return FakeLoop(api=ApiSettings(auth_token_file=token)).as_leader()


@pytest.fixture
def server(loop: FakeLoop) -> Iterator[ApiServer]:
    srv = ApiServer(loop, "127.0.0.1:0", max_connections=4)
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


def request(
    srv: ApiServer, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=5)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def raw_exchange(srv: ApiServer, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", srv.port), timeout=5) as sock:
        sock.sendall(data)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


AUTH = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}


def test_health_over_http(server: ApiServer) -> None:
    status, headers, body = request(server, "GET", "/primary")
    assert status == 200
    assert headers["content-type"] == "application/json" and headers["cache-control"] == "no-store"
    assert int(headers["content-length"]) == len(body)
    assert json.loads(body)["role"] == "leader"
    status, headers, body = request(server, "HEAD", "/replica")
    assert status == 503 and body == b"" and int(headers["content-length"]) > 0
    status, headers, body = request(server, "OPTIONS", "/primary")
    assert status == 200 and body == b"" and headers["allow"] == "GET, HEAD, OPTIONS"


def test_mutating_request_with_token(server: ApiServer, loop: FakeLoop) -> None:
    status, _, body = request(server, "POST", "/switchover", json.dumps({"candidate": "pg2"}).encode(), AUTH)
    assert status == 200 and json.loads(body)["message"] == "switchover done"
    assert loop.calls == [("switchover", "pg2", None, True)]
    status, headers, body = request(server, "POST", "/restart", b"{}")
    assert status == 401 and headers["www-authenticate"] == 'Bearer realm="pgquorum"'
    assert json.loads(body)["error"].startswith("authentication required")
    status, _, _ = request(server, "POST", "/restart")  # no body at all is {} (once authenticated)
    assert status == 401
    assert request(server, "POST", "/restart", None, {"Authorization": f"Bearer {TOKEN}"})[0] == 200


def test_body_limits(server: ApiServer) -> None:
    big = b'{"candidate": "' + b"x" * MAX_BODY + b'"}'
    status, _, body = request(server, "POST", "/switchover", big, AUTH)
    assert status == 413 and json.loads(body)["field"] == "body"
    status, _, body = request(server, "PATCH", "/config", b'{"a": ', AUTH)
    assert status == 400 and "not valid JSON" in json.loads(body)["error"]


def test_chunked_and_bad_content_length(server: ApiServer) -> None:
    reply = raw_exchange(
        server,
        b"POST /restart HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
    )
    assert reply.startswith(b"HTTP/1.0 411")
    reply = raw_exchange(server, b"POST /restart HTTP/1.1\r\nHost: x\r\nContent-Length: ten\r\n\r\n")
    assert reply.startswith(b"HTTP/1.0 400") and b'"field": "Content-Length"' in reply


def test_malformed_http_gets_a_json_error_without_echo(server: ApiServer) -> None:
    reply = raw_exchange(server, b"GARBAGE /x?token=abc HTTP/1.1 extra\r\n\r\n")
    assert reply.startswith(b"HTTP/1.0 400")
    assert b"application/json" in reply and b"token=abc" not in reply and b"<html" not in reply.lower()
    reply = raw_exchange(server, b"TRACE /primary HTTP/1.1\r\nHost: x\r\n\r\n")
    assert reply.startswith(b"HTTP/1.0 501") and b'"error"' in reply


def test_slow_clients_do_not_hold_the_server(server: ApiServer) -> None:
    idle = [socket.create_connection(("127.0.0.1", server.port), timeout=5) for _ in range(6)]
    try:
        time.sleep(0.2)
        # The connection cap (4 here) answers 503 at once instead of queueing behind idle sockets.
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as extra:
            extra.sendall(b"GET /health HTTP/1.0\r\n\r\n")
            assert extra.recv(100).startswith(b"HTTP/1.0 503")
    finally:
        for s in idle:
            s.close()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:  # slots free again once the idle connections are gone
        try:
            if request(server, "GET", "/health")[0] == 200:
                break
        except OSError:
            pass
        time.sleep(0.05)
    else:
        raise AssertionError("server did not recover after idle connections closed")


def test_probes_stay_fast_while_an_operator_request_hangs(server: ApiServer, loop: FakeLoop) -> None:
    loop.block = threading.Event()
    result: dict[str, Any] = {}
    worker = threading.Thread(
        target=lambda: result.update(r=request(server, "POST", "/restart", b"{}", AUTH)), daemon=True
    )
    worker.start()
    try:
        time.sleep(0.1)
        started = time.monotonic()
        assert request(server, "GET", "/primary")[0] == 200
        assert time.monotonic() - started < 0.5
    finally:
        loop.block.set()
    worker.join(5)
    assert result["r"][0] == 200


def test_listen_addresses() -> None:
    assert parse_listen("127.0.0.1:8008") == ("127.0.0.1", 8008, socket.AF_INET)
    assert parse_listen("[::1]:8008") == ("::1", 8008, socket.AF_INET6)
    with pytest.raises(ConfigError, match="api_listen"):
        parse_listen("8008")


def test_port_in_use_is_a_clear_error(server: ApiServer, loop: FakeLoop) -> None:
    with pytest.raises(ConfigError, match=r"api_listen: cannot listen on 127.0.0.1:\d+"):
        ApiServer(loop, f"127.0.0.1:{server.port}")


def test_unreadable_token_file_stops_the_agent_at_start(tmp_path: Path) -> None:
    loop = FakeLoop(api=ApiSettings(auth_token_file=tmp_path / "nope"))
    with pytest.raises(ConfigError, match=r"api\.auth_token_file: cannot read"):
        ApiServer(loop, "127.0.0.1:0")


def test_stop_without_start() -> None:
    ApiServer(FakeLoop(), "127.0.0.1:0").stop()
