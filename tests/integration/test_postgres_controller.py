"""PostgresController against real PostgreSQL 15 servers on loopback, in temporary directories.

As root (CI), postgres runs as the ``postgres`` OS user: the test tree lives under /var/tmp
(traversable by that user), not under pytest's 0700 tmp_path.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from pgquorum.agent.config import PostgresSettings, default_bin_dir
from pgquorum.agent.postgres import process
from pgquorum.agent.postgres.controller import PostgresController, PostgresError, Upstream

try:
    from pgquorum.local.ports import free_port
except ImportError:  # pragma: no cover - the local runner is optional here

    def free_port(host: str = "127.0.0.1") -> int:
        with socket.socket() as sock:
            sock.bind((host, 0))
            return int(sock.getsockname()[1])


BIN = Path(default_bin_dir())
SU_PASSWORD = "su-secret:with\\odd'chars"
REPL_PASSWORD = "repl-secret"

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not (BIN / "postgres").exists(), reason=f"no PostgreSQL binaries in {BIN}"),
]

Factory = Callable[[str], PostgresController]


@pytest.fixture
def base() -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(prefix="pgq-ctl-", dir="/var/tmp"))
    root.chmod(0o755)
    secrets = root / "secrets"
    secrets.mkdir(mode=0o700)
    (secrets / "su").write_text(SU_PASSWORD + "\n")
    (secrets / "repl").write_text(REPL_PASSWORD + "\n")
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def make(base: Path) -> Iterator[Factory]:
    made: list[PostgresController] = []

    def factory(name: str) -> PostgresController:
        settings = PostgresSettings(
            data_dir=base / name / "pgdata",
            bin_dir=BIN,
            port=free_port(),
            superuser_password_file=base / "secrets" / "su",
            replication_password_file=base / "secrets" / "repl",
            stop_timeout=5.0,
            parameters={"shared_buffers": "16MB", "max_connections": "30", "port": "1"},
        )
        ctl = PostgresController(settings, name)
        made.append(ctl)
        return ctl

    yield factory
    for ctl in made:
        ctl.fence()
        ctl.close()


def up(ctl: PostgresController) -> Upstream:
    return Upstream(ctl.member_name, "127.0.0.1", ctl.settings.port)


def connect(ctl: PostgresController, **kw: Any) -> psycopg.Connection[tuple[Any, ...]]:
    """Over TCP with a password, as a client would (exercises pg_hba's SCRAM lines)."""
    params: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": ctl.settings.port,
        "user": "postgres",
        "password": SU_PASSWORD,
        "dbname": "postgres",
        "connect_timeout": 3,
        "autocommit": True,
    }
    params.update(kw)
    return psycopg.connect(**params)


def sql(ctl: PostgresController, query: str) -> list[tuple[Any, ...]]:
    with connect(ctl) as conn:
        cur = conn.execute(query.encode())
        return cur.fetchall() if cur.description else []


def wait_until(check: Callable[[], Any], timeout: float = 20.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
            if last:
                return last
        except (psycopg.Error, PostgresError) as exc:
            last = exc
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}; last: {last!r}")


def timed(label: str, fn: Callable[[], Any]) -> Any:
    started = time.monotonic()
    result = fn()
    print(f"\nTIMING {label}: {time.monotonic() - started:.3f}s")
    return result


def primary_with_standby(make: Factory) -> tuple[PostgresController, PostgresController]:
    a, b = make("a"), make("b")
    timed("bootstrap", a.bootstrap)
    assert a.ensure_slots(["a", "b"]) == (["pgq_b"], [])
    timed("clone", lambda: b.clone(up(a), timeout=60))
    assert timed("start standby", lambda: b.start(timeout=30)) is True
    wait_until(lambda: b.state().streaming, what="b streaming from a")
    return a, b


def test_bootstrap_and_primary_state(make: Factory, base: Path) -> None:
    a = make("a")
    assert a.state().data_initialized is False
    assert a.state().running is False
    timed("bootstrap", a.bootstrap)
    s = a.state()
    assert s.data_initialized and s.running and s.accepting_connections
    assert s.in_recovery is False and s.was_primary and not s.streaming
    assert s.timeline == 1
    assert s.system_id and s.system_id.isdigit()
    assert s.wal_lsn and s.wal_lsn > 0
    assert s.received_lsn is None and s.replayed_lsn is None and s.upstream is None
    assert s.pid == a.postmaster_pid() and not a.exited.is_set()

    # Generated files belong to the postgres user and stay private; the reserved "port" parameter was ignored.
    conf = a.data_dir / "pgquorum.conf"
    assert f"port = '{a.settings.port}'" in conf.read_text()
    for path in (conf, a.passfile, a.data_dir / "pg_hba.conf"):
        st = path.stat()
        assert stat.S_IMODE(st.st_mode) == 0o600
        assert st.st_uid == a.user.uid
    assert SU_PASSWORD not in a.log_file.read_text()

    # SCRAM over TCP: the right password works, a wrong one does not.
    assert sql(a, "SELECT current_user") == [("postgres",)]
    with connect(a, user="replicator", password=REPL_PASSWORD) as conn:
        row = conn.execute("SELECT rolreplication FROM pg_roles WHERE rolname = current_user").fetchone()
        assert row == (True,)
    with pytest.raises(psycopg.OperationalError):
        connect(a, password="wrong").close()

    # Stopped: identity and last role still come from pg_control.
    assert timed("stop fast", a.stop) is True
    assert a.exited.is_set() and a.exit_code == 0
    s2 = a.state()
    assert not s2.running and s2.data_initialized and s2.was_primary
    assert s2.timeline == 1 and s2.system_id == s.system_id

    # A second controller (a restarted agent) adopts the running postmaster instead of starting another.
    assert a.start(timeout=30) is True
    pid = a.postmaster_pid()
    again = PostgresController(a.settings, "a")
    try:
        assert again.start(timeout=5) is True
        assert again.postmaster_pid() == pid and not again.exited.is_set()
        again.stop()
        assert again.exited.wait(2) and a.exited.wait(2)
    finally:
        again.close()


def test_clone_stream_promote_and_rewind_diverged_primary(make: Factory) -> None:
    a, b = primary_with_standby(make)
    sql(a, "CREATE TABLE t (v text); INSERT INTO t VALUES ('before')")
    wait_until(lambda: sql(b, "SELECT v FROM t") == [("before",)], what="row replicated to b")
    primary, standby = a.state(), b.state()
    assert standby.in_recovery is True and standby.streaming and standby.upstream == "a"
    assert standby.timeline == 1 and standby.system_id == primary.system_id and not standby.was_primary
    assert standby.received_lsn and standby.replayed_lsn and primary.wal_lsn
    assert standby.wal_lsn is None
    wait_until(lambda: b.state().received_lsn == a.state().wal_lsn, what="b caught up")
    assert sql(a, "SELECT application_name, state FROM pg_stat_replication") == [("b", "streaming")]
    assert sql(a, "SELECT slot_name, active FROM pg_replication_slots") == [("pgq_b", True)]

    assert timed("promote", lambda: b.promote(timeout=10)) is True
    promoted = b.state()
    assert promoted.in_recovery is False and promoted.timeline == 2 and promoted.upstream is None
    assert b.ensure_slots(["a", "b"]) == (["pgq_a"], [])

    # Split brain on purpose: both write, then the old primary is rewound onto the new one.
    sql(a, "INSERT INTO t VALUES ('only-on-a')")
    sql(b, "INSERT INTO t VALUES ('only-on-b')")
    assert a.stop() is True
    assert timed("rewind (clean stop)", lambda: a.rewind(up(b), timeout=60)) is True
    assert timed("start rewound standby", lambda: a.start(timeout=30)) is True
    wait_until(lambda: a.state().streaming, what="a streaming from b")
    s = a.state()
    assert s.in_recovery is True and s.upstream == "b" and s.timeline == 2 and not s.was_primary
    expected = [("before",), ("only-on-b",)]
    wait_until(lambda: sorted(sql(a, "SELECT v FROM t")) == expected, what="a has b's data")


def test_rewind_after_unclean_stop(make: Factory) -> None:
    a, b = primary_with_standby(make)
    sql(a, "CREATE TABLE t (v text); INSERT INTO t VALUES ('before')")
    wait_until(lambda: sql(b, "SELECT count(*) FROM t") == [(1,)], what="row replicated")
    assert b.promote(timeout=10) is True
    b.ensure_slots(["a"])
    sql(a, "INSERT INTO t VALUES ('lost')")
    sql(b, "INSERT INTO t VALUES ('kept')")

    pid = a.postmaster_pid()
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    assert a.exited.wait(5)
    crashed = a.state()
    assert not crashed.running and crashed.was_primary and crashed.timeline == 1

    assert timed("rewind (after SIGKILL, with crash recovery)", lambda: a.rewind(up(b), timeout=60)) is True
    assert a.start(timeout=30) is True
    wait_until(lambda: a.state().streaming and a.state().timeline == 2, what="a streaming on timeline 2")
    wait_until(lambda: sorted(sql(a, "SELECT v FROM t")) == [("before",), ("kept",)], what="a has b's data")


def test_a_killed_postmasters_lock_files_naming_a_live_process_do_not_stop_a_restart(make: Factory) -> None:
    """On Kubernetes a force-deleted pod leaves postmaster.pid and the socket's lock file on the
    volume; in the new container their pid is another live process of the same user (there: one of
    the agent's own threads), and postgres refuses to start over either."""
    a = make("a")
    a.bootstrap()
    pid = a.postmaster_pid()
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    assert a.exited.wait(5)
    user = a.user
    squatter = subprocess.Popen(
        ["sleep", "60"],
        **({"user": user.uid, "group": user.gid} if user.switch else {}),  # type: ignore[arg-type]
    )
    try:
        lock = a.socket_dir / f".s.PGSQL.{a.settings.port}.lock"
        for path in (a.data_dir / "postmaster.pid", lock):
            text = path.read_text().splitlines() if path.exists() else [str(pid)]
            path.write_text("\n".join([str(squatter.pid), *text[1:]]) + "\n")
        assert a.start(timeout=30) is True
        assert sql(a, "SELECT 1") == [(1,)]
    finally:
        squatter.kill()
        squatter.wait()


def test_fence_is_bounded_and_stops_writes(make: Factory) -> None:
    a = make("a")
    a.bootstrap()
    client = connect(a)
    backend = client.execute("SELECT pg_backend_pid()").fetchone()
    assert backend is not None
    client.execute("BEGIN")
    client.execute("CREATE TABLE pending (v int)")

    # The bound is fence()'s own: 0.5 s for SIGQUIT, then SIGKILL and up to 1 s more (a loaded
    # 2-core CI machine can push a healthy postmaster's exit past 0.5 s).
    elapsed = timed("fence (healthy postmaster)", a.fence)
    assert elapsed < 1.6
    assert not process.pid_alive(backend[0])
    with pytest.raises(psycopg.OperationalError):
        client.execute("COMMIT")
    with pytest.raises(psycopg.OperationalError):
        connect(a).close()
    assert a.state().running is False and a.exited.is_set()

    # A stopped (SIGSTOP) postmaster ignores SIGQUIT: fence escalates to SIGKILL of it and its backends.
    assert a.start(timeout=30) is True
    client = connect(a)
    backend = client.execute("SELECT pg_backend_pid()").fetchone()
    assert backend is not None
    pid = a.postmaster_pid()
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)
    elapsed = timed("fence (SIGSTOPped postmaster, escalation)", a.fence)
    assert 0.4 < elapsed < 1.6
    assert not process.pid_alive(pid) and not process.pid_alive(backend[0])
    with pytest.raises(psycopg.OperationalError):
        client.execute("SELECT 1")
    client.close()
    # Crash recovery on the next start.
    assert a.start(timeout=30) is True and a.state().in_recovery is False


def test_state_is_bounded_when_postgres_hangs(make: Factory) -> None:
    a = make("a")
    a.bootstrap()
    assert a.state().accepting_connections
    pid = a.postmaster_pid()
    assert pid is not None

    # Only the postmaster stopped: new connections hang (a fresh controller has no kept session).
    fresh = PostgresController(a.settings, "a", probe_timeout=1.0)
    os.kill(pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        s = fresh.state()
        took = time.monotonic() - started
        print(f"\nTIMING state() with a stopped postmaster: {took:.3f}s")
        assert took < 1.6
        assert s.running and not s.accepting_connections and s.pid == pid and s.system_id
    finally:
        os.kill(pid, signal.SIGCONT)
        fresh.close()

    # The whole server stopped (postmaster and backends): the kept session hangs too.
    procs = [pid, *process.children_of(pid)]
    for p in procs:
        process.send_signal(p, signal.SIGSTOP)  # a short-lived worker may be gone already
    try:
        started = time.monotonic()
        s = a.state(timeout=0.5)
        took = time.monotonic() - started
        print(f"\nTIMING state(timeout=0.5) with the whole server stopped: {took:.3f}s")
        assert took < 1.0
        assert s.running and not s.accepting_connections
    finally:
        for p in procs:
            process.send_signal(p, signal.SIGCONT)
    wait_until(lambda: a.state().accepting_connections, timeout=10, what="postgres answering again")


def test_ensure_slots(make: Factory) -> None:
    a, b = primary_with_standby(make)
    sql(a, "SELECT pg_create_physical_replication_slot('user_slot')")
    sql(a, "SELECT pg_create_physical_replication_slot('pgq_gone')")
    created, dropped = a.ensure_slots(["a", "b", "Node-C.1"])
    assert created == ["pgq_node_c_1"] and dropped == ["pgq_gone"]
    slots = sorted(r[0] for r in sql(a, "SELECT slot_name FROM pg_replication_slots"))
    assert slots == ["pgq_b", "pgq_node_c_1", "user_slot"]
    # An active slot is kept even when unwanted (dropped once its standby is gone); idempotent otherwise.
    assert a.ensure_slots([]) == ([], ["pgq_node_c_1"])
    assert a.ensure_slots(["b"]) == ([], [])
    with pytest.raises(PostgresError, match="not a primary"):
        b.ensure_slots(["a"])


def test_switchover_with_demote_and_follow(make: Factory) -> None:
    a, b = primary_with_standby(make)
    sql(a, "CREATE TABLE t (v text); INSERT INTO t VALUES ('from-a')")
    with pytest.raises(PostgresError, match="primary"):
        a.follow(up(b))

    # Planned switchover: demote the primary first (its fast shutdown ships all WAL), then promote.
    assert timed("demote", lambda: a.demote(up(b), timeout=30)) is True
    assert a.state().in_recovery is True
    assert timed("promote (switchover)", lambda: b.promote(timeout=10)) is True
    b.ensure_slots(["a"])
    assert sql(b, "SELECT v FROM t") == [("from-a",)]
    sql(b, "INSERT INTO t VALUES ('from-b')")
    wait_until(lambda: a.state().streaming and a.state().timeline == 2, what="a follows b's new timeline")
    wait_until(lambda: len(sql(a, "SELECT v FROM t")) == 2, what="b's write on a")

    # follow() re-points a running standby with a reload only (here: stream without the slot).
    old_pid = a.postmaster_pid()
    a.follow(Upstream("b", "127.0.0.1", b.settings.port, use_slot=False))
    assert a.postmaster_pid() == old_pid
    wait_until(
        lambda: sql(b, "SELECT count(*) FROM pg_replication_slots WHERE active") == [(0,)],
        what="a streaming without its slot",
    )
    wait_until(lambda: a.state().streaming, what="a streaming again")
    assert a.state().upstream == "b"
    with pytest.raises(PostgresError, match="primary"):
        b.follow(up(a))


def test_impossible_rewind_then_reinitialize(make: Factory) -> None:
    a, c = make("a"), make("c")
    a.bootstrap()
    c.bootstrap()
    c.ensure_slots(["a"])
    other_system = c.state().system_id
    assert a.state().system_id != other_system
    with pytest.raises(PostgresError, match="running"):
        a.clone(up(c))
    a.stop()
    with pytest.raises(PostgresError, match="not empty"):
        a.clone(up(c))
    # Different systems: pg_rewind cannot help, the caller must re-clone.
    assert a.rewind(up(c), timeout=60) is False
    timed("reinitialize", lambda: a.reinitialize(up(c), timeout=60))
    assert a.start(timeout=30) is True
    s = wait_until(lambda: a.state() if a.state().streaming else None, what="re-cloned a streaming")
    assert s.system_id == other_system and s.upstream == "c"
    assert a.run_dir.exists() and a.passfile.exists()  # only PGDATA was wiped


def test_unreachable_sources_and_bad_states(make: Factory) -> None:
    a, b = make("a"), make("b")
    with pytest.raises(PostgresError, match="holds no cluster"):
        a.start(timeout=1)
    with pytest.raises(PostgresError, match="not running"):
        a.promote(timeout=1)
    nowhere = Upstream("nobody", "127.0.0.1", free_port())
    started = time.monotonic()
    with pytest.raises(PostgresError, match="pg_basebackup"):
        a.clone(nowhere, timeout=20)
    assert time.monotonic() - started < 10
    assert not any(a.data_dir.iterdir())  # the failed clone left nothing behind
    b.bootstrap()
    b.stop()
    with pytest.raises(PostgresError, match="source"):
        b.rewind(nowhere, timeout=20)


def test_synchronous_standby_names_lifecycle(make: Factory) -> None:
    """Quorum commit's postgres side: set and verified on a primary, observed, kept across a restart,
    set on a standby before its promotion, cleared by every standby configuration."""
    a, b = primary_with_standby(make)
    a.set_standby_names('ANY 1 (b, "missing:1")')
    assert sql(a, "SHOW synchronous_standby_names") == [('ANY 1 (b, "missing:1")',)]
    assert "synchronous_standby_names = 'ANY 1 (b, \"missing:1\")'" in (a.data_dir / "pgquorum.conf").read_text()
    sql(a, "CREATE TABLE q (v int); INSERT INTO q VALUES (1)")  # b confirms: the commit returns
    obs = a.sync_observation()
    assert obs.standby_names == 'ANY 1 (b, "missing:1")' and obs.flush_lsn and obs.change_lsn
    assert [(s.name, s.state) for s in obs.standbys] == [("b", "streaming")]
    assert a.sync_observation().change_lsn == obs.change_lsn  # measured once per setting

    # k beyond the names that confirm: commits wait, and return once the setting allows them.
    a.set_standby_names('ANY 2 (b, "missing:1")')
    done = threading.Event()

    def commit() -> None:
        sql(a, "INSERT INTO q VALUES (2)")
        done.set()

    threading.Thread(target=commit, daemon=True).start()
    assert not done.wait(1.5)
    a.set_standby_names("ANY 1 (b)")
    assert done.wait(10)

    # Kept across a restart of the primary (a new controller, as after an agent restart, reads it back).
    assert a.stop() is True and a.start(timeout=30) is True
    assert sql(a, "SHOW synchronous_standby_names") == [("ANY 1 (b)",)]
    assert PostgresController(a.settings, "a").standby_names == "ANY 1 (b)"

    # Set on the standby before promotion: in force from the first write on.
    assert b.standby_names == ""
    b.set_standby_names("ANY 1 (a)")
    assert sql(b, "SHOW synchronous_standby_names") == [("ANY 1 (a)",)]
    assert a.stop() is True
    assert b.promote(timeout=10) is True
    assert sql(b, "SHOW synchronous_standby_names") == [("ANY 1 (a)",)]
    b.ensure_slots(["a", "b"])

    # The former primary rejoins: its copy of the setting is gone, and it confirms b's commits.
    assert a.rewind(up(b), timeout=60) is True
    assert a.standby_names == "" and "synchronous_standby_names = ''" in (a.data_dir / "pgquorum.conf").read_text()
    assert a.start(timeout=30) is True
    wait_until(lambda: a.state().streaming, what="a streaming from b")
    sql(b, "INSERT INTO q VALUES (3)")  # waits for a
    assert sql(a, "SHOW synchronous_standby_names") == [("",)]
    b.prepare_peer_access()
    position = b.peer_wal_position(up(a), timeout=2)
    assert position is not None and position >= (a.state().replayed_lsn or 0)

    # A value set elsewhere (ALTER SYSTEM wins over our file) is reported, not silently ignored.
    sql(b, "ALTER SYSTEM SET synchronous_standby_names = 'ANY 1 (zzz)'")
    sql(b, "SELECT pg_reload_conf()")
    # pg_reload_conf() only signals the postmaster: wait until the reload is done (a new session
    # sees it), or the check below may still read the old value and rightly find it in force.
    wait_until(lambda: sql(b, "SHOW synchronous_standby_names") == [("ANY 1 (zzz)",)], what="ALTER SYSTEM in force")
    with pytest.raises(PostgresError, match="ALTER SYSTEM"):
        b.set_standby_names("ANY 1 (a)", timeout=1.0)
    sql(b, "ALTER SYSTEM RESET synchronous_standby_names")
    sql(b, "SELECT pg_reload_conf()")
    b.set_standby_names("ANY 1 (a)")
