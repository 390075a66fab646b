"""A writer that measures what users feel: acknowledged writes and the gaps between them.

One thread inserts a row with a unique id every ``interval`` seconds through a multi-host DSN
(``target_session_attrs=read-write``), reconnecting after any error. Each attempt is recorded with
its send and ack times (monotonic) and the port of the server that acknowledged it, so a test can
compute the write-unavailability window and check that every acknowledged row survived.
"""

from __future__ import annotations

import itertools
import threading
import time
from dataclasses import dataclass, field

import psycopg

TABLE = "pgquorum_writes"


@dataclass(frozen=True)
class Attempt:
    id: int
    sent: float
    acked: float | None  # None: failed / not acknowledged
    server_port: int | None = None


@dataclass
class Writer:
    dsn: str
    interval: float = 0.01
    attempts: list[Attempt] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def prepare(self) -> None:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute(f"CREATE TABLE IF NOT EXISTS {TABLE} (id bigint PRIMARY KEY, at timestamptz DEFAULT now())")

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="writer", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=10)

    def _run(self) -> None:
        next_id = int(time.time() * 1000) * 1000  # unique across runs of the same table
        conn: psycopg.Connection | None = None
        port: int | None = None
        while not self._stop.is_set():
            next_id += 1
            sent = time.monotonic()
            try:
                if conn is None or conn.closed:
                    conn = psycopg.connect(self.dsn, autocommit=True, connect_timeout=1)
                    port = int(conn.info.port)
                conn.execute(f"INSERT INTO {TABLE} (id) VALUES (%s)", (next_id,))
                self.attempts.append(Attempt(next_id, sent, time.monotonic(), port))
            except psycopg.Error:
                self.attempts.append(Attempt(next_id, sent, None, port))
                if conn is not None:
                    conn.close()
                conn = None
            delay = self.interval - (time.monotonic() - sent)
            if delay > 0:
                self._stop.wait(delay)
        if conn is not None:
            conn.close()

    # -- analysis ----------------------------------------------------------------------------
    def acked(self) -> list[Attempt]:
        return [a for a in self.attempts if a.acked is not None]

    def max_gap(self, after: float = 0.0) -> float:
        """The longest time between two consecutive acknowledgements after ``after`` (monotonic)."""
        return max_ack_gap([a.acked for a in self.acked() if a.acked is not None], after)

    def missing(self, dsn: str) -> list[int]:
        """Acknowledged ids that the (current) primary does not have: lost writes."""
        with psycopg.connect(dsn, autocommit=True) as conn:
            present = {row[0] for row in conn.execute(f"SELECT id FROM {TABLE}")}
        return [a.id for a in self.acked() if a.id not in present]


def max_ack_gap(acks: list[float], after: float = 0.0) -> float:
    times = sorted(t for t in acks)
    gaps = [b - a for a, b in itertools.pairwise(times) if b >= after]
    return max(gaps, default=0.0)
