"""Userspace TCP proxies (asyncio, in a background thread of the harness).

bench/: every member reaches etcd through its own proxy, so one member can be cut from
etcd without network namespaces or firewall rules. chaos/slowlink.py: a proxy process inside a
node's namespace delays the node's links (no ``tc netem`` on this kernel).  Modes:

* ``pass``      forward bytes both ways (optionally delayed by ``delay`` s);
* ``blackhole`` like a dropped link: nothing is forwarded, new connections are
                accepted by the kernel but never answered, open connections
                hang (bytes already read are held, and delivered on heal, as
                TCP retransmission would);
* ``reset``     every open connection is closed and new ones are closed at once
                (like a refused / reset link).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

log = logging.getLogger("pgquorum.chaos.tcpproxy")

Mode = Literal["pass", "blackhole", "reset"]
T = TypeVar("T")
_CHUNK = 65536


@dataclass
class _Proxy:
    name: str
    target_host: str
    target_port: int
    listen_port: int = 0
    mode: Mode = "pass"
    delay: float = 0.0
    server: asyncio.Server | None = None
    open_evt: asyncio.Event = field(default_factory=asyncio.Event)
    conns: set[asyncio.Task[None]] = field(default_factory=set)
    accepted: int = 0


class ProxyHub:
    """Owns an event loop thread and any number of named TCP proxies."""

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="proxy-hub", daemon=True)
        self._proxies: dict[str, _Proxy] = {}
        self._thread.start()

    # -- public, thread-safe API ------------------------------------------------

    def add(
        self, name: str, target_host: str, target_port: int, listen_port: int = 0, listen_host: str = "127.0.0.1"
    ) -> int:
        """Start a proxy to ``target``; returns the port it listens on (on ``listen_host``)."""
        return self._call(self._add(name, target_host, target_port, listen_port, listen_host))

    def set_mode(self, name: str, mode: Mode, delay: float = 0.0) -> None:
        self._call(self._set_mode(name, mode, delay))

    def mode(self, name: str) -> Mode:
        return self._proxies[name].mode

    def port(self, name: str) -> int:
        return self._proxies[name].listen_port

    def names(self) -> list[str]:
        return list(self._proxies)

    def heal_all(self) -> None:
        for name in list(self._proxies):
            self.set_mode(name, "pass")

    def close(self) -> None:
        if self._loop.is_closed():
            return
        with contextlib.suppress(Exception):
            self._call(self._close_all(), timeout=5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        if not self._loop.is_running():
            self._loop.close()

    # -- internals --------------------------------------------------------------

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_forever()

    def _call(self, coro: Coroutine[Any, Any, T], timeout: float = 10.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    async def _add(self, name: str, host: str, port: int, listen_port: int, listen_host: str) -> int:
        p = _Proxy(name, host, port)
        p.open_evt.set()

        async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            task = asyncio.current_task()
            assert task is not None
            p.conns.add(task)
            p.accepted += 1
            try:
                await self._serve(p, reader, writer)
            except asyncio.CancelledError:
                pass
            finally:
                p.conns.discard(task)
                writer.close()

        p.server = await asyncio.start_server(on_client, listen_host, listen_port)
        p.listen_port = int(p.server.sockets[0].getsockname()[1])
        self._proxies[name] = p
        return p.listen_port

    async def _set_mode(self, name: str, mode: Mode, delay: float) -> None:
        p = self._proxies[name]
        changed = (p.mode, p.delay) != (mode, delay)
        p.mode, p.delay = mode, delay
        if mode == "pass":
            p.open_evt.set()
        else:
            p.open_evt.clear()
        if mode == "reset":
            for t in list(p.conns):
                t.cancel()
        if changed:
            log.info("proxy %s -> %s%s", name, mode, f" (+{delay * 1000:.0f} ms)" if delay else "")

    async def _close_all(self) -> None:
        for p in self._proxies.values():
            if p.server is not None:
                p.server.close()
            for t in list(p.conns):
                t.cancel()
        await asyncio.sleep(0)

    async def _serve(self, p: _Proxy, creader: asyncio.StreamReader, cwriter: asyncio.StreamWriter) -> None:
        if p.mode == "reset":
            return
        await p.open_evt.wait()  # blackhole: hold the new connection unanswered
        if self._is_reset(p):
            return
        try:
            ureader, uwriter = await asyncio.open_connection(p.target_host, p.target_port)
        except OSError:
            return
        try:
            await asyncio.gather(self._pump(p, creader, uwriter), self._pump(p, ureader, cwriter))
        finally:
            uwriter.close()

    @staticmethod
    def _is_reset(p: _Proxy) -> bool:
        return p.mode == "reset"

    async def _pump(self, p: _Proxy, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def deliver() -> None:
            while True:
                due, data = await queue.get()
                if not data:
                    break
                now = time.monotonic()
                if due > now:
                    await asyncio.sleep(due - now)
                await p.open_evt.wait()
                writer.write(data)
                await writer.drain()
            with contextlib.suppress(OSError):
                if writer.can_write_eof():
                    writer.write_eof()

        sender = asyncio.create_task(deliver())
        try:
            while True:
                await p.open_evt.wait()
                data = await reader.read(_CHUNK)
                queue.put_nowait((time.monotonic() + p.delay, data))
                if not data:
                    break
            await sender
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            sender.cancel()
