"""SQL with a hard client-side deadline.

A stopped (SIGSTOP) or wedged server accepts the TCP/unix connection and then never answers:
libpq's connect_timeout cannot go below 2 s and statement_timeout is enforced by the very server
that hangs. So queries run on psycopg's async API in a private event-loop thread and the caller
waits on a future with its own timeout; an abandoned call keeps its connection to itself and
the connection is never reused.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import threading
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import psycopg
from psycopg import AsyncConnection, sql

from pgquorum.agent.postgres.errors import PostgresError, PostgresTimeout

log = logging.getLogger(__name__)

T = TypeVar("T")
Query = str | sql.SQL | sql.Composed
Conn = AsyncConnection[tuple[Any, ...]]


class Database:
    """Connections to one server (kept open between calls) plus one-shot connections to others."""

    def __init__(self, conninfo: str, what: str = "postgres"):
        self._conninfo = conninfo
        self._what = what
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._idle: Conn | None = None  # only touched on the loop thread

    def _ensure_loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                threading.Thread(target=loop.run_forever, name="pgquorum-sql", daemon=True).start()
                self._loop = loop
            return self._loop

    def run(self, fn: Callable[[Conn], Awaitable[T]], timeout: float, conninfo: str | None = None) -> T:
        """Run ``fn(conn)`` on a connection; PostgresTimeout after ``timeout`` seconds, whatever happens."""
        loop = self._ensure_loop()
        fut = asyncio.run_coroutine_threadsafe(self._call(fn, conninfo), loop)
        try:
            return fut.result(timeout)
        except concurrent.futures.TimeoutError:
            fut.cancel()
            target = "the source server" if conninfo else self._what
            raise PostgresTimeout(f"{target} did not answer within {timeout:.1f}s") from None
        except psycopg.Error as exc:
            raise PostgresError(f"{self._what}: {_one_line(exc)}") from None

    def query(
        self,
        query: Query,
        params: Sequence[Any] | None = None,
        timeout: float = 5.0,
        conninfo: str | None = None,
    ) -> list[tuple[Any, ...]]:
        async def fn(conn: Conn) -> list[tuple[Any, ...]]:
            cur = await conn.execute(query, params)
            return await cur.fetchall() if cur.description is not None else []

        return self.run(fn, timeout, conninfo)

    async def _call(self, fn: Callable[[Conn], Awaitable[T]], conninfo: str | None) -> T:
        if conninfo is not None:
            conn = await AsyncConnection.connect(conninfo, autocommit=True)
            try:
                return await fn(conn)
            finally:
                await _close(conn)
        # Check the idle connection out, so a call that hangs owns it alone.
        conn_or_none, self._idle = self._idle, None
        reused = conn_or_none is not None and not conn_or_none.closed and not conn_or_none.broken
        if conn_or_none is not None and reused:
            conn = conn_or_none
        else:
            conn = await AsyncConnection.connect(self._conninfo, autocommit=True)
        try:
            result = await fn(conn)
        except psycopg.OperationalError:
            await _close(conn)
            if not reused:
                raise
            # The kept session died with its server (restart, fence): one retry on a fresh one.
            conn = await AsyncConnection.connect(self._conninfo, autocommit=True)
            try:
                result = await fn(conn)
            except BaseException:
                await _close(conn)
                raise
        except BaseException:
            # Failed or cancelled: the session is in an unknown state.
            await _close(conn)
            raise
        if self._idle is None:
            self._idle = conn
        else:
            await _close(conn)
        return result

    def reset(self) -> None:
        """Drop the kept connection (after postgres restarted, say); the next call reconnects."""
        loop = self._loop
        if loop is None:
            return

        async def drop() -> None:
            conn, self._idle = self._idle, None
            if conn is not None:
                await _close(conn)

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(drop(), loop).result(2.0)

    def close(self) -> None:
        self.reset()
        with self._lock:
            loop, self._loop = self._loop, None
        if loop is not None:
            loop.call_soon_threadsafe(loop.stop)


async def _close(conn: Conn) -> None:
    with contextlib.suppress(Exception):
        await conn.close()


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return " ".join(text.split())
