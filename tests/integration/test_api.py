"""The REST API end to end: a real local cluster (etcd + 3 PostgreSQL members) started by ``pgquorum local``.

Health routes on the primary and the replicas, authentication and validation of the mutating
routes, a switchover through the API under a write load (zero lost acknowledged writes, the former
leader streams from the new one) and a fenced former primary (etcd paused) answering 503 on
``/primary`` without its probes slowing down. The tests share one cluster and run in file order.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import psycopg
import pytest
from local_support import scratch_cluster

from pgquorum.local.runner import LocalCluster
from pgquorum.local.workload import Writer

pytestmark = pytest.mark.integration

TTL = 3.0  # the local cluster's default timing
PROBE_BUDGET = 0.5  # seconds: a health probe never waits on etcd or postgres


def run_cli(*args: str) -> str:
    proc = subprocess.run([sys.executable, "-m", "pgquorum", *args], capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        raise AssertionError(f"pgquorum {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc.stdout


def wait_for(predicate: Any, timeout: float, what: str, interval: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    with scratch_cluster("pgquorum-api-") as c:
        run_cli("local", "up", "--data-dir", str(c.data_dir))
        yield c


@pytest.fixture(scope="module")
def token(cluster: LocalCluster) -> str:
    path = cluster.data_dir / "secrets" / "api-token"
    assert path.stat().st_mode & 0o777 == 0o600
    return path.read_text().strip()


def status(c: LocalCluster) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(run_cli("local", "status", "--json", "--data-dir", str(c.data_dir)))
    return data


def healthy(c: LocalCluster) -> dict[str, Any] | None:
    s = status(c)
    roles = sorted(m["role"] for m in s["members"])
    return s if roles == ["leader", "replica", "replica"] else None


def api(
    url: str,
    method: str,
    path: str,
    body: Any = None,
    headers: dict[str, str] | None = None,
    timeout: float = 5.0,
) -> tuple[int, dict[str, str], Any]:
    """One request; returns (status, lower-cased headers, decoded JSON or None)."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=timeout)
    raw = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    try:
        conn.request(method, path, body=raw, headers=headers or {})
        resp = conn.getresponse()
        data = resp.read()
        got = {k.lower(): v for k, v in resp.getheaders()}
    finally:
        conn.close()
    try:
        decoded = json.loads(data) if data else None
    except ValueError:
        decoded = data
    return resp.status, got, decoded


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}


def probe(url: str, path: str) -> int:
    started = time.monotonic()
    code = api(url, "GET", path, timeout=PROBE_BUDGET * 4)[0]
    took = time.monotonic() - started
    assert took < PROBE_BUDGET, f"GET {path} at {url} took {took:.3f}s"
    return code


def member_dsn(c: LocalCluster, port: int) -> str:
    return (
        f"host=127.0.0.1 port={port} user=postgres dbname=postgres connect_timeout=2 "
        f"passfile={c.data_dir / 'secrets' / 'pgpass'}"
    )


# -- health routes --------------------------------------------------------------------------------


def test_health_routes_on_the_primary_and_the_replicas(cluster: LocalCluster) -> None:
    s = wait_for(lambda: healthy(cluster), 60, "healthy cluster")
    leader = next(m for m in s["members"] if m["role"] == "leader")
    replicas = [m for m in s["members"] if m["role"] == "replica"]
    expect_leader = {
        "/primary": 200,
        "/replica": 503,
        "/replica?lag=1MB": 503,
        "/read-only": 200,
        "/health": 200,
        "/liveness": 200,
        "/readiness": 200,
    }
    assert {p: probe(leader["api_url"], p) for p in expect_leader} == expect_leader
    # Replicas settle into streaming within a loop; a lag limit in bytes and in time both pass.
    expect_replica = {
        "/primary": 503,
        "/replica": 200,
        "/replica?lag=1MB": 200,
        "/replica?lag=16kB": 200,
        "/replica?lag=10s": 200,
        "/read-only": 200,
        "/read-only?lag=10s": 200,
        "/health": 200,
        "/liveness": 200,
        "/readiness": 200,
    }
    for r in replicas:
        got = wait_for(
            lambda r=r: (g := {p: probe(r["api_url"], p) for p in expect_replica}) == expect_replica and g,
            10,
            f"replica probes on {r['name']}",
        )
        assert got == expect_replica
    code, _, body = api(replicas[0]["api_url"], "GET", "/replica")
    assert code == 200 and body["role"] == "replica" and body["upstream"] == leader["name"] and body["streaming"]
    assert body["lag"]["bytes"] is not None and body["lag"]["bytes"] < 1024 * 1024
    code, _, body = api(leader["api_url"], "GET", "/primary")
    assert body["lease_valid"] is True and body["term"] == s["term"]
    # Load-balancer style checks: status only.
    code, headers, body = api(leader["api_url"], "OPTIONS", "/primary")
    assert code == 200 and body is None and headers["allow"] == "GET, HEAD, OPTIONS"
    assert api(replicas[0]["api_url"], "HEAD", "/primary")[0] == 503


def test_cluster_history_and_config(cluster: LocalCluster) -> None:
    s = wait_for(lambda: healthy(cluster), 60, "healthy cluster")
    url = s["members"][1]["api_url"]
    code, _, body = api(url, "GET", "/cluster")
    assert code == 200 and body["leader"] == s["leader"] and len(body["members"]) == 3
    code, _, body = api(url, "GET", "/history")
    assert code == 200 and body["history"][0]["reason"] == "bootstrap"
    code, _, body = api(url, "GET", "/config")
    assert code == 200 and set(body["config"]) >= {"maximum_lag_on_failover"}
    code, headers, _ = api(url, "GET", "/metrics")
    assert code == 200 and headers["content-type"].startswith("text/plain")


# -- authentication and validation ------------------------------------------------------------------

MUTATIONS = [
    ("POST", "/switchover", {"candidate": None}),
    ("POST", "/failover", {"candidate": "pg2"}),
    ("POST", "/restart", {}),
    ("POST", "/reinitialize", {}),
    ("PATCH", "/config", {"maximum_lag_on_failover": 1}),
]


def test_unauthenticated_mutations_are_refused(cluster: LocalCluster, token: str) -> None:
    before = wait_for(lambda: healthy(cluster), 60, "healthy cluster")
    for m in before["members"]:
        for method, path, body in MUTATIONS:
            code, headers, answer = api(m["api_url"], method, path, body)
            assert code == 401, (m["name"], path, answer)
            assert headers["www-authenticate"] == 'Bearer realm="pgquorum"'
            code, _, answer = api(m["api_url"], method, path, body, bearer("x" * len(token)))
            assert code == 403 and answer == {"error": "invalid credentials"}
            code, _, _ = api(m["api_url"], method, path, body, {"Authorization": "Basic YWRtaW46YWRtaW4="})
            assert code == 401
            assert token not in json.dumps(answer)
    time.sleep(1.5)
    after = wait_for(lambda: healthy(cluster), 30, "healthy cluster")
    assert (after["leader"], after["term"]) == (before["leader"], before["term"]), "a refused request acted"
    code, _, body = api(after["members"][0]["api_url"], "GET", "/config")
    assert body["config"]["maximum_lag_on_failover"] != 1
    for log in cluster.data_dir.glob("*/agent.log"):
        assert token not in log.read_text(errors="replace")


@pytest.mark.parametrize(
    ("method", "path", "body", "field", "needle"),
    [
        ("POST", "/switchover", b"{not json", "body", "not valid JSON"),
        ("POST", "/switchover", b"[1]", "body", "expected a JSON object"),
        ("POST", "/switchover", {"candidat": "pg2"}, "candidat", "unknown field"),
        ("POST", "/switchover", {"wait": "yes"}, "wait", "expected a boolean"),
        ("POST", "/switchover", {"candidate": 2}, "candidate", "expected a string"),
        ("POST", "/switchover", {"scheduled_at": "tomorrow"}, "scheduled_at", "2026-11-26T18:00:00+00:00"),
        ("POST", "/switchover", {"scheduled_at": "2030-01-01T00:00:00"}, "scheduled_at", "no timezone"),
        ("POST", "/failover", {}, "candidate", "required"),
        ("POST", "/failover", {"candidate": "pg9"}, "candidate", "pg9"),
        ("POST", "/restart", {"force": True}, "force", "unknown field"),
        ("PATCH", "/config", {"ttl": 5}, "ttl", "not a dynamic setting"),
        ("PATCH", "/config", b"", "body", "expected a JSON object"),
    ],
)
def test_malformed_requests_get_400_naming_the_field(
    cluster: LocalCluster, token: str, method: str, path: str, body: Any, field: str, needle: str
) -> None:
    url = cluster.load().members[0].api_url
    code, _, answer = api(url, method, path, body, bearer(token))
    assert code == 400, answer
    assert answer["field"] == field and needle in answer["error"]
    assert "Traceback" not in json.dumps(answer)


def test_routing_errors(cluster: LocalCluster) -> None:
    url = cluster.load().members[0].api_url
    code, _, body = api(url, "GET", "/replica?lag=soon")
    assert code == 400 and body["field"] == "lag"
    code, _, body = api(url, "GET", "/master")
    assert code == 404 and "GET /primary" in body["routes"] and "POST /switchover" in body["routes"]
    code, headers, _ = api(url, "GET", "/switchover")
    assert code == 405 and headers["allow"] == "POST, OPTIONS"
    code, headers, _ = api(url, "POST", "/primary")
    assert code == 405 and headers["allow"] == "GET, HEAD, OPTIONS"
    code, _, body = api(url, "POST", "/restart", b"x" * (64 * 1024 + 1), {"Authorization": "Bearer x"})
    assert code == 413 and body["field"] == "body"


# -- switchover through the API ---------------------------------------------------------------------


def test_switchover_via_the_api_loses_no_acknowledged_write(cluster: LocalCluster, token: str) -> None:
    s = wait_for(lambda: healthy(cluster), 60, "healthy cluster")
    old = next(m for m in s["members"] if m["role"] == "leader")
    candidate, bystander = (m for m in s["members"] if m["role"] == "replica")
    writer = Writer(s["dsn"], interval=0.01)
    writer.prepare()
    writer.start()
    try:
        time.sleep(1.0)
        started = time.monotonic()
        # Any member accepts the request; ask the bystander for a handover to the candidate.
        code, _, body = api(
            bystander["api_url"], "POST", "/switchover", {"candidate": candidate["name"]}, bearer(token), timeout=120
        )
        assert code == 200, body
        assert body["details"]["leader"] == candidate["name"] and body["warning"] is None
        wait_for(lambda: probe(candidate["api_url"], "/primary") == 200, 10, "candidate answering /primary")
        time.sleep(1.0)  # writes continue on the new leader
    finally:
        writer.stop()
    after = wait_for(lambda: healthy(cluster), 60, "healthy cluster after the switchover")
    assert after["leader"] == candidate["name"] and after["term"] > s["term"]
    acked = writer.acked()
    assert len(acked) > 100
    assert writer.missing(after["dsn"]) == [], "acknowledged writes lost in the switchover"
    assert any(a.sent > started + 1.0 and a.server_port == candidate["pg_port"] for a in acked)
    print(f"switchover through the API: longest write gap {writer.max_gap(after=started):.3f}s")

    # The former leader streams from the new one, and its probes say so.
    wait_for(lambda: probe(old["api_url"], "/replica") == 200, 30, "former leader streaming")
    assert probe(old["api_url"], "/primary") == 503
    code, _, body = api(old["api_url"], "GET", "/replica")
    assert body["upstream"] == candidate["name"] and body["streaming"] is True
    with psycopg.connect(member_dsn(cluster, candidate["pg_port"]), autocommit=True) as conn:
        rows = conn.execute("SELECT application_name, state FROM pg_stat_replication").fetchall()
    assert (old["name"], "streaming") in rows
    code, _, body = api(old["api_url"], "GET", "/history")
    last = body["history"][-1]
    assert (last["new_leader"], last["old_leader"], last["reason"]) == (candidate["name"], old["name"], "switchover")


def test_switchover_to_the_leader_itself_is_refused(cluster: LocalCluster, token: str) -> None:
    s = wait_for(lambda: healthy(cluster), 60, "healthy cluster")
    code, _, body = api(s["members"][0]["api_url"], "POST", "/switchover", {"candidate": s["leader"]}, bearer(token))
    assert 400 <= code < 500 and body["field"] == "candidate", body
    assert healthy(cluster) is not None and status(cluster)["leader"] == s["leader"]


# -- a fenced former primary ------------------------------------------------------------------------


def test_a_fenced_primary_answers_503_on_primary(cluster: LocalCluster) -> None:
    """etcd and the other voters gone (their agents paused): with quorum votes the primary has neither
    a lease nor a majority of promises, so it fences (with its voters it would serve on)."""
    s = wait_for(lambda: healthy(cluster), 60, "healthy cluster")
    state = cluster.load()
    leader = next(m for m in s["members"] if m["role"] == "leader")
    voters = [m["agent_pid"] for m in s["members"] if m["role"] != "leader"]
    assert probe(leader["api_url"], "/primary") == 200
    paused = [state.etcd_pid or 0, *voters]
    for pid in paused:
        os.kill(pid, signal.SIGSTOP)
    stopped_at = time.monotonic()
    first_503 = None
    health_503 = None
    try:
        while time.monotonic() - stopped_at < TTL + 1.5:
            code = probe(leader["api_url"], "/primary")  # asserts each probe answers fast
            now = time.monotonic() - stopped_at
            if code == 503 and first_503 is None:
                first_503 = now
            if first_503 is not None:
                assert code == 503, f"/primary answered 200 again at {now:.2f}s after fencing"
            if health_503 is None and probe(leader["api_url"], "/health") == 503:
                health_503 = now
            time.sleep(0.05)
    finally:
        for pid in paused:
            os.kill(pid, signal.SIGCONT)
    assert first_503 is not None and first_503 < TTL, f"/primary still 200 {first_503}s after etcd stopped"
    assert health_503 is not None, "the fenced primary's postgres kept running"
    print(f"/primary turned 503 {first_503:.2f}s and /health {health_503:.2f}s after etcd stopped (ttl {TTL}s)")
    after = wait_for(lambda: healthy(cluster), 120, "cluster healthy after etcd returns")
    primaries = [m["name"] for m in after["members"] if probe(m["api_url"], "/primary") == 200]
    assert primaries == [after["leader"]]
