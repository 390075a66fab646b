"""PostgreSQL clients of the harness: the writer and the role poller.

Connections use psycopg 3 (multi-host DSN, ``connect_timeout`` and
``target_session_attrs`` handled by libpq/psycopg).  Queries go through
``pgquorum.chaos.pgwire.query`` with its hard client-side deadline (a
SIGSTOPped server keeps the TCP connection open forever); on timeout the
connection is dropped and the attempt counts as failed (the row may still
appear later).  Server errors are ``QueryError``, a ``psycopg.Error``.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from dataclasses import dataclass

import psycopg

from bench.metrics import WriteRecord
from pgquorum.chaos.pgwire import close_quietly, connect, query
from pgquorum.chaos.workload import PacedClient

log = logging.getLogger("bench.client")

TABLE = "bench_writes"
CREATE_TABLE = f"""
CREATE TABLE IF NOT EXISTS {TABLE} (
    run_id  text    NOT NULL,
    writer  text    NOT NULL,
    seq     integer NOT NULL,
    t_send  double precision NOT NULL,
    PRIMARY KEY (run_id, writer, seq)
)"""
INSERT = (
    f"INSERT INTO {TABLE} (run_id, writer, seq, t_send) VALUES ($1, $2, $3, $4) "
    "RETURNING inet_server_port(), pg_is_in_recovery()"
).encode()


_SERVER_AT = re.compile(r'connection to server at "[^"]*", port \d+ failed: ')


def _short(exc: BaseException) -> str:
    text = " | ".join(line.strip() for line in str(exc).strip().splitlines() if line.strip())
    return f"{type(exc).__name__}: {_SERVER_AT.sub('', text)}"[:200]


class Writer(PacedClient[tuple[int, float], WriteRecord]):
    """Inserts one row every ``interval`` seconds through ``dsn``, recording each attempt
    (the chaos clients' loop; after any error the connection is dropped)."""

    def __init__(
        self,
        name: str,
        dsn: str,
        run_id: str,
        *,
        interval: float = 0.01,
        query_timeout: float = 2.0,
        reconnect_pause: float = 0.025,
    ) -> None:
        super().__init__(
            name,
            dsn,
            lambda _host: None,
            interval=interval,
            query_timeout=query_timeout,
            reconnect_pause=reconnect_pause,
            seed=0,
        )
        self.name = f"writer-{name}"
        self.writer_name = name
        self.run_id = run_id
        self.connects = 0
        self.stopped_at: float | None = None

    def _begin(self, n: int) -> tuple[bytes, list[bytes | None], tuple[int, float]]:
        t_send = time.time()
        params: list[bytes | None] = [
            self.run_id.encode(),
            self.writer_name.encode(),
            str(n).encode(),
            repr(t_send).encode(),
        ]
        return INSERT, params, (n, t_send)

    def _connected(self, conn: psycopg.Connection[tuple[object, ...]]) -> None:
        self.connects += 1

    def _ok(self, pending: tuple[int, float], rows: list[list[bytes | None]], server: str | None) -> None:
        seq, t_send = pending
        t_ack = time.time()
        port = int(rows[0][0] or b"0")
        in_rec = rows[0][1] == b"t"
        self._record(WriteRecord(self.writer_name, seq, t_send, t_ack, port, in_rec))

    def _end(self, pending: tuple[int, float], outcome: str, server: str | None, exc: BaseException) -> None:
        seq, t_send = pending
        self._record(WriteRecord(self.writer_name, seq, t_send, None, None, None, _short(exc)))

    def _drops_connection(self, outcome: str) -> bool:
        return True

    def run(self) -> None:
        try:
            super().run()
        finally:
            self.stopped_at = time.time()


@dataclass(frozen=True, slots=True)
class RoleSample:
    t: float
    member: str
    in_recovery: bool | None  # None: unreachable / error


class RolePoller(threading.Thread):
    """Polls ``pg_is_in_recovery()`` on one member directly, recording role changes."""

    def __init__(self, member: str, dsn: str, *, interval: float = 0.05, timeout: float = 1.0) -> None:
        super().__init__(name=f"poll-{member}", daemon=True)
        self.member = member
        self.dsn = dsn
        self.interval = interval
        self.timeout = timeout
        self.changes: list[RoleSample] = []
        self._stop_evt = threading.Event()

    def stop(self) -> None:
        self._stop_evt.set()

    def first_primary_since(self, t: float) -> float | None:
        """First time at or after ``t`` this member was seen out of recovery."""
        for s in list(self.changes):
            if s.t >= t and s.in_recovery is False:
                return s.t
        return None

    def run(self) -> None:
        conn: psycopg.Connection[tuple[object, ...]] | None = None
        last: bool | str | None = "unset"
        while not self._stop_evt.wait(self.interval):
            val: bool | None
            try:
                if conn is None:
                    conn = connect(self.dsn)
                rows = query(conn, b"SELECT pg_is_in_recovery()", [], self.timeout)
                val = rows[0][0] == b"t"
            except Exception:
                close_quietly(conn)
                conn = None
                val = None
            if val != last:
                self.changes.append(RoleSample(time.time(), self.member, val))
                last = val
        close_quietly(conn)


def read_present(dsn: str, run_id: str, timeout: float = 30.0) -> set[tuple[str, int]]:
    """All (writer, seq) rows of ``run_id`` on the server ``dsn`` reaches."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = query(conn, f"SELECT writer, seq FROM {TABLE} WHERE run_id = $1".encode(), [run_id.encode()], timeout)
    return {((w or b"").decode(), int(s or b"0")) for w, s in rows}


def execute(dsn: str, sql: str, timeout: float = 30.0) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        query(conn, sql.encode(), [], timeout)
