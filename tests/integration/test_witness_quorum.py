"""Witnesses, quorum votes and the quorum failsafe (invariant I5) with real processes.

One local cluster of 2 data members + 1 witness (real etcd, real PostgreSQL, real agents), shared
by the tests in file order; each leaves it healthy for the next. Every agent reaches etcd through
its own TCP proxy in this test process, so one member can be cut from etcd while it still talks
to the others (the agents' REST calls to each other do not go through the proxies).

What 2 data + 1 witness must do: losing any one member keeps the cluster writable; losing two
stops writes within ttl, even while etcd is up; etcd down for everyone changes nothing while a
majority of voters keeps promising; and a member that reaches etcd but not a majority of votes
is never promoted.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import statistics
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml

from pgquorum.agent.config_render import write_agent_config
from pgquorum.local.runner import LocalCluster

pytestmark = pytest.mark.integration

TTL = 3.0  # the local cluster's default timing


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


class TcpProxy:
    """A loopback TCP proxy to etcd that can be cut: open connections are closed and new ones are
    accepted and closed at once, so the agent behind it sees etcd unreachable right away."""

    def __init__(self, target_port: int):
        self.target = ("127.0.0.1", target_port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        # accept() polls so that close() can stop the thread *before* closing the listener: a thread
        # blocked in accept() on a closed descriptor number later accepts on whatever socket reuses
        # that number (it stole a later test's HTTP connections and hung the suite).
        self.listener.settimeout(0.2)
        self.port = self.listener.getsockname()[1]
        self.blocked = threading.Event()
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._closed = False
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def cut(self) -> None:
        self.blocked.set()
        with self._lock:
            for conn in self._conns:
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
                conn.close()
            self._conns.clear()

    def heal(self) -> None:
        self.blocked.clear()

    def close(self) -> None:
        self._closed = True
        self._thread.join()
        self.cut()
        self.listener.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            client.settimeout(None)
            if self.blocked.is_set():
                client.close()
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=2)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns.update((client, upstream))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
            with self._lock:
                self._conns.discard(src)
                self._conns.discard(dst)


@dataclass
class QuorumCluster:
    local: LocalCluster
    proxies: dict[str, TcpProxy]

    def status(self) -> dict[str, Any]:
        return self.local.status()

    def member(self, name: str) -> dict[str, Any]:
        return next(m for m in self.status()["members"] if m["name"] == name)

    def healthy(self) -> dict[str, Any] | None:
        s = self.status()
        roles = sorted(m["role"] for m in s["members"])
        return s if roles == ["leader", "replica", "witness"] else None

    def wait_healthy(self, timeout: float = 90.0) -> dict[str, Any]:
        return wait_for(self.healthy, timeout, "2 data members + witness healthy", interval=0.3)

    def dsn(self, port: int) -> str:
        return (
            f"host=127.0.0.1 port={port} user=postgres dbname=postgres connect_timeout=1 "
            f"passfile={self.local.data_dir / 'secrets' / 'pgpass'}"
        )

    def kill(self, name: str) -> None:
        self.local.kill_member(name)

    def start(self, name: str) -> None:
        self.local.start_member(name)

    def log(self, name: str) -> str:
        return (self.local.data_dir / name / "agent.log").read_text(errors="replace")


def get_json(url: str) -> Any:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return json.loads(err.read())


def metric(api_url: str, name: str, **labels: str) -> float:
    with urllib.request.urlopen(api_url + "/metrics", timeout=2) as resp:
        text = resp.read().decode()
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


@pytest.fixture(scope="module")
def qc() -> Iterator[QuorumCluster]:
    # Under /var/tmp, traversable by the unprivileged user that runs postgres (pytest's tmp is 0700).
    base = Path(tempfile.mkdtemp(prefix="pgquorum-wq-", dir="/var/tmp"))
    base.chmod(0o755)
    local = LocalCluster(base / "cluster")
    proxies: dict[str, TcpProxy] = {}
    try:
        local.up(members=2, witnesses=1)
        # Restart every agent behind its own etcd proxy (same data, same ports).
        local.down()
        state = local.load()
        for slot in state.agents():
            proxies[slot.name] = proxy = TcpProxy(state.etcd_client_port)
            path = local.data_dir / slot.name / "agent.yaml"
            config = yaml.safe_load(path.read_text())
            config["etcd_endpoints"] = [proxy.url]
            write_agent_config(path, config, owner=state.run_as)
        for slot in state.agents():
            local.start_member(slot.name)
        q = QuorumCluster(local, proxies)
        q.wait_healthy(120)
        yield q
    finally:
        try:
            local.down()
        except Exception as exc:
            print(f"local down failed: {exc}")
        for p in proxies.values():
            p.close()
        for log in sorted(local.data_dir.glob("*/agent.log")):
            print(f"==== {log} (tail)\n" + "\n".join(log.read_text(errors="replace").splitlines()[-30:]))
        shutil.rmtree(base, ignore_errors=True)


class Writer:
    """Inserts a row every 10 ms on one member's postgres; records the first refusal."""

    def __init__(self, q: QuorumCluster, port: int):
        self.conn = psycopg.connect(q.dsn(port), autocommit=True)
        self.conn.execute("CREATE TABLE IF NOT EXISTS wq_rows (id bigserial PRIMARY KEY, at double precision)")
        self.ok = 0
        self.refused_at: float | None = None
        self.error = ""

    def run_for(self, seconds: float, started: float) -> None:
        while time.monotonic() - started < seconds:
            try:
                self.conn.execute("INSERT INTO wq_rows (at) VALUES (%s)", (time.time(),))
                self.ok += 1
            except psycopg.Error as exc:
                self.refused_at = time.monotonic()
                self.error = type(exc).__name__
                return
            time.sleep(0.01)

    def close(self) -> None:
        with contextlib.suppress(psycopg.Error):
            self.conn.close()


def leader_and_replica(s: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    leader = next(m for m in s["members"] if m["role"] == "leader")
    replica = next(m for m in s["members"] if m["role"] == "replica")
    return leader, replica


def writable(q: QuorumCluster, port: int) -> bool:
    try:
        with psycopg.connect(q.dsn(port), autocommit=True) as conn:
            conn.execute("INSERT INTO wq_rows (at) VALUES (%s)", (time.time(),))
            return True
    except psycopg.Error:
        return False


# -- tests, in file order ---------------------------------------------------------------------------


def test_witness_is_a_small_voting_member_without_postgres(qc: QuorumCluster) -> None:
    s = qc.wait_healthy()
    w = qc.member("w1")
    assert w["role"] == "witness" and w["pg_port"] is None and w["postgres_pid"] is None
    health = get_json(w["api_url"] + "/health")
    assert health["role"] == "witness" and health["check"]["ok"] is True
    cluster = get_json(w["api_url"] + "/cluster")
    voters = {v["name"]: v["witness"] for v in cluster["votes"]["voting_members"]}
    assert voters == {"pg1": False, "pg2": False, "w1": True}
    leader, _ = leader_and_replica(s)
    failsafe = get_json(leader["api_url"] + "/cluster")["votes"]["failsafe"]
    assert failsafe["majority"] is True and failsafe["promises_held"] == 3
    assert metric(leader["api_url"], "pgquorum_promise_majority") == 1.0
    assert metric(w["api_url"], "pgquorum_quorum_answers_total", kind="promise", outcome="granted") > 0
    maps = Path(f"/proc/{w['agent_pid']}/maps").read_text()
    assert "psycopg" not in maps and "libpq" not in maps, "the witness loaded PostgreSQL's client"
    rss = int(re.search(r"VmRSS:\s+(\d+) kB", Path(f"/proc/{w['agent_pid']}/status").read_text())[1])  # type: ignore[index]
    data_rss = int(
        re.search(r"VmRSS:\s+(\d+) kB", Path(f"/proc/{leader['agent_pid']}/status").read_text())[1]  # type: ignore[index]
    )
    print(f"witness agent RSS {rss / 1024:.1f} MiB (data member's agent: {data_rss / 1024:.1f} MiB)")
    assert rss < data_rss


def test_kill_the_primary_the_replica_is_promoted_with_the_witness_vote(qc: QuorumCluster) -> None:
    before = qc.wait_healthy()
    leader, replica = leader_and_replica(before)
    w = qc.member("w1")
    votes_before = metric(w["api_url"], "pgquorum_quorum_answers_total", kind="vote", outcome="granted")
    Writer(qc, leader["pg_port"]).close()  # the table exists (and is replicated) before the kill
    killed = time.monotonic()
    qc.kill(leader["name"])
    wait_for(lambda: writable(qc, replica["pg_port"]), 30, "the replica accepting writes", interval=0.05)
    took = time.monotonic() - killed
    after = wait_for(
        lambda: (s := qc.status())["leader"] == replica["name"] and s, 10, "the promoted replica in the status"
    )
    assert after["term"] == before["term"] + 1
    print(f"failover with votes (2 data + 1 witness): writable {took:.2f}s after SIGKILL of the primary node")
    assert metric(w["api_url"], "pgquorum_quorum_answers_total", kind="vote", outcome="granted") > votes_before
    acquired = [line for line in qc.log(replica["name"]).splitlines() if "event=leader_acquired" in line]
    assert acquired and f"term={after['term']}" in acquired[-1] and "'w1'" in acquired[-1], acquired[-1:]
    qc.start(leader["name"])
    qc.wait_healthy()


def test_kill_only_the_witness_writes_go_on(qc: QuorumCluster) -> None:
    s = qc.wait_healthy()
    leader, _ = leader_and_replica(s)
    writer = Writer(qc, leader["pg_port"])
    qc.kill("w1")
    started = time.monotonic()
    writer.run_for(3 * TTL, started)
    writer.close()
    assert writer.refused_at is None, f"writes refused {writer.refused_at - started:.2f}s after the witness died"
    assert qc.status()["leader"] == leader["name"]
    qc.start("w1")
    qc.wait_healthy()


def test_kill_the_replica_and_the_witness_the_primary_stops_writes_within_ttl(qc: QuorumCluster) -> None:
    s = qc.wait_healthy()
    leader, replica = leader_and_replica(s)
    writer = Writer(qc, leader["pg_port"])
    qc.kill(replica["name"])
    qc.kill("w1")
    started = time.monotonic()
    writer.run_for(3 * TTL, started)
    writer.close()
    assert writer.refused_at is not None, "the primary kept accepting writes without a majority"
    window = writer.refused_at - started
    print(f"primary stopped writes {window:.2f}s after losing the replica and the witness (ttl {TTL:g}s, etcd up)")
    assert window < TTL
    # The key is released: the primary may not lead without a majority, and holds no lease for nothing.
    wait_for(lambda: qc.status()["leader"] is None, 10, "the leader key released")
    for name in (replica["name"], "w1"):
        qc.start(name)
    qc.wait_healthy()


def test_etcd_down_for_everyone_the_primary_serves_on_its_majority(qc: QuorumCluster) -> None:
    s = qc.wait_healthy()
    leader, _ = leader_and_replica(s)
    etcd_pid = qc.local.load().etcd_pid
    assert etcd_pid
    writer = Writer(qc, leader["pg_port"])
    os.kill(etcd_pid, signal.SIGSTOP)
    started = time.monotonic()
    try:
        writer.run_for(3 * TTL, started)
        seen = get_json(leader["api_url"] + "/health")
    finally:
        os.kill(etcd_pid, signal.SIGCONT)
        writer.close()
    assert writer.refused_at is None, f"writes refused {writer.refused_at - started:.2f}s into the etcd outage"
    assert seen["dcs_reachable"] is False and seen["role"] == "leader"
    print(f"etcd stopped for {3 * TTL:g}s: {writer.ok} writes acknowledged, none refused")
    after = qc.wait_healthy()
    assert after["leader"] == leader["name"], "the primary re-elects itself when etcd returns"


def test_a_member_that_reaches_etcd_but_not_a_majority_of_votes_is_never_promoted(qc: QuorumCluster) -> None:
    """The primary is cut from etcd only: its key expires, the replica and the witness still reach
    etcd, and the replica keeps asking for votes -- but the witness promised the primary, which
    keeps renewing that promise directly. So the replica never wins, and the primary serves on."""
    s = qc.wait_healthy()
    leader, replica = leader_and_replica(s)
    w = qc.member("w1")
    refused_before = metric(w["api_url"], "pgquorum_quorum_answers_total", kind="vote", reason="promised")
    writer = Writer(qc, leader["pg_port"])
    qc.proxies[leader["name"]].cut()
    started = time.monotonic()
    observed: list[tuple[Any, Any]] = []
    try:
        window = 4 * TTL
        while time.monotonic() - started < window:
            writer.run_for(min(window, time.monotonic() - started + 0.5), started)
            if writer.refused_at is not None:
                break
            view = get_json(replica["api_url"] + "/cluster")
            observed.append((view.get("leader"), view.get("term")))
            assert view.get("leader") != replica["name"], f"{replica['name']} was promoted without a majority"
        assert get_json(replica["api_url"] + "/health")["in_recovery"] is True
    finally:
        qc.proxies[leader["name"]].heal()
        writer.close()
    assert writer.refused_at is None, f"the primary stopped writes {writer.refused_at - started:.2f}s into the cut"
    assert (None, s["term"]) in observed, "the primary's key never expired: the cut did not happen"
    assert all(term == s["term"] for _, term in observed), observed
    refused = metric(w["api_url"], "pgquorum_quorum_answers_total", kind="vote", reason="promised")
    assert refused > refused_before, "the replica never asked the witness: nothing was tested"
    print(
        f"{replica['name']} reached etcd without a leader for {4 * TTL:g}s: the witness refused it "
        f"{refused - refused_before:.0f} votes (promised to {leader['name']}); {writer.ok} writes on the primary"
    )
    after = qc.wait_healthy()
    # a new term (the key expired), held by the same member; a split election closed on the way
    # may have used a term or two
    assert after["leader"] == leader["name"] and after["term"] > s["term"], (after, s)


# -- longer runs ------------------------------------------------------------------------------------


@pytest.mark.chaos
def test_failover_time_with_votes_median_of_five(qc: QuorumCluster) -> None:
    times = []
    for _ in range(5):
        s = qc.wait_healthy()
        leader, replica = leader_and_replica(s)
        Writer(qc, leader["pg_port"]).close()  # the table exists (alone, this test runs first)
        killed = time.monotonic()
        qc.kill(leader["name"])
        wait_for(lambda r=replica: writable(qc, r["pg_port"]), 30, "failover", interval=0.02)
        times.append(time.monotonic() - killed)
        qc.start(leader["name"])
    qc.wait_healthy()
    print(f"failover with votes, 2 data + 1 witness: median {statistics.median(times):.2f}s of {times}")


def _median_failover(local: LocalCluster, runs: int) -> list[float]:
    """SIGKILL the primary node ``runs`` times; seconds until the new primary accepted a write."""
    q = QuorumCluster(local, {})
    times = []
    for _ in range(runs):

        def healthy3() -> dict[str, Any] | None:
            s = local.status()
            roles = sorted(m["role"] for m in s["members"])
            return s if roles == ["leader", "replica", "replica"] else None

        s = wait_for(healthy3, 120, "3 healthy data members", interval=0.3)
        leader = next(m for m in s["members"] if m["role"] == "leader")
        others = [m["pg_port"] for m in s["members"] if m["name"] != leader["name"]]
        Writer(q, leader["pg_port"]).close()
        killed = time.monotonic()
        local.kill_member(leader["name"])
        wait_for(lambda o=others: any(writable(q, p) for p in o), 30, "failover", interval=0.02)
        times.append(round(time.monotonic() - killed, 3))
        local.start_member(leader["name"])
    return times


@pytest.mark.chaos
def test_failover_time_votes_against_lease_only_median_of_five() -> None:
    """3 data members each way, same machine, same default timing: what the votes cost."""
    results = {}
    for votes in (True, False):
        base = Path(tempfile.mkdtemp(prefix="pgquorum-vs-", dir="/var/tmp"))
        base.chmod(0o755)
        local = LocalCluster(base / "cluster")
        try:
            local.up(members=3, quorum_votes=votes)
            results[votes] = _median_failover(local, 5)
        finally:
            local.down()
            shutil.rmtree(base, ignore_errors=True)
    for votes, times in results.items():
        label = "quorum votes" if votes else "lease only"
        print(f"failover, 3 data members, {label}: median {statistics.median(times):.2f}s of {times}")
