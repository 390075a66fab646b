"""A full disk: a ballast file fills a member's data volume (its own tmpfs, chaos/cluster.py) until
ENOSPC, and is topped up while the fault holds, so space PostgreSQL frees (a recycled WAL segment,
a removed temporary file) is taken again at once, as by a runaway log.

The ballast lives in ``PGDATA/pg_stat_tmp``: the volume is PGDATA itself, and pg_basebackup and
pg_rewind skip that directory's contents, so a replica cloned or rewound meanwhile never copies it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import threading
from pathlib import Path

NAME = "pgquorum-chaos-ballast"
_CHUNKS = (1 << 20, 1 << 12)  # 1 MiB while it fits, then pages to the very last one


def top_up(path: Path) -> int:
    """Append zeros to ``path`` until the filesystem says ENOSPC; returns the bytes added."""
    added = 0
    with open(path, "ab", buffering=0) as f:
        for size in _CHUNKS:
            buf = bytes(size)
            while True:
                try:
                    n = f.write(buf)
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    break
                added += n or 0
                if not n:
                    break
    return added


def free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


class Ballast:
    """Fill the volume holding ``pgdata`` and keep it full until ``stop`` (which deletes the file)."""

    def __init__(self, pgdata: Path, interval: float = 0.5) -> None:
        tmp = pgdata / "pg_stat_tmp"
        self.path = (tmp if tmp.is_dir() else pgdata) / NAME
        self.interval = interval
        self.written = 0
        self.topped_up = 0  # bytes taken back after the first fill
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> int:
        """Fill now (returns the bytes written); a thread tops up every ``interval`` seconds."""
        self.written = top_up(self.path)
        self._thread = threading.Thread(target=self._loop, name="chaos-ballast", daemon=True)
        self._thread.start()
        return self.written

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            with contextlib.suppress(OSError):  # e.g. the volume vanished at teardown
                self.topped_up += top_up(self.path)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


class WalSwitcher:
    """While the volume is full, ask the primary to switch WAL segments (``pg_switch_wal()``) every
    ``interval`` seconds: each switch takes one of the segments PostgreSQL preallocated or recycled,
    and once they are used up the next one cannot be created (ENOSPC). Without this a lightly
    loaded primary writes into its current segment for minutes. Stops at ``stop`` or when the
    server no longer answers; ``switches`` counts the ones that succeeded, ``last_error`` the end."""

    def __init__(self, dsn: str, interval: float = 0.3) -> None:
        self.dsn = dsn
        self.interval = interval
        self.switches = 0
        self.last_error = ""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="chaos-walswitch", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _loop(self) -> None:
        import psycopg

        while not self._stop.wait(self.interval):
            try:
                with psycopg.connect(self.dsn, autocommit=True, connect_timeout=2) as conn:
                    conn.execute("SET statement_timeout = '2s'")
                    conn.execute("SELECT pg_switch_wal()")
                    self.switches += 1
            except psycopg.Error as exc:
                self.last_error = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                return

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
