"""The register workload against real PostgreSQL 15 servers, checked by the real porcupine checker:
clients on the primary give a linearizable history; a reader on a standby whose replay is paused
sees a value older than an acknowledged write, and the check says illegal."""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pgquorum.agent.config import PostgresSettings, default_bin_dir
from pgquorum.agent.postgres.controller import PostgresController, Upstream
from pgquorum.chaos import linearizability as lin
from pgquorum.chaos.linearizability import RegisterOp, check_register
from pgquorum.chaos.pgwire import Conn, QueryError, connect, query
from pgquorum.chaos.register import READ_PLAIN_SQL, WRITE_SQL, RegisterSpec, RegisterWorkload
from pgquorum.local.ports import free_port

BIN = Path(default_bin_dir())
SU_PASSWORD = "su-secret"

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not (BIN / "postgres").exists(), reason=f"no PostgreSQL binaries in {BIN}"),
    pytest.mark.skipif(lin.find_go() is None, reason="go is not installed: the porcupine checker cannot be built"),
]


@pytest.fixture
def make() -> Iterator[Callable[[str], PostgresController]]:
    root = Path(tempfile.mkdtemp(prefix="pgq-reg-", dir="/var/tmp"))  # traversable by the postgres user
    root.chmod(0o755)
    (root / "secrets").mkdir(mode=0o700)
    (root / "secrets" / "su").write_text(SU_PASSWORD + "\n")
    (root / "secrets" / "repl").write_text("repl-secret\n")
    made: list[PostgresController] = []

    def factory(name: str) -> PostgresController:
        settings = PostgresSettings(
            data_dir=root / name / "pgdata",
            bin_dir=BIN,
            port=free_port(),
            superuser_password_file=root / "secrets" / "su",
            replication_password_file=root / "secrets" / "repl",
            stop_timeout=5.0,
            parameters={"shared_buffers": "16MB", "max_connections": "30"},
        )
        made.append(PostgresController(settings, name))
        return made[-1]

    yield factory
    for ctl in made:
        ctl.fence()
        ctl.close()
    shutil.rmtree(root, ignore_errors=True)


def dsn(port: int) -> str:
    return f"host=127.0.0.1 port={port} user=postgres dbname=postgres password={SU_PASSWORD!r} connect_timeout=3"


def test_register_clients_on_the_primary_are_linearizable(make: Callable[[str], PostgresController]) -> None:
    a = make("a")
    a.bootstrap()
    wl = RegisterWorkload(dsn(a.settings.port), lambda _addr: "a", spec=RegisterSpec(interval=0.01), seed=4)
    wl.setup()
    wl.start()
    time.sleep(1.5)
    wl.stop()
    ops = wl.ops()
    done = {(o.kind, o.outcome) for o in ops}
    assert {("read", "ok"), ("write", "ok"), ("cas", "ok")} <= done, done
    assert all(o.outcome == "ok" for o in ops), [o.error for o in ops if o.outcome != "ok"][:3]
    assert any(o.swapped for o in ops) and any(o.swapped is False for o in ops)
    res = check_register(ops)
    assert res.result == "ok", res
    assert res.ops_checked == len(ops) > 50


def _replicated(sconn: Conn) -> bool:
    try:
        return query(sconn, READ_PLAIN_SQL, [b"k0"], 5) == [[b"0", b"127.0.0.1"]]
    except QueryError:  # the table has not arrived yet
        return False


def test_a_stale_standby_read_is_not_linearizable(make: Callable[[str], PostgresController]) -> None:
    a, b = make("a"), make("b")
    a.bootstrap()
    a.ensure_slots(["a", "b"])
    b.clone(Upstream("a", "127.0.0.1", a.settings.port), timeout=60)
    assert b.start(timeout=30) is True
    wl = RegisterWorkload(dsn(a.settings.port), lambda _addr: "a", spec=RegisterSpec(keys=1), seed=1)
    wl.setup()  # k0 = 0, replicated below
    ops: list[RegisterOp] = list(wl.ops())
    pconn, sconn = connect(dsn(a.settings.port)), connect(dsn(b.settings.port))
    try:
        deadline = time.monotonic() + 20
        while not _replicated(sconn):
            assert time.monotonic() < deadline, "k0 never reached the standby"
            time.sleep(0.05)
        query(sconn, b"SELECT pg_wal_replay_pause()", [], 5)
        call = time.monotonic_ns()
        query(pconn, WRITE_SQL, [b"k0", b"7"], 5)
        ops.append(RegisterOp("w", 1, "write", "k0", call, "ok", time.monotonic_ns(), value=7))
        call = time.monotonic_ns()
        row = query(sconn, READ_PLAIN_SQL, [b"k0"], 5)[0]
        ops.append(RegisterOp("r", 1, "read", "k0", call, "ok", time.monotonic_ns(), value=int(row[0] or b"-1")))
    finally:
        pconn.close()
        sconn.close()
    assert ops[-1].value == 0  # the standby did not replay the acknowledged write
    res = check_register(ops)
    assert res.result == "illegal" and res.linearizable is False
