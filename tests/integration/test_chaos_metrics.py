"""chaos/prometheus.py against Debian's real Prometheus, without the namespace test bed: three
stand-in agents and one stand-in etcd member serve ``/metrics`` on loopback (prometheus_client with
the agents' metric names); "n1" dies at the fault, "n2" takes over with term 2 and observes an
election. RunMetrics scrapes them, reads the window back from the range API and writes the series
and the PNG."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Gauge, Histogram, start_http_server

from pgquorum.chaos.history import FaultWindow
from pgquorum.chaos.prometheus import RunMetrics
from pgquorum.local.ports import free_port
from pgquorum.local.prometheus import DEFAULT_BINARY

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not os.access(DEFAULT_BINARY, os.X_OK), reason="no prometheus: apt-get install prometheus"),
]


class Member:
    def __init__(self, name: str, role: str, term: int) -> None:
        self.name = name
        self.port = free_port()
        self.registry = CollectorRegistry()
        labels = ("cluster", "member")
        self.role = Gauge("pgquorum_role", "role", (*labels, "role"), registry=self.registry)
        self.term = Gauge("pgquorum_term", "term", labels, registry=self.registry).labels("chaos", name)
        self.lease = Gauge("pgquorum_lease_seconds_remaining", "lease", labels, registry=self.registry)
        self.lag = Gauge("pgquorum_replication_lag_bytes", "lag", labels, registry=self.registry)
        self.failover = Histogram(
            "pgquorum_failover_duration_seconds", "phases", (*labels, "phase"), registry=self.registry
        )
        for phase in ("detection", "election", "promotion"):
            self.failover.labels("chaos", name, phase)
        self.set(role, term)
        self.server, _ = start_http_server(self.port, "127.0.0.1", self.registry)

    def set(self, role: str, term: int) -> None:
        for r in ("leader", "replica"):
            self.role.labels("chaos", self.name, r).set(1 if r == role else 0)
        self.term.set(term)
        self.lease.labels("chaos", self.name).set(2.5 if role == "leader" else 0)
        self.lag.labels("chaos", self.name).set(0 if role == "leader" else 4096)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class FakeCluster:
    """What RunMetrics reads of a ChaosCluster: the member names and their URLs."""

    def __init__(self, agents: dict[str, Member], etcd: dict[str, int]) -> None:
        self.data = list(agents)
        self.witnesses: list[str] = []
        self.etcd = list(etcd)
        self._agents = agents
        self._etcd = etcd

    def api_url(self, name: str) -> str:
        return f"http://127.0.0.1:{self._agents[name].port}"

    def etcd_url(self, name: str) -> str:
        return f"http://127.0.0.1:{self._etcd[name]}"


@pytest.fixture
def members() -> Iterator[dict[str, Member]]:
    ms = {"n1": Member("n1", "leader", 1), "n2": Member("n2", "replica", 1), "n3": Member("n3", "replica", 1)}
    yield ms
    for m in ms.values():
        m.close()


@pytest.mark.timeout(120)
def test_a_failover_window_read_back_from_real_prometheus(tmp_path: Path, members: dict[str, Member]) -> None:
    etcd_registry = CollectorRegistry()
    Gauge("etcd_server_is_leader", "leader", registry=etcd_registry).set(1)
    Gauge("etcd_server_has_leader", "has", registry=etcd_registry).set(1)
    etcd_port = free_port()
    etcd_server, _ = start_http_server(etcd_port, "127.0.0.1", etcd_registry)
    said: list[str] = []
    m = RunMetrics(FakeCluster(members, {"e1": etcd_port}), tmp_path / "work", say=said.append)  # type: ignore[arg-type]
    m.margin = 2.0
    try:
        m.start()
        assert m.server is not None and m.url, (m.notes, said)
        assert m.notes == [], m.notes  # every target scraped at once
        time.sleep(2.5)
        inject = time.time()
        members["n1"].close()  # n1 dies: its scrapes fail, its series go stale
        time.sleep(1.5)
        members["n2"].failover.labels("chaos", "n2", "election").observe(0.7)
        members["n2"].failover.labels("chaos", "n2", "promotion").observe(0.2)
        for name, role in (("n2", "leader"), ("n3", "replica")):
            members[name].set(role, 2)
        heal = time.time()
        time.sleep(1.0)
        healthy = time.time()
        m.collect([FaultWindow("kill-member", inject, heal, healthy, "n1", "SIGKILL")], wait_tail=True)
    finally:
        m.stop()
        etcd_server.shutdown()
        etcd_server.server_close()
    assert not m.server.is_running()
    listed = m.write(tmp_path / "report")
    assert listed["notes"] == [] and listed["scrape_interval"] == "500ms", listed
    assert listed["files"] == [
        {
            "index": 1,
            "fault": "kill-member",
            "metrics": "metrics/01-kill-member.json",
            "plot": "plots/01-kill-member.png",
        }
    ]
    data: dict[str, Any] = json.loads((tmp_path / "report/metrics/01-kill-member.json").read_text())
    series = data["series"]
    assert data["end"] >= healthy + 1.5, "the window's tail (healthy + margin) was waited for"
    terms = {s["node"]: [v for _, v in s["values"]] for s in series["term"]}
    assert set(terms) == {"n1", "n2", "n3"}
    assert terms["n2"][0] == 1 and terms["n2"][-1] == 2 and terms["n3"][-1] == 2
    n1_times = [t for s in series["term"] if s["node"] == "n1" for t, _ in s["values"]]
    assert max(n1_times) < inject + 1.5, "n1's series ends once its scrapes fail (staleness)"
    leaders = {(s["node"], s["labels"]["role"]) for s in series["role"]}
    assert ("n1", "leader") in leaders and ("n2", "leader") in leaders and ("n3", "replica") in leaders
    up = {s["node"]: [v for _, v in s["values"]] for s in series["up"]}
    assert up["n1"][-1] == 0 and up["n2"][-1] == 1 and up["e1"][-1] == 1
    assert [s["node"] for s in series["etcd_is_leader"]] == ["e1"]
    phases = {(f["node"], f["phase"]): f for f in data["failover"]}
    assert set(phases) == {("n2", "election"), ("n2", "promotion")}
    assert phases[("n2", "election")]["count"] == 1 and phases[("n2", "election")]["sum_s"] == pytest.approx(0.7)
    assert phases[("n2", "election")]["buckets"]["0.75"] == 1 and phases[("n2", "election")]["buckets"]["0.5"] == 0
    png = (tmp_path / "report/plots/01-kill-member.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000


CHILD = """
import sys, time
from pathlib import Path
from pgquorum.local.prometheus import PrometheusServer
from pgquorum.local.ports import free_port
server = PrometheusServer(Path(sys.argv[1]), free_port(), ["127.0.0.1:9"], die_with_parent=True)
server.start()
print(server.pid, flush=True)
time.sleep(600)
"""


@pytest.mark.timeout(90)
def test_prometheus_dies_with_a_sigkilled_harness(tmp_path: Path) -> None:
    """A harness killed outright (a test's timeout sends SIGKILL) takes its Prometheus along."""
    import signal
    import subprocess
    import sys

    from pgquorum.chaos.procs import alive

    child = subprocess.Popen([sys.executable, "-c", CHILD, str(tmp_path / "prom")], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        pid = int(child.stdout.readline())
        assert alive(pid)
        child.send_signal(signal.SIGKILL)
        child.wait(10)
        deadline = time.monotonic() + 30
        while alive(pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not alive(pid), f"prometheus {pid} outlived its SIGKILLed parent"
    finally:
        if child.poll() is None:
            child.kill()
