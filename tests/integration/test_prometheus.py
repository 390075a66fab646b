"""/metrics end to end: a local cluster started with ``--prometheus`` (Debian's real Prometheus).

Each agent's /metrics parses and agrees with /cluster; after the leader node is SIGKILLed, Prometheus
itself shows the higher term and a failover histogram sample.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from local_support import scratch_cluster
from prometheus_client.parser import text_string_to_metric_families

from pgquorum.local.runner import LocalCluster

pytestmark = pytest.mark.integration


def wait_for(predicate: Any, timeout: float, what: str, interval: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def run_cli(*args: str) -> str:
    proc = subprocess.run([sys.executable, "-m", "pgquorum", *args], capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        raise AssertionError(f"pgquorum {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc.stdout


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    with scratch_cluster("pgquorum-prom-", tail=20) as c:
        run_cli("local", "up", "--prometheus", "--data-dir", str(c.data_dir))
        yield c


def status(c: LocalCluster) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(run_cli("local", "status", "--json", "--data-dir", str(c.data_dir)))
    return data


def get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=2) as resp:
        body: bytes = resp.read()
        return body


def scrape(api_url: str) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """name -> {labels without cluster/member -> value}, from one agent's /metrics."""
    with urllib.request.urlopen(api_url + "/metrics", timeout=2) as resp:
        assert resp.headers["Content-Type"].startswith("text/plain")
        text = resp.read().decode()
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            assert s.name.startswith("pgquorum_")
            assert s.labels.get("cluster") == "local"
            extra = tuple(sorted((k, v) for k, v in s.labels.items() if k not in ("cluster", "member")))
            out.setdefault(s.name, {})[extra] = s.value
    return out


def role_and_term(api_url: str) -> tuple[str, int]:
    m = scrape(api_url)
    roles = [dict(labels)["role"] for labels, v in m["pgquorum_role"].items() if v == 1.0]
    assert len(roles) == 1, roles
    return roles[0], int(m["pgquorum_term"][()])


def promql(base: str, query: str) -> list[dict[str, Any]]:
    body = json.loads(get(f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": query})))
    assert body["status"] == "success", body
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def scalar(base: str, query: str) -> float | None:
    result = promql(base, query)
    return float(result[0]["value"][1]) if result else None


def test_metrics_agree_with_cluster_api(cluster: LocalCluster) -> None:
    s = status(cluster)
    assert s["prometheus"] and s["prometheus"].startswith("http://127.0.0.1:")
    members = {m["name"]: m for m in s["members"]}

    def consistent() -> bool:
        view = json.loads(get(s["members"][0]["api_url"] + "/cluster"))
        by_name = {m["name"]: m for m in view["members"]}
        for name, m in members.items():
            role, term = role_and_term(m["api_url"])
            if role != by_name[name]["role"] or term != view["term"]:
                return False
        return True

    wait_for(consistent, 15, "/metrics roles and terms equal to /cluster")
    leader = next(m for m in s["members"] if m["role"] == "leader")
    lm = scrape(leader["api_url"])
    assert lm["pgquorum_is_leader"][()] == 1.0
    assert 0 < lm["pgquorum_lease_seconds_remaining"][()] <= 3.0
    assert lm["pgquorum_postgres_up"][()] == 1.0 and lm["pgquorum_wal_lsn_bytes"][()] > 0
    replica = next(m for m in s["members"] if m["role"] == "replica")
    rm = scrape(replica["api_url"])
    assert rm["pgquorum_is_leader"][()] == 0.0 and rm["pgquorum_lease_seconds_remaining"][()] == 0.0
    assert rm["pgquorum_replication_lag_bytes"][()] >= 0 and rm["pgquorum_received_lsn_bytes"][()] > 0
    assert rm["pgquorum_ha_loop_duration_seconds_count"][()] >= 1

    # Prometheus scrapes every agent and etcd.
    prom = s["prometheus"]

    def all_up() -> bool:
        up = {r["metric"]["job"]: int(r["value"][1]) for r in promql(prom, "sum by (job) (up)")}
        return up == {"pgquorum": 3, "etcd": 1}

    wait_for(all_up, 20, "prometheus scraping 3 agents and etcd", interval=0.5)


def test_failover_shows_in_prometheus(cluster: LocalCluster) -> None:
    before = status(cluster)
    prom = before["prometheus"]
    old_leader, old_term = before["leader"], before["term"]
    wait_for(lambda: scalar(prom, "max(pgquorum_term)") == old_term, 15, "prometheus has the current term")
    assert scalar(prom, "sum(pgquorum_failovers_total)") == 0.0

    cluster.kill_member(old_leader, "node")

    def new_leader() -> dict[str, Any] | None:
        s = status(cluster)
        ok = s["leader"] not in (None, old_leader) and (s["term"] or 0) > old_term
        leader = next((m for m in s["members"] if m["name"] == s["leader"]), None)
        return s if ok and leader is not None and leader["role"] == "leader" else None

    after = wait_for(new_leader, 30, "a new leader")
    new_term = after["term"]
    leader_api = next(m["api_url"] for m in after["members"] if m["name"] == after["leader"])
    direct = scrape(leader_api)
    assert direct["pgquorum_failovers_total"][()] == 1.0
    assert direct["pgquorum_failover_duration_seconds_count"][(("phase", "promotion"),)] == 1.0

    def prometheus_saw_it() -> bool:
        term = scalar(prom, "max(pgquorum_term)")
        samples = scalar(prom, 'sum(pgquorum_failover_duration_seconds_count{phase="promotion"})')
        return term is not None and term >= new_term and samples is not None and samples >= 1

    wait_for(prometheus_saw_it, 30, "the higher term and a failover sample in prometheus", interval=0.5)
    promotion = promql(prom, 'pgquorum_failover_duration_seconds_sum{phase="promotion"} > 0')
    assert [r["metric"]["member"] for r in promotion] == [after["leader"]]


def test_down_stops_prometheus(cluster: LocalCluster) -> None:
    pid = cluster.load().prometheus_pid
    assert pid
    out = run_cli("local", "down", "--data-dir", str(cluster.data_dir))
    assert "prometheus" in out
    stat = Path(f"/proc/{pid}/stat")
    assert not stat.exists() or stat.read_text().rsplit(")", 1)[-1].split()[0] == "Z"  # gone (or a zombie)
    assert status(cluster)["prometheus"] is None
