"""The agent end to end: real etcd + 3 real PostgreSQL members started by ``pgquorum local``.

The tests share one cluster and run in file order: each leaves the cluster healthy for the next.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from local_support import scratch_cluster

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


def run_cli(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([sys.executable, "-m", "pgquorum", *args], capture_output=True, text=True, timeout=300)
    if check and proc.returncode != 0:
        raise AssertionError(f"pgquorum {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    with scratch_cluster("pgquorum-it-", tail=40) as c:
        run_cli("local", "up", "--data-dir", str(c.data_dir))
        yield c


def status(c: LocalCluster) -> dict[str, Any]:
    out = run_cli("local", "status", "--json", "--data-dir", str(c.data_dir)).stdout
    data: dict[str, Any] = json.loads(out)
    return data


def healthy(c: LocalCluster) -> dict[str, Any] | None:
    s = status(c)
    roles = sorted(m["role"] for m in s["members"])
    return s if roles == ["leader", "replica", "replica"] else None


def member_dsn(c: LocalCluster, port: int) -> str:
    return f"host=127.0.0.1 port={port} user=postgres dbname=postgres connect_timeout=2 " + (
        f"passfile={c.data_dir / 'secrets' / 'pgpass'}"
    )


def insert_replicated(conn: psycopg.Connection[Any], row_id: int, replicas: int, timeout: float = 5.0) -> None:
    """Insert, then wait until every replica has flushed the commit: the row is acknowledged."""
    conn.execute("INSERT INTO it_rows (id) VALUES (%s)", (row_id,))
    lsn = conn.execute("SELECT pg_current_wal_flush_lsn()").fetchone()[0]  # type: ignore[index]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        n = conn.execute("SELECT count(*) FROM pg_stat_replication WHERE flush_lsn >= %s::pg_lsn", (lsn,)).fetchone()[0]  # type: ignore[index]
        if n >= replicas:
            return
        time.sleep(0.005)
    raise TimeoutError("replicas did not confirm")


def test_status_contract_and_streaming_replication(cluster: LocalCluster) -> None:
    s = status(cluster)
    assert set(s) >= {"dsn", "members", "leader", "term"}
    assert "target_session_attrs=read-write" in s["dsn"]
    for m in s["members"]:
        assert set(m) >= {"name", "role", "term", "lsn", "api_url", "pg_port", "agent_pid", "postgres_pid"}
        assert m["agent_pid"] and m["postgres_pid"]
    assert sorted(m["role"] for m in s["members"]) == ["leader", "replica", "replica"]
    assert s["term"] >= 1
    with psycopg.connect(s["dsn"], autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS it_rows (id bigint PRIMARY KEY)")
        insert_replicated(conn, 1, replicas=2)
    for m in s["members"]:
        if m["role"] == "replica":
            with psycopg.connect(member_dsn(cluster, m["pg_port"]), autocommit=True) as conn:
                assert conn.execute("SELECT pg_is_in_recovery()").fetchone() == (True,)
                wait_for(
                    lambda c=conn: c.execute("SELECT count(*) FROM it_rows WHERE id = 1").fetchone() == (1,),
                    10,
                    "row on replica",
                )
                with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
                    conn.execute("INSERT INTO it_rows (id) VALUES (2)")


def test_cluster_api_reports_members(cluster: LocalCluster) -> None:
    s = status(cluster)
    import urllib.request

    with urllib.request.urlopen(s["members"][0]["api_url"] + "/cluster", timeout=2) as resp:
        body = json.loads(resp.read())
    assert body["leader"] == s["leader"] and body["term"] == s["term"]
    assert {m["name"] for m in body["members"]} == {m["name"] for m in s["members"]}
    for m in body["members"]:
        assert set(m) >= {"name", "role", "state", "term", "timeline", "lag_bytes", "api_url", "conn_url"}


def test_failover_after_sigkill_of_primary_node_loses_no_replicated_write(cluster: LocalCluster) -> None:
    before = wait_for(lambda: healthy(cluster), 60, "healthy cluster")
    old_leader, old_term = before["leader"], before["term"]
    acked: list[int] = []
    with psycopg.connect(before["dsn"], autocommit=True) as conn:
        for i in range(100, 200):
            insert_replicated(conn, i, replicas=2)
            acked.append(i)
    killed_at = time.monotonic()
    run_cli("local", "kill", "--member", old_leader, "--data-dir", str(cluster.data_dir))

    def new_primary_accepts_writes() -> bool:
        try:
            with psycopg.connect(before["dsn"], autocommit=True, connect_timeout=1) as conn:
                conn.execute("INSERT INTO it_rows (id) VALUES (1000)")
                return True
        except psycopg.Error:
            return False

    wait_for(new_primary_accepts_writes, 30, "a new primary accepting writes", interval=0.05)
    unavailable = time.monotonic() - killed_at
    after = status(cluster)
    assert after["leader"] not in (None, old_leader)
    assert after["term"] > old_term
    with psycopg.connect(after["dsn"], autocommit=True) as conn:
        present = {r[0] for r in conn.execute("SELECT id FROM it_rows")}
    assert not [i for i in acked if i not in present], "acknowledged (replicated) rows lost"
    print(f"write unavailability after SIGKILL of the primary node: {unavailable:.2f}s")

    # The former primary comes back and rejoins as a replica on the new timeline.
    run_cli("local", "start", "--member", old_leader, "--data-dir", str(cluster.data_dir))
    final = wait_for(lambda: healthy(cluster), 120, "old leader rejoining as replica")
    rejoined = next(m for m in final["members"] if m["name"] == old_leader)
    leader = next(m for m in final["members"] if m["role"] == "leader")
    assert rejoined["role"] == "replica"
    wait_for(
        lambda: (
            next(m for m in status(cluster)["members"] if m["name"] == old_leader)["timeline"] == leader["timeline"]
        ),
        30,
        "rejoined member on the new timeline",
    )
    with psycopg.connect(member_dsn(cluster, rejoined["pg_port"]), autocommit=True) as conn:
        wait_for(
            lambda: conn.execute("SELECT count(*) FROM it_rows WHERE id = 1000").fetchone() == (1,),
            20,
            "new leader's write on the rejoined member",
        )


def test_back_to_back_failovers_with_two_members_killed(cluster: LocalCluster) -> None:
    """Kill the leader, then the next leader as soon as it writes: the last replica must still be
    eligible although its checkpoint timeline lags (its WAL receiver dies with each leader).

    With quorum votes the last replica alone is 1 of 3 voting members: it must not be promoted
    until a second voter is back -- the first member killed, which is on an older timeline, so it
    votes for the last replica rather than running itself."""
    before = wait_for(lambda: healthy(cluster), 60, "healthy cluster")
    killed: list[str] = []
    term = before["term"]
    for round_ in range(2):

        def replicas_on_leader_timeline() -> dict[str, Any] | None:
            s = status(cluster)
            tl = next((m["timeline"] for m in s["members"] if m["role"] == "leader"), None)
            live = [m for m in s["members"] if m["name"] not in killed]
            ok = tl is not None and all(m["timeline"] == tl and m["role"] in ("leader", "replica") for m in live)
            return s if ok else None

        # invariant I3 (c): a replica that never reached the newest timeline is rightly not eligible.
        leader = wait_for(replicas_on_leader_timeline, 30, "replicas streaming on the leader's timeline")["leader"]
        run_cli("local", "kill", "--member", leader, "--data-dir", str(cluster.data_dir))
        killed.append(leader)

        def new_leader_writes(t: int = term, row: int = 5000 + round_) -> dict[str, Any] | None:
            s = status(cluster)
            if s["leader"] in (None, *killed) or s["term"] <= t:
                return None
            try:
                with psycopg.connect(before["dsn"], autocommit=True, connect_timeout=1) as conn:
                    conn.execute("INSERT INTO it_rows (id) VALUES (%s)", (row,))
                return s
            except psycopg.Error:
                return None

        if round_ == 1:
            quiet_until = time.monotonic() + 2 * 3.0  # twice the default ttl
            while time.monotonic() < quiet_until:
                lone = status(cluster)
                assert lone["leader"] is None or lone["term"] <= term, f"promoted without a majority: {lone}"
                time.sleep(0.2)
            run_cli("local", "start", "--member", killed[0], "--data-dir", str(cluster.data_dir))
        term = wait_for(new_leader_writes, 30, f"failover #{round_ + 1}", interval=0.1)["term"]
    for name in killed:
        run_cli("local", "start", "--member", name, "--data-dir", str(cluster.data_dir))
    wait_for(lambda: healthy(cluster), 120, "both killed members rejoining as replicas")


def test_fencing_token_in_the_database_follows_the_term(cluster: LocalCluster) -> None:
    s = wait_for(lambda: healthy(cluster), 60, "healthy cluster")
    term = s["term"]
    assert term > 1, "runs after the failover tests: the token must have moved with promotions"
    with psycopg.connect(s["dsn"], autocommit=True) as conn:
        wait_for(
            lambda: conn.execute("SELECT pgquorum.current_term()").fetchone() == (term,), 10, "token on the leader"
        )
        assert conn.execute("SELECT pgquorum.assert_term(%s)", (term,)).fetchone() == (term,)
        with pytest.raises(psycopg.DatabaseError) as stale:
            conn.execute("SELECT pgquorum.assert_term(%s)", (term - 1,))
        assert stale.value.sqlstate == "PQ001"
    for m in s["members"]:
        if m["role"] == "replica":  # replicated: a standby shows its primary's term, and refuses writes
            with psycopg.connect(member_dsn(cluster, m["pg_port"]), autocommit=True) as conn:
                wait_for(
                    lambda c=conn: c.execute("SELECT pgquorum.current_term()").fetchone() == (term,),
                    10,
                    f"token on {m['name']}",
                )
                with pytest.raises(psycopg.DatabaseError) as on_standby:
                    conn.execute("SELECT pgquorum.assert_term(%s)", (term,))
                assert on_standby.value.sqlstate == "PQ001"


def test_crashed_postgres_on_the_leader_is_restarted_in_place(cluster: LocalCluster) -> None:
    before = wait_for(lambda: healthy(cluster), 60, "healthy cluster")
    leader = before["leader"]
    killed_at = time.monotonic()
    run_cli("local", "kill", "--member", leader, "--what", "postgres", "--data-dir", str(cluster.data_dir))

    def writable() -> bool:
        try:
            with psycopg.connect(before["dsn"], autocommit=True, connect_timeout=1) as conn:
                conn.execute("INSERT INTO it_rows (id) VALUES (%s)", (int(time.time() * 1e6),))
                return True
        except psycopg.Error:
            return False

    wait_for(writable, 30, "writes after the postgres crash", interval=0.05)
    print(f"write unavailability after a postgres crash on the leader: {time.monotonic() - killed_at:.2f}s")
    after = wait_for(lambda: healthy(cluster), 60, "healthy cluster after the restart")
    assert after["leader"] == leader and after["term"] == before["term"], "a restartable crash caused a failover"


def test_primary_stops_accepting_writes_before_ttl_when_etcd_and_its_voters_are_lost(cluster: LocalCluster) -> None:
    """With quorum votes (the default) a primary cut from etcd serves on as long as a majority of
    voters renews its promise (tests/integration/test_witness_quorum.py); cut from etcd *and* from
    the other voters (their agents paused), it must stop writes before ttl."""
    s = wait_for(lambda: healthy(cluster), 60, "healthy cluster")
    state = cluster.load()
    leader = next(m for m in s["members"] if m["role"] == "leader")
    voters = [m["agent_pid"] for m in s["members"] if m["role"] != "leader"]
    ttl = 3.0  # the local cluster runs the default timing
    conn = psycopg.connect(member_dsn(cluster, leader["pg_port"]), autocommit=True)
    subprocess.run(["kill", "-STOP", str(state.etcd_pid), *map(str, voters)], check=True)
    stopped_at = time.monotonic()
    refused_at = None
    try:
        while time.monotonic() - stopped_at < 3 * ttl:
            try:
                conn.execute("INSERT INTO it_rows (id) VALUES (%s)", (int(time.time() * 1e6),))
            except psycopg.Error:
                refused_at = time.monotonic()
                break
            time.sleep(0.01)
    finally:
        subprocess.run(["kill", "-CONT", str(state.etcd_pid), *map(str, voters)], check=True)
        conn.close()
    assert refused_at is not None, "the primary kept accepting writes without etcd and without its voters"
    window = refused_at - stopped_at
    print(f"primary refused writes {window:.2f}s after etcd and its voters stopped (ttl {ttl}s)")
    assert window < ttl
    wait_for(lambda: healthy(cluster), 120, "cluster healthy again after etcd returns")


def test_bad_settings_are_rejected_with_a_clear_message(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(
        "name: a\ncluster: c\netcd_endpoints: [http://127.0.0.1:1]\napi_listen: 127.0.0.1:1\n"
        "postgres: {data_dir: /nonexistent}\ntiming: {ttl: 3, loop_wait: 2, retry_timeout: 1}\n"
    )
    proc = run_cli("agent", "--config", str(cfg), check=False)
    assert proc.returncode == 2
    assert "loop_wait + 2 * retry_timeout must be <= ttl" in proc.stderr
    assert "Traceback" not in proc.stderr
