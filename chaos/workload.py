"""The chaos workload: concurrent clients recording every operation as an ``Op``.

* **writers** insert rows with unique keys through the multi-host DSN (``target_session_attrs=
  read-write``: whichever member is writable, the way an application connects);
* **pinned writers**, one per member, always write to *that* member: a stale primary that still
  accepts writes is caught by them (the application with an old connection string or pool);
* a **transfer** client moves money between accounts (one server-side function: lock both rows
  in id order, debit only if the balance suffices, credit, log the transfer);
* **readers**, one per member, read the sum / minimum / count of all balances (any member, a
  snapshot each).

Every statement reads ``pgquorum.current_term()`` *in its own transaction* and returns the server's
address, so the checker knows which member acknowledged it under which term.

Outcomes: ``ok`` once the server answered; ``fail`` when the operation certainly did not commit
(no connection, or an error that aborts the transaction before commit: read-only, constraint,
serialization/deadlock, the fencing token, an undefined object); ``unknown`` for everything else
(connection lost, server shut down, our deadline): the commit may or may not have happened.

Queries run with a hard client-side deadline (``pgwire.query``).
"""

from __future__ import annotations

import abc
import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import psycopg

from pgquorum.chaos.history import FinalState, Op, Transfer
from pgquorum.chaos.pgwire import Conn, QueryError, close_quietly, connect, query

SCHEMA_SQL = """
CREATE TABLE IF NOT EXISTS chaos_writes (
    id text PRIMARY KEY, client text NOT NULL, term bigint, at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS chaos_accounts (id text PRIMARY KEY, balance bigint NOT NULL);
CREATE TABLE IF NOT EXISTS chaos_transfers (
    id text PRIMARY KEY, src text NOT NULL, dst text NOT NULL, amount bigint NOT NULL, term bigint
);
CREATE OR REPLACE FUNCTION chaos_transfer(p_id text, p_src text, p_dst text, p_amount bigint,
                                          OUT o_term bigint, OUT o_applied boolean)
LANGUAGE plpgsql AS $$
BEGIN
    -- both rows locked in id order: two opposite transfers cannot deadlock
    PERFORM 1 FROM chaos_accounts WHERE id IN (p_src, p_dst) ORDER BY id FOR UPDATE;
    UPDATE chaos_accounts SET balance = balance - p_amount WHERE id = p_src AND balance >= p_amount;
    o_applied := FOUND;
    IF o_applied THEN
        UPDATE chaos_accounts SET balance = balance + p_amount WHERE id = p_dst;
        INSERT INTO chaos_transfers (id, src, dst, amount, term)
            VALUES (p_id, p_src, p_dst, p_amount, pgquorum.current_term());
    END IF;
    o_term := pgquorum.current_term();
END $$;
"""

WRITE_SQL = (
    b"INSERT INTO chaos_writes (id, client, term) SELECT $1, $2, pgquorum.current_term() "
    b"RETURNING term, host(inet_server_addr())"
)
TRANSFER_SQL = b"SELECT o_term, o_applied, host(inet_server_addr()) FROM chaos_transfer($1, $2, $3, $4)"
READ_SQL = (
    b"SELECT sum(balance), min(balance), count(*), pgquorum.current_term(), host(inet_server_addr()) "
    b"FROM chaos_accounts"
)
# SQLSTATE classes of errors that abort the transaction before it commits: data exception,
# integrity, invalid transaction state (read-only), rollback (serialization, deadlock), syntax /
# undefined object, PL/pgSQL raise, pgquorum's fencing token (PQ001).
CERTAIN_FAILURE_CLASSES = frozenset({"22", "23", "25", "40", "42", "P0", "PQ"})

P = TypeVar("P")  # a client's operation between its start and its outcome
R = TypeVar("R")  # what a client records per operation


def classify(exc: BaseException) -> str:
    """``fail`` when the error certainly aborted the transaction before commit, else ``unknown``."""
    if isinstance(exc, QueryError) and exc.sqlstate and exc.sqlstate[:2] in CERTAIN_FAILURE_CLASSES:
        # 25P0x (idle-in-transaction timeouts) are raised around, not before, a commit: unknown
        return "unknown" if exc.sqlstate.startswith("25P0") else "fail"
    return "unknown"


def _short(exc: BaseException) -> str:
    text = " | ".join(line.strip() for line in str(exc).strip().splitlines() if line.strip())
    state = getattr(exc, "sqlstate", None)
    return f"{type(exc).__name__}{f'[{state}]' if state else ''}: {text}"[:200]


@dataclass(frozen=True)
class WorkloadSpec:
    writers: int = 2  # through the multi-host DSN
    write_interval: float = 0.02
    pinned: bool = True  # one writer per member
    pinned_interval: float = 0.1
    transfer_clients: int = 1
    transfer_interval: float = 0.03
    readers: bool = True  # one reader per member
    read_interval: float = 0.25
    accounts: int = 8
    initial_balance: int = 100
    query_timeout: float = 2.0
    reconnect_pause: float = 0.025


class PacedClient(threading.Thread, Generic[P, R], abc.ABC):
    """The loop of every chaos client (and bench's writer): one operation every ``interval`` seconds
    against ``dsn``, outcomes by ``classify``, a new connection after an ``unknown`` one
    (``_drops_connection``). Subclasses say what an operation is (``_begin``), what an answer means
    (``_ok``) and how a failed one is recorded (``_end``)."""

    def __init__(
        self,
        name: str,
        dsn: str,
        member_of: Callable[[str | None], str | None],
        *,
        interval: float,
        query_timeout: float,
        reconnect_pause: float,
        seed: int,
    ) -> None:
        super().__init__(name=f"chaos-{name}", daemon=True)
        self.client = name
        self.dsn = dsn
        self.member_of = member_of
        self.interval = interval
        self.query_timeout = query_timeout
        self.reconnect_pause = reconnect_pause
        self.rng = random.Random(seed)
        self.ops: list[R] = []
        self._lock = threading.Lock()
        self._stop_evt = threading.Event()

    def stop(self) -> None:
        self._stop_evt.set()

    def snapshot(self) -> list[R]:
        with self._lock:
            return list(self.ops)

    def _record(self, op: R) -> None:
        with self._lock:
            self.ops.append(op)

    @abc.abstractmethod
    def _begin(self, n: int) -> tuple[bytes, list[bytes | None], P]:
        """(sql, params, pending) of operation ``n``; the send time is taken here."""
        raise NotImplementedError

    def _connected(self, conn: Conn) -> None:
        """A new connection, before its first statement."""

    @abc.abstractmethod
    def _ok(self, pending: P, rows: list[list[bytes | None]], server: str | None) -> None:
        """Record the answered operation (``server``: the member the connection was made to)."""
        raise NotImplementedError

    @abc.abstractmethod
    def _end(self, pending: P, outcome: str, server: str | None, exc: BaseException) -> None:
        """Record the operation that raised ``exc``, with ``outcome`` fail or unknown."""
        raise NotImplementedError

    def _drops_connection(self, outcome: str) -> bool:
        """After an error: reconnect before the next operation (and pause ``reconnect_pause``)?"""
        return outcome == "unknown"  # the connection may be broken or mid-transaction

    def run(self) -> None:
        conn: Conn | None = None
        n = 0
        next_t = time.monotonic()
        try:
            while not self._stop_evt.is_set():
                delay = next_t - time.monotonic()
                if delay > 0 and self._stop_evt.wait(delay):
                    break
                next_t = max(next_t + self.interval, time.monotonic())
                n += 1
                sql, params, pending = self._begin(n)
                server: str | None = None
                try:
                    if conn is None:
                        try:
                            conn = connect(self.dsn)
                        except Exception as exc:  # nothing was sent: certainly not applied
                            self._end(pending, "fail", None, exc)
                            next_t = max(next_t, time.monotonic() + self.reconnect_pause)
                            continue
                        self._connected(conn)
                    server = self.member_of(conn.pgconn.host.decode() if conn.pgconn.host else None)
                    rows = query(conn, sql, params, self.query_timeout)
                    self._ok(pending, rows, server)
                except Exception as exc:
                    outcome = classify(exc)
                    self._end(pending, outcome, server, exc)
                    if self._drops_connection(outcome):
                        close_quietly(conn)
                        conn = None
                        next_t = max(next_t, time.monotonic() + self.reconnect_pause)
        finally:
            close_quietly(conn)


def retry_setup(attempt: Callable[[], bool], timeout: float, what: str) -> None:
    """``attempt`` every 0.5 s until it returns True; RuntimeError ``<what> within <timeout> s`` after
    ``timeout`` (a failover or a late leader makes the first attempts fail)."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            if attempt():
                return
        except Exception as exc:
            last = exc
        time.sleep(0.5)
    raise RuntimeError(f"{what} within {timeout:g} s ({last})")


def start_all(clients: Sequence[threading.Thread]) -> None:
    for c in clients:
        c.start()


def stop_all(clients: Sequence[PacedClient[Any, Any]], join_timeout: float) -> None:
    """All told to stop first, then joined: they wind down together."""
    for c in clients:
        c.stop()
    for c in clients:
        c.join(join_timeout)


@dataclass(frozen=True)
class _Pending:
    n: int
    send: float
    key: str | None
    value: dict[str, object]


class Client(PacedClient[_Pending, Op]):
    """One client: ``kind`` write | transfer | read, against ``dsn``, every ``interval`` seconds."""

    def __init__(
        self,
        name: str,
        kind: str,
        dsn: str,
        member_of: Callable[[str | None], str | None],
        *,
        run_id: str,
        interval: float,
        spec: WorkloadSpec,
        seed: int,
    ) -> None:
        super().__init__(
            name,
            dsn,
            member_of,
            interval=interval,
            query_timeout=spec.query_timeout,
            reconnect_pause=spec.reconnect_pause,
            seed=seed,
        )
        self.kind = kind
        self.run_id = run_id
        self.spec = spec
        self._notices: list[str] = []

    def _statement(self, n: int) -> tuple[bytes, list[bytes | None], str | None, dict[str, object]]:
        """(sql, params, key, value) of operation ``n``."""
        if self.kind == "write":
            key = f"{self.run_id}-{self.client}-{n}"
            return WRITE_SQL, [key.encode(), self.client.encode()], key, {}
        if self.kind == "transfer":
            key = f"{self.run_id}-{self.client}-{n}"
            src, dst = self.rng.sample(range(1, self.spec.accounts + 1), 2)
            amount = self.rng.randint(1, self.spec.initial_balance // 2)
            value: dict[str, object] = {"src": f"a{src}", "dst": f"a{dst}", "amount": amount}
            params: list[bytes | None] = [key.encode(), f"a{src}".encode(), f"a{dst}".encode(), str(amount).encode()]
            return TRANSFER_SQL, params, key, value
        return READ_SQL, [], None, {}

    def _begin(self, n: int) -> tuple[bytes, list[bytes | None], _Pending]:
        sql, params, key, value = self._statement(n)
        # notices arrive only while a statement runs: cleared here, they are this operation's
        self._notices.clear()
        return sql, params, _Pending(n, time.time(), key, value)

    def _connected(self, conn: Conn) -> None:
        conn.add_notice_handler(lambda d: self._notices.append(d.message_primary or ""))

    def _end(self, pending: _Pending, outcome: str, server: str | None, exc: BaseException) -> None:
        p = pending
        self._record(
            Op(self.client, p.n, self.kind, p.send, outcome, time.time(), server, None, p.key, p.value, _short(exc))
        )

    def _ok(self, pending: _Pending, rows: list[list[bytes | None]], server: str | None) -> None:
        ack = time.time()
        n, send, key = pending.n, pending.send, pending.key
        row = rows[0] if rows else []

        def text(i: int) -> str | None:
            return row[i].decode() if len(row) > i and row[i] is not None else None  # type: ignore[union-attr]

        def num(i: int) -> int | None:
            t = text(i)
            return int(t) if t is not None else None

        value = dict(pending.value)
        if self.kind == "write":
            term, addr = num(0), text(1)
        elif self.kind == "transfer":
            term, addr = num(0), text(2)
            value["applied"] = text(1) == "t"
        else:
            value.update(total=num(0), min=num(1), count=num(2))
            term, addr = num(3), text(4)
        if any("synchronous replication" in m for m in self._notices):
            # acknowledged although the server gave up waiting for its standbys: recorded for the report
            value["sync_rep_warning"] = True
        self._record(Op(self.client, n, self.kind, send, "ok", ack, self.member_of(addr) or server, term, key, value))


class Workload:
    """All clients of one run; ``ops()`` merges their histories."""

    def __init__(
        self,
        dsn_any: str,
        member_dsns: dict[str, str],
        member_of: Callable[[str | None], str | None],
        *,
        run_id: str,
        spec: WorkloadSpec | None = None,
        seed: int = 0,
    ) -> None:
        self.spec = spec or WorkloadSpec()
        self.dsn_any = dsn_any
        s = self.spec
        rng = random.Random(seed)
        clients: list[Client] = []

        def add(name: str, kind: str, dsn: str, interval: float) -> None:
            clients.append(
                Client(
                    name, kind, dsn, member_of, run_id=run_id, interval=interval, spec=s, seed=rng.randrange(1 << 30)
                )
            )

        for i in range(s.writers):
            add(f"w{i + 1}", "write", dsn_any, s.write_interval)
        if s.pinned:
            for m, dsn in member_dsns.items():
                add(f"p-{m}", "write", dsn, s.pinned_interval)
        for i in range(s.transfer_clients):
            add(f"t{i + 1}", "transfer", dsn_any, s.transfer_interval)
        if s.readers:
            for m, dsn in member_dsns.items():
                add(f"r-{m}", "read", dsn, s.read_interval)
        self.clients = clients

    def setup(self, timeout: float = 60.0) -> None:
        """Tables, the transfer function and the accounts, on the primary; waits for the fencing
        token (the leader writes the term row shortly after it starts leading)."""

        def attempt() -> bool:
            with psycopg.connect(self.dsn_any, autocommit=True) as conn:
                query(conn, SCHEMA_SQL.encode(), [], 30)
                query(
                    conn,
                    f"INSERT INTO chaos_accounts SELECT 'a' || i, {int(self.spec.initial_balance)} "
                    f"FROM generate_series(1, {int(self.spec.accounts)}) i ON CONFLICT DO NOTHING".encode(),
                    [],
                    30,
                )
                rows = query(conn, b"SELECT pgquorum.current_term()", [], 10)
                return bool(rows and rows[0][0] is not None)

        retry_setup(attempt, timeout, "workload setup: no primary with a fencing token")

    def start(self) -> None:
        start_all(self.clients)

    def stop(self) -> None:
        stop_all(self.clients, self.spec.query_timeout + 10)

    def ops(self) -> list[Op]:
        return sorted((o for c in self.clients for o in c.snapshot()), key=lambda o: (o.send, o.client, o.op_id))

    def acked_since(self, t: float) -> int:
        """Acknowledged writes/transfers sent at or after ``t`` (to see writes flow again)."""
        return sum(1 for c in self.clients for o in c.snapshot() if o.acked and o.mutates and o.send >= t)

    def read_final(self, dsn: str, timeout: float = 60.0) -> FinalState:
        with psycopg.connect(dsn, autocommit=True) as conn:
            writes = query(conn, b"SELECT id FROM chaos_writes", [], timeout)
            transfers = query(conn, b"SELECT id, src, dst, amount FROM chaos_transfers", [], timeout)
            accounts = query(conn, b"SELECT id, balance FROM chaos_accounts", [], timeout)

        def s(v: bytes | None) -> str:
            return (v or b"").decode()

        return FinalState(
            writes=frozenset(s(r[0]) for r in writes),
            transfers={s(r[0]): Transfer(s(r[1]), s(r[2]), int(s(r[3]))) for r in transfers},
            balances={s(r[0]): int(s(r[1])) for r in accounts},
            initial_balance=self.spec.initial_balance,
        )


def digest(dsn: str, timeout: float = 30.0) -> tuple[int, int, str]:
    """(writes, transfers, md5 of all balances) on one member: replicas must converge to the leader."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = query(
            conn,
            b"SELECT (SELECT count(*) FROM chaos_writes), (SELECT count(*) FROM chaos_transfers), "
            b"(SELECT md5(string_agg(id || ':' || balance, ',' ORDER BY id)) FROM chaos_accounts)",
            [],
            timeout,
        )
    r = rows[0]
    return int((r[0] or b"0").decode()), int((r[1] or b"0").decode()), (r[2] or b"").decode()
