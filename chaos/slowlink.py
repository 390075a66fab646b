"""Slow links between namespaces without ``tc netem``: a userspace delay proxy per node.

Inside the node's namespace, an nftables ``nat output`` rule redirects every *new* TCP connection
that a non-root process (agent, postgres: they run as ``postgres``) opens to ``peer:port`` onto a
proxy listening on the node's own address; the proxy (``python -m pgquorum.chaos.slowlink``, run
as root inside the same namespace, so its own upstream connections are not redirected) forwards
to the real peer and delivers every chunk ``delay`` seconds after it read it, both ways
(pgquorum.chaos.tcpproxy). A round trip through it costs ``2 * delay`` more; throughput is not
limited.

NAT applies to new connections only: connections already open when the rules go in would keep
the fast path, so ``start`` cuts them (``ss -K``: the local socket is aborted and a RST sent to the
peer) and the agent, the WAL receiver and the etcd client reconnect through the proxy. ``stop``
ends the proxy, which closes the connections it carried, then removes the rules: they reconnect
directly.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pgquorum.chaos.netns import NetnsError, TestBed
from pgquorum.chaos.procs import REAPER

TABLE = "pqslow"
BASE_PORT = 7100  # proxy listen ports: below the ephemeral range, clear of 2379/2380/5432/8008
READY = "slowlink ready"


@dataclass(frozen=True)
class Route:
    """Connections to ``peer:port`` go to the proxy's ``listen_port`` on the node's own address."""

    peer: str
    port: int
    listen_port: int

    def spec(self) -> str:
        return f"{self.listen_port}={self.peer}:{self.port}"


def plan(targets: Sequence[tuple[str, int]], base_port: int = BASE_PORT) -> list[Route]:
    """One proxy port per distinct (peer address, port), numbered from ``base_port``."""
    routes: list[Route] = []
    seen: set[tuple[str, int]] = set()
    for addr, port in targets:
        ipaddress.IPv4Address(addr)  # ValueError names the bad address
        if not 0 < port < 65536:
            raise ValueError(f"port: expected 1-65535, got {port}")
        if (addr, port) in seen:
            continue
        seen.add((addr, port))
        routes.append(Route(addr, port, base_port + len(routes)))
    return routes


def ruleset(own_addr: str, routes: Sequence[Route]) -> str:
    """The nftables table redirecting non-root connections of ``routes`` to the local proxy."""
    rules = "".join(
        f"    meta skuid != 0 ip daddr {r.peer} tcp dport {r.port} dnat to {own_addr}:{r.listen_port}\n" for r in routes
    )
    return (
        f"table ip {TABLE} {{\n"
        "  chain output {\n"
        "    type nat hook output priority -100; policy accept;\n"
        f"{rules}"
        "  }\n"
        "}\n"
    )


def parse_route(text: str) -> Route:
    """``LISTEN_PORT=HOST:PORT`` (the proxy's command line)."""
    try:
        listen, target = text.split("=", 1)
        host, port = target.rsplit(":", 1)
        ipaddress.IPv4Address(host)
        return Route(host, int(port), int(listen))
    except ValueError:
        raise ValueError(f"route {text!r}: expected LISTEN_PORT=IPV4:PORT") from None


class SlowLink:
    """Delay the connections node ``node`` opens to ``targets`` (addresses and ports) by ``delay``
    seconds per direction; ``start`` / ``stop``."""

    def __init__(
        self,
        bed: TestBed,
        node: str,
        targets: Sequence[tuple[str, int]],
        delay: float,
        *,
        python: str,
        log_path: Path,
    ) -> None:
        if not 0 <= delay < 60:
            raise ValueError(f"delay: expected 0-60 s, got {delay}")
        self.bed = bed
        self.node = node
        self.addr = bed.addr(node)
        self.routes = plan(targets)
        self.delay = delay
        self.python = python
        self.log_path = log_path
        self._proc: subprocess.Popen[bytes] | None = None
        self.cut = 0  # connections aborted at start

    def start(self, timeout: float = 15.0) -> None:
        try:
            self._start_proxy(timeout)
            self._nft(ruleset(self.addr, self.routes), "-f", "-")
            for r in self.routes:
                out = self.bed.run(self.node, ["ss", "-K", "-H", "-t", "dst", r.peer, "dport", "=", f":{r.port}"])
                self.cut += len([line for line in out.stdout.splitlines() if line.strip()])
        except BaseException:
            self.stop()
            raise

    def _start_proxy(self, timeout: float) -> None:
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        argv = [self.python, "-m", "pgquorum.chaos.slowlink", "--listen", self.addr, "--delay", f"{self.delay:g}"]
        self._proc = self.bed.popen(self.node, argv + [r.spec() for r in self.routes], log_path=self.log_path)
        REAPER.own(self._proc.pid)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with open(self.log_path, "rb") as f:
                f.seek(offset)
                if READY.encode() in f.read():
                    return
            if self._proc.poll() is not None:
                raise NetnsError(f"delay proxy in {self.node} exited ({self._proc.returncode}): see {self.log_path}")
            time.sleep(0.05)
        raise NetnsError(f"delay proxy in {self.node} not ready within {timeout:g} s: see {self.log_path}")

    def _nft(self, text: str | None, *args: str) -> None:
        argv = self.bed.exec_argv(self.node, ["nft", *args])
        proc = subprocess.run(argv, input=text, capture_output=True, text=True, timeout=15, check=False)
        if proc.returncode != 0:
            raise NetnsError(f"nft {' '.join(args)} in {self.node} failed: {proc.stderr.strip()}")

    def stop(self) -> None:
        """End the proxy, then remove the redirection. In this order: the proxy's FINs must still be
        translated back by the NAT table, or the clients' sockets would not see them and would learn
        that their connection is gone only when they next send (a WAL receiver: up to 10 s later)."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(5)
        self._proc = None
        if self.bed.is_up:
            with contextlib.suppress(NetnsError, subprocess.SubprocessError):
                self._nft(None, "delete", "table", "ip", TABLE)


# ----------------------------------------------------------------------------- the proxy process


def main(argv: Sequence[str] | None = None) -> int:
    from pgquorum.chaos.tcpproxy import ProxyHub

    ap = argparse.ArgumentParser(prog="python -m pgquorum.chaos.slowlink", description="delay proxy of chaos runs")
    ap.add_argument("--listen", required=True, help="address to listen on (the node's own)")
    ap.add_argument("--delay", type=float, required=True, help="seconds added to every chunk, each direction")
    ap.add_argument("routes", nargs="+", help="LISTEN_PORT=IPV4:PORT")
    args = ap.parse_args(argv)
    try:
        routes = [parse_route(r) for r in args.routes]
        if not 0 <= args.delay < 60:
            raise ValueError(f"--delay: expected 0-60 s, got {args.delay}")
    except ValueError as exc:
        print(f"slowlink: {exc}", file=sys.stderr)
        return 2
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    hub = ProxyHub()
    try:
        for r in routes:
            name = r.spec()
            hub.add(name, r.peer, r.port, listen_port=r.listen_port, listen_host=args.listen)
            hub.set_mode(name, "pass", args.delay)
        print(f"{READY}: +{args.delay * 1000:.0f} ms each way; {' '.join(args.routes)}", flush=True)
        stop.wait()
    except OSError as exc:
        print(f"slowlink: {exc}", file=sys.stderr)
        return 1
    finally:
        hub.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
