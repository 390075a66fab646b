"""A register workload for the linearizability check: a few clients doing read / write /
compare-and-set on a few keys of ``chaos_register``, through the multi-host DSN
(``target_session_attrs=read-write``), recording call and return times and outcomes with the
rules of ``workload.py`` (``fail`` only when certainly not committed, else ``unknown``).

Reads go to the primary only; stale reads on replicas are not linearizable by design and out of
scope. Every operation takes a row lock, so its commit waits for the quorum like a write
(``locking_reads``): PostgreSQL makes a commit visible on the primary before its standbys
confirm it, so a plain read may see a value that a failover then loses. With ``locking_reads``
off, reads are plain ``SELECT``s and that window is measured as well.

Setup writes 0 to every key (recorded as acknowledged writes of client ``setup``), so the
register's initial state is part of the history.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from pgquorum.chaos.linearizability import RegisterOp
from pgquorum.chaos.pgwire import Conn, close_quietly, connect, query
from pgquorum.chaos.workload import PacedClient, _short, retry_setup, start_all, stop_all

REGISTER_SCHEMA_SQL = """
CREATE TABLE IF NOT EXISTS chaos_register (k text PRIMARY KEY, v bigint NOT NULL);
CREATE OR REPLACE FUNCTION chaos_register_cas(p_k text, p_expect bigint, p_new bigint, OUT o_swapped boolean)
LANGUAGE plpgsql AS $$
DECLARE cur bigint;
BEGIN
    -- the row lock gives the transaction an xid: its commit waits for the quorum even when not swapped
    SELECT v INTO cur FROM chaos_register WHERE k = p_k FOR UPDATE;
    o_swapped := coalesce(cur = p_expect, false);
    IF o_swapped THEN
        UPDATE chaos_register SET v = p_new WHERE k = p_k;
    END IF;
END $$;
"""
WRITE_SQL = (
    b"INSERT INTO chaos_register (k, v) VALUES ($1, $2) ON CONFLICT (k) DO UPDATE SET v = EXCLUDED.v "
    b"RETURNING v, host(inet_server_addr())"
)
CAS_SQL = b"SELECT o_swapped, host(inet_server_addr()) FROM chaos_register_cas($1, $2, $3)"
READ_LOCKING_SQL = b"SELECT v, host(inet_server_addr()) FROM chaos_register WHERE k = $1 FOR UPDATE"
READ_PLAIN_SQL = b"SELECT v, host(inet_server_addr()) FROM chaos_register WHERE k = $1"


@dataclass(frozen=True)
class RegisterSpec:
    clients: int = 3
    keys: int = 3
    values: int = 5  # written values are drawn from 0..values-1: small, so cas often matches
    interval: float = 0.05  # per client
    locking_reads: bool = True
    query_timeout: float = 2.0
    reconnect_pause: float = 0.025
    check_timeout: float = 60.0  # porcupine, per key; past it the result is unknown (not a pass)


class RegisterClient(PacedClient[RegisterOp, RegisterOp]):
    def __init__(
        self, name: str, dsn: str, member_of: Callable[[str | None], str | None], spec: RegisterSpec, seed: int
    ) -> None:
        super().__init__(
            name,
            dsn,
            member_of,
            interval=spec.interval,
            query_timeout=spec.query_timeout,
            reconnect_pause=spec.reconnect_pause,
            seed=seed,
        )
        self.spec = spec
        self._read_sql = READ_LOCKING_SQL if spec.locking_reads else READ_PLAIN_SQL

    def _done(self, op: RegisterOp, outcome: str, server: str | None, error: str | None = None) -> None:
        self._record(replace(op, outcome=outcome, return_ns=time.monotonic_ns(), server=server, error=error))

    def _choose(self) -> tuple[str, str, int | None, int | None]:
        """(kind, key, value, expect)."""
        key = f"k{self.rng.randrange(self.spec.keys)}"
        kind = self.rng.choices(("read", "write", "cas"), weights=(4, 3, 3))[0]
        if kind == "read":
            return kind, key, None, None
        value = self.rng.randrange(self.spec.values)
        expect = self.rng.randrange(self.spec.values) if kind == "cas" else None
        return kind, key, value, expect

    def _begin(self, n: int) -> tuple[bytes, list[bytes | None], RegisterOp]:
        kind, key, value, expect = self._choose()
        params: list[bytes | None]
        if kind == "read":
            sql, params = self._read_sql, [key.encode()]
        elif kind == "write":
            sql, params = WRITE_SQL, [key.encode(), str(value).encode()]
        else:
            sql, params = CAS_SQL, [key.encode(), str(expect).encode(), str(value).encode()]
        pending = RegisterOp(
            self.client, n, kind, key, time.monotonic_ns(), "unknown", value=value, expect=expect, send=time.time()
        )
        return sql, params, pending

    def _ok(self, pending: RegisterOp, rows: list[list[bytes | None]], server: str | None) -> None:
        row = rows[0] if rows else [None, None]
        server = self.member_of(row[1].decode() if row[1] is not None else None) or server
        if pending.kind == "read":
            pending = replace(pending, value=int(row[0]) if row[0] is not None else None)
        elif pending.kind == "cas":
            pending = replace(pending, swapped=row[0] == b"t")
        self._done(pending, "ok", server)

    def _end(self, pending: RegisterOp, outcome: str, server: str | None, exc: BaseException) -> None:
        self._done(pending, outcome, server, _short(exc))


class RegisterWorkload:
    """The register clients of one run; ``ops()`` merges their histories with the setup writes."""

    def __init__(
        self,
        dsn_any: str,
        member_of: Callable[[str | None], str | None],
        *,
        spec: RegisterSpec | None = None,
        seed: int = 0,
    ) -> None:
        self.spec = spec or RegisterSpec()
        self.dsn_any = dsn_any
        self.member_of = member_of
        rng = random.Random(seed ^ 0x5EED)
        self.clients = [
            RegisterClient(f"reg{i + 1}", dsn_any, member_of, self.spec, rng.randrange(1 << 30))
            for i in range(self.spec.clients)
        ]
        self._setup_ops: list[RegisterOp] = []

    def setup(self, timeout: float = 60.0) -> None:
        """The table, the cas function and 0 in every key, on the primary."""

        def attempt() -> bool:
            conn: Conn | None = None
            try:
                conn = connect(self.dsn_any)
                query(conn, REGISTER_SCHEMA_SQL.encode(), [], 30)
                ops = []
                for i in range(self.spec.keys):
                    send, call = time.time(), time.monotonic_ns()
                    rows = query(conn, WRITE_SQL, [f"k{i}".encode(), b"0"], 30)
                    addr = rows[0][1].decode() if rows and rows[0][1] is not None else None
                    ops.append(
                        RegisterOp(
                            "setup",
                            i + 1,
                            "write",
                            f"k{i}",
                            call,
                            "ok",
                            time.monotonic_ns(),
                            value=0,
                            send=send,
                            server=self.member_of(addr),
                        )
                    )
                self._setup_ops = ops
                return True
            finally:
                close_quietly(conn)

        retry_setup(attempt, timeout, "register setup: no primary")

    def start(self) -> None:
        start_all(self.clients)

    def stop(self) -> None:
        stop_all(self.clients, self.spec.query_timeout + 10)

    def ops(self) -> list[RegisterOp]:
        merged = self._setup_ops + [o for c in self.clients for o in c.snapshot()]
        return sorted(merged, key=lambda o: (o.call_ns, o.client, o.op_id))
