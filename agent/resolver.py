"""Name resolution with a deadline and the last good answer: the agent's ``socket.getaddrinfo``.

On Kubernetes the agents reach etcd by a Service's (or the bundled etcd members') DNS name. When a
node is cut off, a CoreDNS replica on it keeps receiving part of the queries until the node is
marked NotReady (~40 s), and each such query waits out the resolver's 5 s timeout: the agents'
loops stalled 10-20 s per pass, their member keys expired, and a failover that takes 4 s took
50-55 s (measured; the log said ``NameResolutionError`` for ``etcd.<ns>.svc``).

So a lookup waits at most ``deadline`` seconds when an earlier one of the same name succeeded,
and then answers with that earlier result (a Service's address does not change; a pod's does, and
the next successful lookup replaces it). A lookup never made before waits as long as the system
resolver takes. At most one lookup per name is in flight: a stalled one is joined, not repeated.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import threading
from collections.abc import Callable
from typing import Any

log = logging.getLogger("pgquorum.resolver")

DEADLINE = 0.5  # seconds a lookup may take before the last good answer is used

AddrInfo = list[tuple[Any, ...]]
Resolve = Callable[..., AddrInfo]


class _Lookup:
    def __init__(self) -> None:
        self.done = threading.Event()
        self.result: AddrInfo | None = None
        self.error: BaseException | None = None


class BoundedResolver:
    def __init__(self, resolve: Resolve = socket.getaddrinfo, deadline: float = DEADLINE) -> None:
        self._resolve = resolve
        self._deadline = deadline
        self._lock = threading.Lock()
        self._good: dict[tuple[Any, ...], AddrInfo] = {}
        self._inflight: dict[tuple[Any, ...], _Lookup] = {}
        self._warned: set[str] = set()

    def getaddrinfo(
        self, host: Any, port: Any, family: int = 0, type: int = 0, proto: int = 0, flags: int = 0
    ) -> AddrInfo:
        if not isinstance(host, str) or _literal(host):
            return self._resolve(host, port, family, type, proto, flags)
        key = (host, port, family, type, proto, flags)
        with self._lock:
            lookup = self._inflight.get(key)
            if lookup is None:
                lookup = self._inflight[key] = _Lookup()
                threading.Thread(target=self._run, args=(key, lookup), name="resolve", daemon=True).start()
            good = self._good.get(key)
        if not lookup.done.wait(self._deadline if good is not None else None):
            assert good is not None
            self._fall_back(host, f"no answer within {self._deadline:g} s")
            return list(good)
        if lookup.result is not None:
            return list(lookup.result)
        if good is not None:
            self._fall_back(host, str(lookup.error))
            return list(good)
        assert lookup.error is not None
        raise lookup.error

    def _run(self, key: tuple[Any, ...], lookup: _Lookup) -> None:
        try:
            lookup.result = self._resolve(*key)
        except BaseException as exc:
            lookup.error = exc
        with self._lock:
            if lookup.result is not None:
                self._good[key] = lookup.result
                self._warned.discard(key[0])
            del self._inflight[key]
        lookup.done.set()

    def _fall_back(self, host: str, why: str) -> None:
        with self._lock:
            first = host not in self._warned
            self._warned.add(host)
        if first:
            log.warning(
                "name resolution slow or failing: using the last address it gave",
                extra={"event": "resolver_fallback", "host": host, "reason": why[:200]},
            )


def _literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return host in ("", "localhost")
    return True


_installed: BoundedResolver | None = None


def install(deadline: float = DEADLINE) -> BoundedResolver:
    """Make this process's ``socket.getaddrinfo`` (what http.client and urllib3 — the etcd
    client, peer calls — resolve with) bounded as above. Idempotent."""
    global _installed
    if _installed is None:
        _installed = BoundedResolver(socket.getaddrinfo, deadline)
        socket.getaddrinfo = _installed.getaddrinfo
    return _installed
