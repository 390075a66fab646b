"""Quorum commit end to end: real etcd + 3 real PostgreSQL members, ``synchronous: quorum, k = 1``.

A writer counts a row as acknowledged only once its COMMIT returned. The primary node (agent +
postgres) is SIGKILLed at random moments; after every failover each acknowledged row must be on the
new primary, and the killed member must come back and stream again. The default suite does it 3
times, ``-m chaos`` 20 times. Then: a failover that cannot prove its quorum is refused until it
can, and with ``durability: required`` and both standbys gone, commits do not return.

The tests share one cluster and run in file order; each leaves it healthy for the next.
"""

from __future__ import annotations

import json
import os
import random
import statistics
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from local_support import scratch_cluster

from pgquorum.local.runner import LocalCluster

pytestmark = pytest.mark.integration

SEED = int(os.environ.get("PGQUORUM_CHAOS_SEED", str(int(time.time()))))


def wait_for(predicate: Any, timeout: float, what: str, interval: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def run_cli(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([sys.executable, "-m", "pgquorum", *args], capture_output=True, text=True, timeout=300)
    if check and proc.returncode != 0:
        raise AssertionError(f"pgquorum {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def status(c: LocalCluster) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(run_cli("local", "status", "--json", "--data-dir", str(c.data_dir)).stdout)
    return data


def get_json(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=2) as resp:
        data: dict[str, Any] = json.loads(resp.read())
        return data


def sync_of(s: dict[str, Any], name: str) -> dict[str, Any]:
    member = next(m for m in s["members"] if m["name"] == name)
    body = get_json(member["api_url"] + "/cluster")
    sync: dict[str, Any] = body["sync"]
    return sync


def quorum_steady(c: LocalCluster) -> dict[str, Any] | None:
    """One leader, two streaming replicas, and the quorum record naming both as voters with k = 1."""
    s = status(c)
    if sorted(m["role"] for m in s["members"]) != ["leader", "replica", "replica"]:
        return None
    try:
        sync = sync_of(s, s["leader"])
    except (OSError, ValueError, KeyError):
        return None
    record = sync.get("record") or {}
    replicas = sorted(m["name"] for m in s["members"] if m["role"] == "replica")
    if record.get("k") != 1 or record.get("voters") != replicas or record.get("leader") != s["leader"]:
        return None
    return s


def member_dsn(c: LocalCluster, port: int, **extra: str) -> str:
    opts = " ".join(f"{k}={v}" for k, v in extra.items())
    return (
        f"host=127.0.0.1 port={port} user=postgres dbname=postgres connect_timeout=2 "
        f"passfile={c.data_dir / 'secrets' / 'pgpass'} {opts}"
    )


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    with scratch_cluster("pgquorum-qc-", tail=40) as c:
        run_cli(
            "local", "up", "--data-dir", str(c.data_dir), "--sync", "quorum", "--k", "1", "--durability", "required"
        )
        s = wait_for(lambda: quorum_steady(c), 60, "the quorum record with both standbys")
        with psycopg.connect(s["dsn"], autocommit=True) as conn:
            conn.execute("CREATE TABLE IF NOT EXISTS qc_rows (id bigint PRIMARY KEY, at timestamptz DEFAULT now())")
        yield c


class Writer(threading.Thread):
    """Inserts increasing ids through the read-write DSN; a row counts once its COMMIT returned."""

    def __init__(self, dsn: str, first_id: int):
        super().__init__(name="qc-writer", daemon=True)
        self.dsn = dsn
        self.next_id = first_id
        # (id, monotonic time COMMIT returned, port of the server that acknowledged it)
        self.acked: list[tuple[int, float, int]] = []
        self.lock = threading.Lock()
        self.halt = threading.Event()

    def run(self) -> None:
        conn: psycopg.Connection[Any] | None = None
        while not self.halt.is_set():
            try:
                if conn is None:
                    conn = psycopg.connect(self.dsn, autocommit=True, connect_timeout=1)
                row = self.next_id
                self.next_id += 1
                conn.execute("INSERT INTO qc_rows (id) VALUES (%s)", (row,))
                with self.lock:
                    self.acked.append((row, time.monotonic(), conn.info.port))
            except psycopg.Error:
                if conn is not None:
                    conn.close()
                conn = None
                time.sleep(0.01)
        if conn is not None:
            conn.close()

    def snapshot(self) -> list[tuple[int, float, int]]:
        with self.lock:
            return list(self.acked)

    def acks_after(self, t: float, not_port: int | None = None) -> int:
        """Acknowledgements after ``t`` (by servers other than ``not_port``: a commit the killed
        primary acknowledged just before SIGKILL can reach us just after the kill command returned)."""
        with self.lock:
            return sum(1 for _, at, port in self.acked if at > t and port != not_port)


def missing_rows(dsn: str, ids: list[int]) -> list[int]:
    with psycopg.connect(dsn, autocommit=True, connect_timeout=2) as conn:
        present = {r[0] for r in conn.execute("SELECT id FROM qc_rows WHERE id = ANY(%s)", (ids,))}
    return [i for i in ids if i not in present]


def kill_rounds(c: LocalCluster, rounds: int, first_id: int) -> list[float]:
    """SIGKILL the primary node ``rounds`` times at random moments; returns the write gaps (seconds)."""
    rng = random.Random(SEED + first_id)
    print(f"seed {SEED + first_id}")
    gaps: list[float] = []
    s = wait_for(lambda: quorum_steady(c), 120, "steady quorum before the first kill")
    writer = Writer(s["dsn"], first_id)
    writer.start()
    try:
        for n in range(rounds):
            s = wait_for(lambda: quorum_steady(c), 120, f"steady quorum before kill {n + 1}")
            victim, term = s["leader"], s["term"]
            victim_port = next(m["pg_port"] for m in s["members"] if m["name"] == victim)
            resumed = time.monotonic()
            wait_for(lambda t=resumed: writer.acks_after(t) > 0, 30, "the writer committing")
            time.sleep(rng.uniform(0.05, 2.5))  # a random moment of the write stream
            run_cli("local", "kill", "--member", victim, "--data-dir", str(c.data_dir))
            killed = time.monotonic()
            wait_for(
                lambda k=killed, v=victim_port: writer.acks_after(k, v) > 0,
                60,
                f"writes on a new primary after killing {victim}",
                interval=0.05,
            )
            acked = writer.snapshot()
            before = max((at for _, at, port in acked if at <= killed or port == victim_port), default=killed)
            after = min(at for _, at, port in acked if at > killed and port != victim_port)
            gaps.append(after - before)
            now = status(c)
            assert now["leader"] not in (None, victim) and now["term"] > term
            lost = missing_rows(now["dsn"], [i for i, _, _ in acked])
            assert not lost, f"round {n + 1}: {len(lost)} acknowledged rows lost after killing {victim}: {lost[:10]}"
            print(
                f"round {n + 1}: killed {victim} (term {term}), new leader {now['leader']}, write gap {gaps[-1]:.2f}s"
            )
            run_cli("local", "start", "--member", victim, "--data-dir", str(c.data_dir))
        wait_for(lambda: quorum_steady(c), 120, "the last killed member rejoining")
    finally:
        writer.halt.set()
        writer.join(10)
    final = status(c)
    lost = missing_rows(final["dsn"], [i for i, _, _ in writer.snapshot()])
    assert not lost, f"acknowledged rows lost: {lost[:10]}"
    print(f"{len(writer.snapshot())} rows acknowledged, 0 lost; write gaps {[round(g, 2) for g in gaps]}")
    print(f"median write gap after SIGKILL of the primary node (quorum commit): {statistics.median(gaps):.2f}s")
    return gaps


def patch_config(c: LocalCluster, api: str, sync: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    token = (c.data_dir / "secrets" / "api-token").read_text().strip()
    req = urllib.request.Request(
        api + "/config",
        method="PATCH",
        data=json.dumps({"synchronous": sync}).encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            body = json.loads(resp.read())
            return resp.status, body["config"]["synchronous"]
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_quorum_state_is_visible(cluster: LocalCluster) -> None:
    s = wait_for(lambda: quorum_steady(cluster), 60, "steady quorum")
    leader = next(m for m in s["members"] if m["role"] == "leader")
    replicas = sorted(m["name"] for m in s["members"] if m["role"] == "replica")
    sync = sync_of(s, leader["name"])
    assert (sync["mode"], sync["k"], sync["durability"]) == ("quorum", 1, "required")
    assert sync["record"] == {"leader": leader["name"], "k": 1, "voters": replicas, "reads": 2}
    assert sync["postgres"] == f"ANY 1 ({', '.join(replicas)})" and sync["provable"] is True
    with psycopg.connect(member_dsn(cluster, leader["pg_port"]), autocommit=True) as conn:
        assert conn.execute("SHOW synchronous_standby_names").fetchone() == (f"ANY 1 ({', '.join(replicas)})",)
    with urllib.request.urlopen(leader["api_url"] + "/metrics", timeout=2) as resp:
        text = resp.read().decode()
    assert any(line.startswith("pgquorum_sync_quorum{") and line.endswith(" 1.0") for line in text.splitlines())
    assert any(line.startswith("pgquorum_sync_postgres_k{") and line.endswith(" 1.0") for line in text.splitlines())
    # Dynamic: one field changes, the others stay; None removes the override; bad values name the field.
    assert patch_config(cluster, leader["api_url"], {"durability": "preferred"}) == (
        200,
        {"mode": "quorum", "k": 1, "durability": "preferred"},
    )
    assert patch_config(cluster, leader["api_url"], {"durability": None})[1]["durability"] == "required"
    status_code, error = patch_config(cluster, leader["api_url"], {"k": 0})
    assert status_code == 400 and error["field"] == "synchronous.k" and "whole number >= 1" in error["error"]
    for name in replicas:  # a replica's postgres never carries a quorum of its own
        port = next(m["pg_port"] for m in s["members"] if m["name"] == name)
        with psycopg.connect(member_dsn(cluster, port), autocommit=True) as conn:
            assert conn.execute("SHOW synchronous_standby_names").fetchone() == ("",)


def test_sigkill_of_the_primary_at_random_moments_loses_no_acknowledged_row(cluster: LocalCluster) -> None:
    kill_rounds(cluster, 3, first_id=1_000_000)


def test_failover_refused_until_the_quorum_can_be_proven(cluster: LocalCluster) -> None:
    s = wait_for(lambda: quorum_steady(cluster), 120, "steady quorum")
    leader = s["leader"]
    survivor, other = sorted(m["name"] for m in s["members"] if m["role"] == "replica")
    with psycopg.connect(s["dsn"], autocommit=True) as conn:
        for i in range(10):
            conn.execute("INSERT INTO qc_rows (id) VALUES (%s)", (2_000_000 + i,))
    # The other voter and the leader die together: the record still needs both voters read.
    cluster.kill_member(other)
    cluster.kill_member(leader)

    def refused() -> dict[str, Any] | None:
        try:
            sync = sync_of(status(cluster), survivor)
        except (OSError, ValueError, KeyError):
            return None
        candidate = sync.get("candidate") or {}
        return sync if candidate.get("eligible") is False else None

    sync = wait_for(refused, 30, f"{survivor} refusing to promote")
    assert "quorum cannot be proven" in sync["candidate"]["reason"] and other in sync["candidate"]["reason"]
    time.sleep(2)  # and it stays that way
    assert status(cluster)["leader"] is None
    api = next(m["api_url"] for m in status(cluster)["members"] if m["name"] == survivor)
    with urllib.request.urlopen(api + "/metrics", timeout=2) as resp:
        metrics = resp.read().decode()
    refusals = [line for line in metrics.splitlines() if line.startswith("pgquorum_quorum_promotion_refused_total{")]
    assert refusals and float(refusals[0].rsplit(" ", 1)[1]) >= 1
    # The missing voter returns: now the quorum is provable and a leader is elected.
    run_cli("local", "start", "--member", other, "--data-dir", str(cluster.data_dir))
    new = wait_for(lambda: status(cluster)["leader"], 60, "a leader once the quorum is provable")
    assert new in (survivor, other)
    run_cli("local", "start", "--member", leader, "--data-dir", str(cluster.data_dir))
    s = wait_for(lambda: quorum_steady(cluster), 120, "steady quorum again")
    assert not missing_rows(s["dsn"], [2_000_000 + i for i in range(10)])


def test_required_blocks_commits_without_standbys(cluster: LocalCluster) -> None:
    """No standby left to confirm: a commit does not return. (With 2 of 3 voting members gone the
    primary also fences itself for lack of a majority, invariant I5; either way nothing is acknowledged.)"""
    s = wait_for(lambda: quorum_steady(cluster), 120, "steady quorum")
    leader = next(m for m in s["members"] if m["role"] == "leader")
    replicas = sorted(m["name"] for m in s["members"] if m["role"] == "replica")
    result: dict[str, Any] = {}
    go = threading.Event()

    def commit() -> None:
        try:
            with psycopg.connect(member_dsn(cluster, leader["pg_port"]), autocommit=True) as conn:
                go.wait(30)
                conn.execute("INSERT INTO qc_rows (id) VALUES (3000000)")
                result["returned_at"] = time.monotonic()
        except psycopg.Error as exc:
            result["error"] = exc

    t = threading.Thread(target=commit, daemon=True)
    t.start()
    time.sleep(0.5)  # connected
    for name in replicas:
        cluster.kill_member(name)
    go.set()
    # The client-side timeout: 1 s, less than the failsafe's earliest fence (ttl - safety_margin
    # after the last promise, itself at most loop_wait old).
    t.join(1.0)
    assert t.is_alive() and not result, f"the commit did not wait for a standby: {result}"
    t.join(3.0)  # whatever happens next (the failsafe may fence the primary), it is never acknowledged
    assert "returned_at" not in result, "a commit returned without any standby confirming it"
    for name in replicas:
        run_cli("local", "start", "--member", name, "--data-dir", str(cluster.data_dir))
    s = wait_for(lambda: quorum_steady(cluster), 120, "steady quorum again")
    t.join(30)
    if "returned_at" in result:  # acknowledged once a standby was back: it must be there
        assert not missing_rows(s["dsn"], [3_000_000])
    print(f"blocked commit: {'acknowledged after the standbys returned' if 'returned_at' in result else result}")


@pytest.mark.chaos
def test_chaos_twenty_sigkills_of_the_primary_lose_no_acknowledged_row(cluster: LocalCluster) -> None:
    kill_rounds(cluster, 20, first_id=10_000_000)


def test_a_bootstrap_leader_killed_before_the_first_quorum_record_leads_again() -> None:
    """One member, ``durability: required``: with no standby, quorum commit never writes its first
    record. Killed and restarted, that member is the only one that can lead (it holds every write it
    acknowledged) — and it may: the status key names it the last leader. Before, no member could
    ever prove a quorum for this cluster again."""
    with scratch_cluster("pgquorum-qb-") as c:
        run_cli(
            "local", "up", "--data-dir", str(c.data_dir), "--members", "1",
            "--sync", "quorum", "--k", "1", "--durability", "required",
        )  # fmt: skip
        s = wait_for(lambda: (st := status(c)).get("leader") == "pg1" and st, 60, "pg1 leading")
        assert not sync_of(s, "pg1").get("record"), "a quorum record with no standby"
        c.kill_member("pg1")
        time.sleep(4)  # past the ttl (3 s): the leader key is gone with its lease
        assert status(c).get("leader") != "pg1"
        restarted = time.monotonic()
        run_cli("local", "start", "--member", "pg1", "--data-dir", str(c.data_dir))

        def leading_again() -> bool:
            st = status(c)
            return st.get("leader") == "pg1" and any(
                m["name"] == "pg1" and m["role"] == "leader" for m in st["members"]
            )

        wait_for(leading_again, 60, "pg1 leading again after its restart")
        with psycopg.connect(member_dsn(c, s["members"][0]["pg_port"]), autocommit=True) as conn:
            assert conn.execute("SELECT pg_is_in_recovery()").fetchone() == (False,)
        print(f"MEASURE lone bootstrap leader restarted: leading again in {time.monotonic() - restarted:.1f} s")
