"""REST API routing, health semantics, auth and validation, on a real ``FakeLoop`` (no sockets)."""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path
from typing import Any

import pytest
from api_fakes import LEADER_LSN, TERM, TOKEN, FakeLoop, FakeMetrics, ReadOnlyLoop, cluster, replica_pg

from pgquorum.agent.api.auth import Authenticator, SecretFile
from pgquorum.agent.api.health import stalled_after
from pgquorum.agent.api.routes import Api, ApiLoop, Request, Response
from pgquorum.agent.ha.control import ControlError
from pgquorum.agent.ha.decide import Memory
from pgquorum.agent.model import PostgresState

PROBES = ("/primary", "/replica", "/read-only", "/health", "/liveness", "/readiness")


def token_auth(tmp_path: Path) -> Authenticator:
    path = tmp_path / "api-token"
    path.write_text(TOKEN + "\n")
    path.chmod(0o600)
    return Authenticator(SecretFile(path, "api.auth_token_file", 16))


@pytest.fixture
def loop() -> FakeLoop:
    return FakeLoop()


@pytest.fixture
def api(loop: FakeLoop, tmp_path: Path) -> Api:
    return Api(loop, token_auth(tmp_path), quick_timeout=2.0, wait_timeout=2.0)


def call(
    api: Api,
    method: str,
    target: str,
    body: Any = None,
    token: str | None = TOKEN,
    authorization: str | None = None,
) -> Response:
    raw = body if isinstance(body, bytes) else (b"" if body is None else json.dumps(body).encode())
    header = authorization if authorization is not None else (f"Bearer {token}" if token else None)
    return api.handle(Request(method, target, header, raw, "127.0.0.1"))


def statuses(api: Api, suffix: str = "") -> dict[str, int]:
    return {p: call(api, "GET", p + suffix).status for p in PROBES}


# -- health routes ----------------------------------------------------------------------------------


def test_leader_with_a_valid_lease(api: Api, loop: FakeLoop) -> None:
    loop.as_leader()
    assert statuses(api) == {
        "/primary": 200,
        "/replica": 503,
        "/read-only": 200,
        "/health": 200,
        "/liveness": 200,
        "/readiness": 200,
    }
    body = call(api, "GET", "/primary").body
    assert body is not None
    # fetch_peer_status (leader races) reads these keys from GET /health
    assert {"postgres_running", "in_recovery", "timeline", "lsn", "nofailover"} <= set(body)
    assert body["role"] == "leader" and body["term"] == TERM and body["lease_valid"] is True
    assert body["check"] == {"route": "/primary", "ok": True, "reason": f"writable leader of term {TERM}"}


def test_leader_past_its_fence_deadline_is_not_primary(api: Api, loop: FakeLoop) -> None:
    loop.as_leader(lease_valid=False)
    resp = call(api, "GET", "/primary")
    assert resp.status == 503 and resp.body is not None
    assert "fence deadline" in resp.body["check"]["reason"]
    assert call(api, "GET", "/readiness").status == 503
    assert call(api, "GET", "/read-only").status == 503  # a primary without a lease serves nothing
    assert call(api, "GET", "/health").status == 200  # postgres still runs (until the guard fences it)


def test_a_stale_leader_memory_with_another_leader_key_is_not_primary(api: Api, loop: FakeLoop) -> None:
    loop.as_leader()
    loop.set_view(loop.view.pg, cluster("pg2"))
    resp = call(api, "GET", "/primary")
    assert resp.status == 503 and resp.body is not None
    assert "leader key in etcd is not ours" in resp.body["check"]["reason"]


def test_leader_without_etcd_stays_primary_only_while_its_lease_is_valid(api: Api, loop: FakeLoop) -> None:
    loop.as_leader()
    loop.set_view(loop.view.pg, None)  # etcd unreachable in the last loop
    assert call(api, "GET", "/primary").status == 200
    loop.guard.valid = False
    assert call(api, "GET", "/primary").status == 503


def test_streaming_replica(api: Api, loop: FakeLoop) -> None:
    loop.as_replica()
    assert statuses(api) == {
        "/primary": 503,
        "/replica": 200,
        "/read-only": 200,
        "/health": 200,
        "/liveness": 200,
        "/readiness": 200,
    }
    body = call(api, "GET", "/replica").body
    assert body is not None and body["role"] == "replica" and body["upstream"] == "pg1"
    assert body["lag"]["bytes"] == 0 and body["lag"]["seconds"] == 0


def test_replica_lag_in_bytes(api: Api, loop: FakeLoop) -> None:
    loop.as_replica(received=LEADER_LSN - 2 * 1024 * 1024)
    assert call(api, "GET", "/replica?lag=1MB").status == 503
    resp = call(api, "GET", "/replica?lag=4MB")
    assert resp.status == 200 and resp.body is not None
    assert resp.body["lag"]["bytes"] == 2 * 1024 * 1024
    assert call(api, "GET", f"/replica?lag={2 * 1024 * 1024}").status == 200
    assert call(api, "GET", "/read-only?lag=16kB").status == 503
    assert call(api, "GET", "/replica").status == 200  # no limit asked
    reason = call(api, "GET", "/replica?lag=1MB").body["check"]["reason"]  # type: ignore[index]
    assert reason == "lag 2097152 bytes is above 1MB"


def test_replica_lag_in_seconds_is_the_age_of_unreplayed_wal(api: Api, loop: FakeLoop) -> None:
    loop.as_replica(received=100, replayed=100)
    loop.set_view(loop.view.pg, cluster("pg1", 100))
    api.observe()
    assert call(api, "GET", "/replica?lag=500ms").status == 200  # caught up: 0 s
    loop.advance(1.0, leader_lsn=200)  # the leader moved on; this replica did not
    api.observe()
    loop.advance(1.0)
    api.observe()
    loop.advance(4.0)
    resp = call(api, "GET", "/replica?lag=10s")
    assert resp.status == 200 and resp.body is not None
    assert resp.body["lag"]["seconds"] == 5.0 and resp.body["lag"]["seconds_is_lower_bound"] is False
    assert call(api, "GET", "/replica?lag=2s").status == 503
    assert call(api, "GET", "/read-only?lag=2s").status == 503
    loop.advance(1.0, pg=replica_pg(received=200, replayed=200))  # caught up again
    assert call(api, "GET", "/replica?lag=500ms").status == 200


def test_idle_leader_means_no_time_lag(api: Api, loop: FakeLoop) -> None:
    loop.as_replica()
    for _ in range(5):
        loop.advance(10.0)
        api.observe()
    resp = call(api, "GET", "/replica?lag=1s")
    assert resp.status == 200 and resp.body is not None and resp.body["lag"]["seconds"] == 0


def test_lag_from_before_the_history_is_a_lower_bound(api: Api, loop: FakeLoop) -> None:
    loop.as_replica(received=100, replayed=100)  # the leader is already at LEADER_LSN when we start
    loop.advance(3.0)
    body = call(api, "GET", "/replica").body
    assert body is not None and body["lag"]["seconds"] == 0.0 and body["lag"]["seconds_is_lower_bound"]


def test_unknown_lag_fails_a_lag_check(api: Api, loop: FakeLoop) -> None:
    loop.as_replica()
    loop.set_view(loop.view.pg, cluster(None))  # no leader: nothing to compare with
    assert call(api, "GET", "/replica?lag=1MB").status == 503
    assert call(api, "GET", "/read-only?lag=10s").status == 503
    assert call(api, "GET", "/read-only").status == 200


def test_standby_not_streaming(api: Api, loop: FakeLoop) -> None:
    loop.as_replica(streaming=False)
    got = statuses(api)
    assert got["/replica"] == 503 and got["/readiness"] == 503
    assert got["/read-only"] == 200 and got["/health"] == 200 and got["/primary"] == 503


def test_postgres_stopped_and_fenced_former_primary(api: Api, loop: FakeLoop) -> None:
    loop.set_view(PostgresState(data_initialized=True, running=False, was_primary=True), cluster("pg2"))
    got = statuses(api)
    assert got == {p: (200 if p == "/liveness" else 503) for p in PROBES}
    body = call(api, "GET", "/health").body
    assert body is not None and body["role"] == "stopped"


def test_demoted_primary_still_running_serves_nothing(api: Api, loop: FakeLoop) -> None:
    loop.set_view(PostgresState(True, True, True, in_recovery=False, timeline=2, wal_lsn=5), cluster("pg2"))
    loop.memory = Memory()
    got = statuses(api)
    assert got["/primary"] == 503 and got["/read-only"] == 503 and got["/readiness"] == 503
    assert got["/health"] == 200
    assert call(api, "GET", "/health").body["role"] == "demoted"  # type: ignore[index]


def test_liveness_fails_when_the_loop_stalls(api: Api, loop: FakeLoop) -> None:
    loop.as_leader()
    bound = stalled_after(loop.cfg.timing)
    assert bound == 1 + 2 * 1 + 3
    loop.clock.now += bound
    assert call(api, "GET", "/liveness").status == 200
    loop.clock.now += 0.1
    resp = call(api, "GET", "/liveness")
    assert resp.status == 503 and resp.body is not None and "stalled" in resp.body["check"]["reason"]
    loop.busy_until = loop.clock.now + 100  # type: ignore[attr-defined]  # a long action with its own timeout
    assert call(api, "GET", "/liveness").status == 200
    loop.advance(0.0)
    assert call(api, "GET", "/liveness").status == 200


def test_probes_answer_head_and_options_with_their_status(api: Api, loop: FakeLoop) -> None:
    loop.as_replica()
    head = call(api, "HEAD", "/primary")
    assert head.status == 503 and head.body is not None  # the server sends headers only
    options = call(api, "OPTIONS", "/replica")
    assert options.status == 200 and options.payload() == b""
    assert ("Allow", "GET, HEAD, OPTIONS") in options.headers
    other = call(api, "OPTIONS", "/switchover")
    assert other.status == 204 and ("Allow", "POST, OPTIONS") in other.headers


def test_trailing_slash_and_query_parameters(api: Api, loop: FakeLoop) -> None:
    loop.as_leader()
    assert call(api, "GET", "/primary/").status == 200
    resp = call(api, "GET", "/primary?verbose=1")
    assert resp.status == 400 and resp.body == {
        "error": "verbose: unknown query parameter on /primary (allowed: none)",
        "field": "verbose",
    }
    bad = call(api, "GET", "/replica?lag=fast")
    assert bad.status == 400 and bad.body is not None and bad.body["field"] == "lag"
    assert "500ms" in bad.body["error"]
    many = "&".join(f"a{i}=1" for i in range(20))
    assert call(api, "GET", f"/replica?{many}").status == 400


# -- cluster, history, config, metrics --------------------------------------------------------------


def test_cluster_route(api: Api, loop: FakeLoop) -> None:
    loop.as_replica()
    resp = call(api, "GET", "/cluster")
    assert resp.status == 200 and resp.body is not None
    assert resp.body["leader"] == "pg1" and resp.body["term"] == TERM and resp.body["initialized"] is True
    assert [m["name"] for m in resp.body["members"]] == ["pg1", "pg2", "pg3"]
    assert set(resp.body["members"][0]) >= {"name", "role", "state", "term", "timeline", "lag_bytes", "api_url"}
    loop.set_view(loop.view.pg, None)
    down = call(api, "GET", "/cluster")
    assert down.status == 503 and down.body is not None and "etcd unreachable" in down.body["error"]


def test_history_and_config(api: Api, loop: FakeLoop) -> None:
    history = call(api, "GET", "/history")
    assert history.status == 200 and history.body is not None
    assert history.body["history"][0]["reason"] == "bootstrap"
    assert set(history.body["history"][0]) >= {"term", "timeline", "new_leader", "old_leader", "at", "durations"}
    config = call(api, "GET", "/config")
    assert config.status == 200 and config.body == {"config": loop.config}
    patched = call(api, "PATCH", "/config", {"maximum_lag_on_failover": 2048})
    assert patched.status == 200 and patched.body is not None
    assert patched.body["config"]["maximum_lag_on_failover"] == 2048
    assert loop.calls[-1] == ("patch_config", {"maximum_lag_on_failover": 2048})
    assert call(api, "PATCH", "/config", {}).status == 400
    assert call(api, "PATCH", "/config", b"").status == 400
    assert call(api, "PATCH", "/config", [1]).body["field"] == "body"  # type: ignore[index]
    assert call(api, "PATCH", "/config", {"x": 1}, token=None).status == 401


def test_config_errors_from_the_loop_keep_their_field(api: Api, loop: FakeLoop) -> None:
    loop.fail = ControlError(400, "ttl: not a dynamic setting", "ttl")
    resp = call(api, "PATCH", "/config", {"ttl": 5})
    assert resp.status == 400 and resp.body == {"error": "ttl: not a dynamic setting", "field": "ttl"}


def test_metrics_route_only_when_the_loop_has_metrics(tmp_path: Path) -> None:
    plain = Api(FakeLoop(), token_auth(tmp_path))
    assert call(plain, "GET", "/metrics").status == 404
    assert "GET /metrics" not in plain.route_list()
    loop = FakeLoop()
    loop.metrics = FakeMetrics()  # type: ignore[attr-defined]
    with_metrics = Api(loop, token_auth(tmp_path))
    resp = call(with_metrics, "GET", "/metrics?name[]=pgquorum_up")
    assert resp.status == 200 and resp.payload().startswith(b"# HELP")
    assert resp.content_type.startswith("text/plain")


# -- routing errors ---------------------------------------------------------------------------------


def test_unknown_route_lists_the_routes(api: Api) -> None:
    resp = call(api, "GET", "/master")
    assert resp.status == 404 and resp.body is not None
    assert resp.body["error"] == "no route /master"
    assert "GET /primary" in resp.body["routes"] and "POST /switchover" in resp.body["routes"]
    assert "PATCH /config" in resp.body["routes"]
    assert call(api, "GET", "/").status == 404  # "/" is Patroni's /primary: never guess


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("POST", "/primary", "GET, HEAD, OPTIONS"),
        ("GET", "/switchover", "POST, OPTIONS"),
        ("DELETE", "/config", "GET, PATCH, HEAD, OPTIONS"),
        ("PUT", "/restart", "POST, OPTIONS"),
    ],
)
def test_wrong_method_is_405_with_allow(api: Api, method: str, path: str, allow: str) -> None:
    resp = call(api, method, path, token=None)
    assert resp.status == 405 and ("Allow", allow) in resp.headers
    assert resp.body is not None and resp.body["allow"] == allow.split(", ")


# -- authentication ---------------------------------------------------------------------------------

MUTATING = [
    ("POST", "/switchover", {}),
    ("POST", "/failover", {"candidate": "pg2"}),
    ("POST", "/restart", {}),
    ("POST", "/reinitialize", {}),
    ("PATCH", "/config", {"maximum_lag_on_failover": 1}),
]


@pytest.mark.parametrize(("method", "path", "body"), MUTATING)
def test_mutating_routes_need_credentials(api: Api, loop: FakeLoop, method: str, path: str, body: Any) -> None:
    missing = call(api, method, path, body, token=None)
    assert missing.status == 401
    assert ("WWW-Authenticate", 'Bearer realm="pgquorum"') in missing.headers
    wrong = call(api, method, path, body, token="not-the-token-at-all")
    assert wrong.status == 403 and wrong.body == {"error": "invalid credentials"}
    basic = call(api, method, path, body, authorization="Basic YWRtaW46eA==")
    assert basic.status == 401
    assert loop.calls == []
    ok = call(api, method, path, body)
    assert ok.status == 200, ok.body
    assert len(loop.calls) == 1


def test_authentication_comes_before_validation(api: Api, loop: FakeLoop) -> None:
    assert call(api, "POST", "/switchover", b"{not json", token=None).status == 401
    assert call(api, "POST", "/switchover", {"bogus": 1}, token="wrong-token-xxxxxxxx").status == 403


def test_without_configured_auth_mutations_are_refused(tmp_path: Path) -> None:
    loop = FakeLoop()
    api = Api(loop, Authenticator())
    for method, path, body in MUTATING:
        resp = call(api, method, path, body)
        assert resp.status == 403 and resp.body is not None
        assert "set api.auth_token_file" in resp.body["error"]
    assert loop.calls == []
    assert call(api, "GET", "/health").status in (200, 503)


# -- operator requests ------------------------------------------------------------------------------


def test_switchover_defaults_and_fields(api: Api, loop: FakeLoop) -> None:
    resp = call(api, "POST", "/switchover", b"")
    assert resp.status == 200
    assert resp.body == {"message": "switchover done", "warning": None, "details": {"leader": "pg2", "term": 5}}
    call(api, "POST", "/switchover", {"candidate": "pg3", "scheduled_at": "2026-11-26T18:00:00Z", "wait": False})
    call(api, "POST", "/switchover", {"candidate": None, "scheduled_at": None})
    assert loop.calls == [
        ("switchover", None, None, True),
        ("switchover", "pg3", 1795716000.0, False),
        ("switchover", None, None, True),
    ]


@pytest.mark.parametrize(
    ("body", "field", "needle"),
    [
        ({"candidate": 3}, "candidate", "candidate: expected a string (a member name) or null (the best replica)"),
        ({"candidate": "PG 2"}, "candidate", "is not a member name"),
        ({"wait": "true"}, "wait", "wait: expected a boolean (true or false), got a string"),
        ({"scheduled_at": "at noon"}, "scheduled_at", "2026-11-26T18:00:00+00:00"),
        ({"scheduled_at": "2026-11-26T18:00:00"}, "scheduled_at", "has no timezone"),
        ({"scheduled_at": 1764180000}, "scheduled_at", "got a number"),
        ({"force": True}, "force", "force: unknown field (allowed: candidate, scheduled_at, wait)"),
        (b"[]", "body", "expected a JSON object"),
        (b'{"candidate": "pg2",}', "body", "not valid JSON"),
    ],
)
def test_switchover_validation(api: Api, loop: FakeLoop, body: Any, field: str, needle: str) -> None:
    resp = call(api, "POST", "/switchover", body)
    assert resp.status == 400 and resp.body is not None
    assert resp.body["field"] == field and needle in resp.body["error"]
    assert loop.calls == []


def test_failover(api: Api, loop: FakeLoop) -> None:
    resp = call(api, "POST", "/failover", {"candidate": "pg2", "wait": False})
    assert resp.status == 200 and resp.body is not None and resp.body["warning"] == "pg2 is 10 bytes behind pg3"
    assert loop.calls[-1] == ("failover", "pg2", False)
    missing = call(api, "POST", "/failover", {})
    assert missing.status == 400 and missing.body is not None and missing.body["field"] == "candidate"
    assert "required" in missing.body["error"]
    assert call(api, "POST", "/failover", {"candidate": None}).body["field"] == "candidate"  # type: ignore[index]


def test_restart_and_reinitialize_take_no_fields(api: Api, loop: FakeLoop) -> None:
    assert call(api, "POST", "/restart", b"").status == 200
    assert call(api, "POST", "/reinitialize", {}).status == 200
    assert [c[0] for c in loop.calls] == ["restart", "reinitialize"]
    resp = call(api, "POST", "/restart", {"force": True})
    assert resp.status == 400 and resp.body is not None and resp.body["field"] == "force"


def test_control_errors_keep_status_message_and_field(api: Api, loop: FakeLoop) -> None:
    loop.fail = ControlError(409, "pg9 is not a member", "candidate")
    resp = call(api, "POST", "/failover", {"candidate": "pg9"})
    assert resp.status == 409 and resp.body == {"error": "pg9 is not a member", "field": "candidate"}
    loop.fail = ControlError(503, "etcd unreachable from pg1: timeout; try another member")
    assert call(api, "POST", "/switchover", {}).status == 503
    loop.fail = ControlError(200, "a bogus status")
    assert call(api, "POST", "/switchover", {}).status == 500


def test_unexpected_errors_are_500_without_a_traceback(
    api: Api, loop: FakeLoop, caplog: pytest.LogCaptureFixture
) -> None:
    loop.fail = RuntimeError("secret internal detail")
    with caplog.at_level(logging.DEBUG, logger="pgquorum.api"):
        resp = call(api, "POST", "/restart", {})
    assert resp.status == 500 and resp.body is not None
    text = resp.payload().decode()
    assert "Traceback" not in text and "secret internal detail" not in text
    assert resp.body["request_id"]
    failed = [r for r in caplog.records if getattr(r, "event", None) == "api_error"]
    assert failed and failed[0].exc_info is not None


def test_slow_control_calls_answer_504_and_are_bounded(tmp_path: Path) -> None:
    loop = FakeLoop()
    api = Api(loop, token_auth(tmp_path), quick_timeout=0.2, wait_timeout=0.3, max_control_calls=2)
    loop.block = threading.Event()
    try:
        resp = call(api, "POST", "/restart", {})
        assert resp.status == 504 and resp.body is not None and "may still complete" in resp.body["error"]
        assert call(api, "GET", "/history").status == 504
        busy = call(api, "POST", "/switchover", {})  # both slots still held by the hung calls
        assert busy.status == 503 and "too many operator requests" in busy.body["error"]  # type: ignore[index]
        assert call(api, "GET", "/health").status in (200, 503)  # probes never wait
    finally:
        loop.block.set()
    threading.Event().wait(0.2)
    loop.block = None
    assert call(api, "POST", "/restart", {}).status == 200


def test_a_loop_without_control_serves_read_only_routes(tmp_path: Path) -> None:
    loop: ApiLoop = ReadOnlyLoop()
    api = Api(loop, token_auth(tmp_path))
    assert call(api, "GET", "/primary").status == 200
    assert call(api, "GET", "/history").status == 501
    resp = call(api, "POST", "/switchover", {})
    assert resp.status == 501 and resp.body is not None and "not implemented" in resp.body["error"]


def test_secrets_and_bodies_never_reach_the_log(api: Api, loop: FakeLoop, caplog: pytest.LogCaptureFixture) -> None:
    loop.as_leader()
    with caplog.at_level(logging.DEBUG):
        call(api, "POST", "/switchover", {"candidate": "pg2"})
        call(api, "POST", "/switchover", {"candidate": "pg2"}, token=TOKEN + "x")
        call(api, "PATCH", "/config", {"maximum_lag_on_failover": 777_777})
        call(api, "GET", "/primary")
    records = [r for r in caplog.records if getattr(r, "event", None) == "api_request"]
    assert len(records) == 4
    assert {r.levelno for r in records[:3]} == {logging.INFO} and records[3].levelno == logging.DEBUG
    assert records[0].principal == "token"  # type: ignore[attr-defined]
    dump = " ".join(str(r.__dict__) for r in caplog.records)
    assert TOKEN not in dump and "777777" not in dump and "Bearer" not in dump


def test_cluster_body_shows_only_the_key_holder_as_leader() -> None:
    from dataclasses import replace

    from pgquorum.agent.api.health import cluster_body
    from pgquorum.agent.model import LeaderInfo

    moved = replace(cluster(), leader=LeaderInfo("pg2", 6, 100))  # pg1's member key still says leader
    roles = {m["name"]: m["role"] for m in cluster_body(moved)["members"]}
    assert roles == {"pg1": "demoted", "pg2": "replica", "pg3": "replica"}
