"""The webhook hook against a real HTTP server on 127.0.0.1 that checks the token and the HMAC like a receiver would."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from stonith_servers import RecordingServer, Reply, Responder, Seen, self_signed, tls_context

from pgquorum.agent.clock import SystemClock
from pgquorum.agent.logs import KeyValueFormatter
from pgquorum.agent.stonith import FenceRequest, Outcome, parse_hooks, run_hooks, verify_signature
from pgquorum.agent.stonith.model import HookResult

REQ = FenceRequest("main", "pg-a", "pg-b", 7)
TOKEN = "tok-7f3a9c1e5b2d4a6f8e0c"
KEY = b"hmac-key-0b1c2d3e4f5a6b7c"


@pytest.fixture
def secrets(tmp_path: Path) -> tuple[Path, Path]:
    token, key = tmp_path / "token", tmp_path / "key"
    token.write_text(TOKEN + "\n")
    key.write_bytes(KEY + b"\n")
    token.chmod(0o600)
    key.chmod(0o600)
    return token, key


def receiver(status: int = 204) -> Responder:
    """A fencing service that accepts only a correct token and signature."""

    def respond(req: Seen) -> Reply:
        if req.headers.get("authorization") != f"Bearer {TOKEN}":
            return Reply(401, {"error": "bad token"})
        if not verify_signature(KEY, req.body, req.headers.get("x-pgquorum-signature")):
            return Reply(403, {"error": "bad signature"})
        return Reply(status, b"")

    return respond


@pytest.fixture
def server() -> Iterator[RecordingServer]:
    srv = RecordingServer(receiver())
    yield srv
    srv.close()


def run_one(raw: dict[str, object]) -> HookResult:
    (result,) = run_hooks(parse_hooks([raw]), REQ, SystemClock()).results
    return result


def test_signed_and_authenticated_post_is_fenced(server: RecordingServer, secrets: tuple[Path, Path]) -> None:
    token, key = secrets
    url = server.url + "/fence"
    result = run_one({"type": "webhook", "url": url, "token_file": str(token), "hmac_key_file": str(key)})
    assert result.outcome is Outcome.OK, result.message
    assert result.message == f"POST {url} -> 204"
    (seen,) = server.seen
    assert (seen.method, seen.path) == ("POST", "/fence")
    assert seen.json() == {"cluster": "main", "old_leader": "pg-a", "new_leader": "pg-b", "term": 7}
    assert seen.headers["content-type"] == "application/json"
    assert seen.headers["x-pgquorum-term"] == "7"
    # What a receiver in another language computes: HMAC-SHA256 over the raw body bytes, hex.
    expected = "sha256=" + hmac.new(KEY, seen.body, hashlib.sha256).hexdigest()
    assert seen.headers["x-pgquorum-signature"] == expected
    assert seen.body == json.dumps(seen.json(), sort_keys=True, separators=(",", ":")).encode()


def test_a_wrong_key_is_refused_by_the_receiver(
    server: RecordingServer, secrets: tuple[Path, Path], tmp_path: Path
) -> None:
    token, _ = secrets
    wrong = tmp_path / "wrong"
    wrong.write_text("another-key-entirely\n")
    result = run_one({"type": "webhook", "url": server.url, "token_file": str(token), "hmac_key_file": str(wrong)})
    assert result.outcome is Outcome.FAILED
    assert "-> 403" in result.message and "bad signature" in result.message


def test_no_token_gets_401(server: RecordingServer) -> None:
    result = run_one({"type": "webhook", "url": server.url})
    assert result.outcome is Outcome.FAILED and "-> 401" in result.message
    assert "authorization" not in server.seen[0].headers


def test_server_error_fails(secrets: tuple[Path, Path]) -> None:
    token, key = secrets
    srv = RecordingServer(lambda req: Reply(500, b"fencing backend down"))
    try:
        result = run_one({"type": "webhook", "url": srv.url, "token_file": str(token), "hmac_key_file": str(key)})
    finally:
        srv.close()
    assert result.outcome is Outcome.FAILED
    assert result.message == f"POST {srv.url} -> 500: fencing backend down"


def test_slow_server_times_out_within_the_timeout() -> None:
    srv = RecordingServer(lambda req: Reply(200, b"", delay=5))
    try:
        started = time.monotonic()
        result = run_one({"type": "webhook", "url": srv.url, "timeout": 0.5})
        elapsed = time.monotonic() - started
    finally:
        srv.close()
    assert result.outcome is Outcome.TIMEOUT
    assert "no response within 0.5s" in result.message
    assert elapsed < 1.5


def test_a_server_trickling_bytes_cannot_stretch_the_timeout() -> None:
    # Each byte arrives well within the socket timeout; only the overall deadline stops it.
    srv = RecordingServer(lambda req: Reply(200, b"", drip=0.2))
    try:
        started = time.monotonic()
        result = run_one({"type": "webhook", "url": srv.url, "timeout": 0.6})
        elapsed = time.monotonic() - started
    finally:
        srv.close()
    assert result.outcome is Outcome.TIMEOUT
    assert elapsed < 1.5


def test_connection_refused_and_unreadable_secret_fail(tmp_path: Path) -> None:
    srv = RecordingServer(receiver())
    url = srv.url
    srv.close()
    result = run_one({"type": "webhook", "url": url, "timeout": 1})
    assert result.outcome is Outcome.FAILED and "Connection refused" in result.message
    result = run_one({"type": "webhook", "url": url, "token_file": str(tmp_path / "absent")})
    assert result.outcome is Outcome.FAILED
    assert result.message.startswith(f"stonith[0].token_file: cannot read {tmp_path / 'absent'}")


def test_https_with_a_private_ca(secrets: tuple[Path, Path], tmp_path: Path) -> None:
    token, key = secrets
    cert, pkey = self_signed(tmp_path)
    srv = RecordingServer(receiver(), tls=tls_context(cert, pkey))
    try:
        good = run_one(
            {
                "type": "webhook",
                "url": srv.url,
                "token_file": str(token),
                "hmac_key_file": str(key),
                "ca_file": str(cert),
            }
        )
        untrusted = run_one({"type": "webhook", "url": srv.url, "token_file": str(token), "timeout": 2})
    finally:
        srv.close()
    assert good.outcome is Outcome.OK, good.message
    assert untrusted.outcome is Outcome.FAILED and "TLS error" in untrusted.message


def test_secrets_never_reach_the_log_or_the_result(
    secrets: tuple[Path, Path], caplog: pytest.LogCaptureFixture
) -> None:
    token, key = secrets
    # A careless server that echoes the request's Authorization header in its error page, after
    # enough text that cutting the page to a short snippet would fall inside the token.
    padding = "p" * 180
    srv = RecordingServer(lambda req: Reply(502, f"{padding} you sent {req.headers['authorization']}".encode()))
    caplog.set_level(logging.DEBUG, logger="pgquorum.stonith")
    try:
        outcome = run_hooks(
            parse_hooks([{"type": "webhook", "url": srv.url, "token_file": str(token), "hmac_key_file": str(key)}]),
            REQ,
            SystemClock(),
        )
    finally:
        srv.close()
    assert srv.seen[0].headers["authorization"] == f"Bearer {TOKEN}"  # it was sent...
    formatter = KeyValueFormatter("pg-b")
    text = "\n".join(formatter.format(r) for r in caplog.records) + json.dumps(outcome.as_dict())
    assert "-> 502" in text
    assert TOKEN[:6] not in text and KEY.decode() not in text  # ...and never logged nor reported, not even a prefix
    assert "***" in outcome.results[0].message
