"""One libpq statement with a hard client-side deadline, shared by the chaos workloads and the bench.

A SIGSTOPped server keeps the TCP connection open and neither libpq nor ``statement_timeout``
bounds that wait, so queries go through libpq's asynchronous interface with our own deadline.
"""

from __future__ import annotations

import contextlib
import select
import time

import psycopg
from psycopg import pq

Conn = psycopg.Connection[tuple[object, ...]]


class QueryTimeout(Exception):
    pass


class QueryError(psycopg.Error):
    """The server's error message, with its SQLSTATE; a ``psycopg.Error`` for callers that catch those."""

    def __init__(self, message: str, sqlstate: str | None) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate


def query(conn: Conn, sql: bytes, params: list[bytes | None], timeout: float) -> list[list[bytes | None]]:
    """One statement with a hard deadline; the rows in text format. QueryError carries the SQLSTATE."""
    pg = conn.pgconn
    deadline = time.monotonic() + timeout
    if params:
        pg.send_query_params(sql, params)
    else:
        pg.send_query(sql)
    while pg.flush() != 0:
        _wait(pg.socket, deadline, write=True)
    rows: list[list[bytes | None]] = []
    error: QueryError | None = None
    while True:
        pg.consume_input()
        while pg.is_busy():
            _wait(pg.socket, deadline, write=False)
            pg.consume_input()
        res = pg.get_result()
        if res is None:
            break
        if res.status == pq.ExecStatus.TUPLES_OK:
            rows = [[res.get_value(i, j) for j in range(res.nfields)] for i in range(res.ntuples)]
        elif res.status != pq.ExecStatus.COMMAND_OK and error is None:
            state = res.error_field(pq.DiagnosticField.SQLSTATE)
            msg = (res.error_message or b"").decode(errors="replace").strip()
            error = QueryError(msg or str(res.status), state.decode() if state else None)
    if error is not None:
        raise error
    return rows


def _wait(fd: int, deadline: float, *, write: bool) -> None:
    left = deadline - time.monotonic()
    if left <= 0:
        raise QueryTimeout("no answer before the client deadline")
    r, w, _ = select.select([] if write else [fd], [fd] if write else [], [], min(left, 0.5))
    if not r and not w and time.monotonic() >= deadline:
        raise QueryTimeout("no answer before the client deadline")


def connect(dsn: str) -> Conn:
    return psycopg.connect(dsn, autocommit=True)


def close_quietly(conn: Conn | None) -> None:
    if conn is not None:
        with contextlib.suppress(Exception):
            conn.close()
