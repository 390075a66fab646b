"""A multi-host test bed on one machine: one network namespace per node, joined by a bridge.

Layout (defaults)::

    host (root namespace)  pqcbr0  10.77.0.1/24   <- the harness and its clients live here
    node n1                pqc-n1  10.77.0.11/24  (veth pqc-n1 <-> pqc-n1.h on the bridge)
    node n2                pqc-n2  10.77.0.12/24  ...

Faults are nftables rules *inside* a node's namespace: a table ``inet pqchaos`` whose output and
input chains drop packets to/from the addresses in two sets (``blocked_out`` / ``blocked_in``).
Dropping (not rejecting) makes a cut look like a dead link: connections hang until their
timeouts. The host's address is never blocked unless asked for, so clients keep reaching every
node (the Jepsen model: a stale primary is still reachable by some client).

This kernel has no ``tc netem``: latency is not a packet rule here (a userspace proxy would do it).

One test bed at a time: the bed holds ``/run/pgquorum-chaos.lock`` (flock) while it exists, and on
``up()`` first removes whatever a previous run left under its prefix (namespaces and the
processes still in them, the bridge, veths). Teardown runs on ``down()``, on exceptions in the
``with`` block, and at interpreter exit.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO

LOCK_PATH = Path("/run/pgquorum-chaos.lock")
TABLE = "pqchaos"
_IFNAMSIZ = 15  # Linux interface names: at most 15 bytes


class NetnsError(RuntimeError):
    """A namespace operation failed; the message names the command and its error."""


def unavailable_reason() -> str | None:
    """Why this machine cannot host the test bed (None: it can). Used to skip tests clearly."""
    if os.geteuid() != 0:
        return "the chaos test bed needs root (network namespaces, veth, a bridge and nftables rules)"
    for tool, package in (("ip", "iproute2"), ("nft", "nftables"), ("setpriv", "util-linux")):
        if shutil.which(tool) is None:
            return f"'{tool}' is missing: apt-get install {package} (scripts/setup.sh installs it)"
    probe = f"pqcprobe{os.getpid() % 100000}"
    try:
        add = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True, timeout=10)
        if add.returncode != 0:
            return f"network namespaces unavailable: ip netns add: {add.stderr.strip()}"
        nft = subprocess.run(
            ["ip", "netns", "exec", probe, "nft", "add", "table", "inet", TABLE],
            capture_output=True,
            text=True,
            timeout=10,
        )
        if nft.returncode != 0:
            return f"nftables unusable inside a namespace: {nft.stderr.strip()}"
    except (OSError, subprocess.SubprocessError) as exc:
        return f"network namespaces unavailable: {exc}"
    finally:
        subprocess.run(["ip", "netns", "del", probe], capture_output=True, timeout=10, check=False)
    return None


def _run(argv: Sequence[str], timeout: float = 15.0, check: bool = True) -> subprocess.CompletedProcess[str]:
    try:
        proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise NetnsError(f"{' '.join(argv)}: no answer within {timeout:g} s") from None
    if check and proc.returncode != 0:
        raise NetnsError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.strip() or proc.stdout.strip()}")
    return proc


@dataclass(frozen=True)
class Node:
    name: str
    ns: str  # namespace name
    addr: str  # IPv4 address on the bridge's subnet
    veth: str  # interface inside the namespace
    veth_host: str  # its peer, enslaved to the bridge


FAULT_RULESET = (
    f"table inet {TABLE} {{\n"
    "  set blocked_out { type ipv4_addr; }\n"
    "  set blocked_in { type ipv4_addr; }\n"
    "  chain output { type filter hook output priority 0; policy accept; ip daddr @blocked_out drop; }\n"
    "  chain input { type filter hook input priority 0; policy accept; ip saddr @blocked_in drop; }\n"
    "}\n"
)


def add_bridge(bridge: str, addr_cidr: str) -> None:
    """A bridge in the host namespace with the host's address on it."""
    _run(["ip", "link", "add", bridge, "type", "bridge"])
    # Bridged frames would otherwise pass the host's iptables (br_netfilter), whose FORWARD
    # policy may drop them (e.g. where Docker ran); our rules live in the namespaces.
    _run(["ip", "link", "set", bridge, "type", "bridge", "nf_call_iptables", "0"], check=False)
    _run(["ip", "addr", "add", addr_cidr, "dev", bridge])
    _run(["ip", "link", "set", bridge, "up"])


def add_node(node: Node, bridge: str, prefixlen: int = 24) -> None:
    """Namespace ``node.ns`` joined to ``bridge`` by a veth pair, with the fault table (empty sets)."""
    _run(["ip", "netns", "add", node.ns])
    _run(["ip", "link", "add", node.veth_host, "type", "veth", "peer", "name", node.veth, "netns", node.ns])
    _run(["ip", "link", "set", node.veth_host, "master", bridge])
    _run(["ip", "link", "set", node.veth_host, "up"])
    _run(["ip", "-n", node.ns, "addr", "add", f"{node.addr}/{prefixlen}", "dev", node.veth])
    _run(["ip", "-n", node.ns, "link", "set", node.veth, "up"])
    _run(["ip", "-n", node.ns, "link", "set", "lo", "up"])
    nft(node.ns, ["-f", "-"], stdin=FAULT_RULESET)


def nft(ns: str, args: Sequence[str], stdin: str | None = None) -> str:
    """``nft args`` inside namespace ``ns``."""
    argv = ["ip", "netns", "exec", ns, "nft", *args]
    try:
        proc = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=15, check=False)
    except subprocess.TimeoutExpired:
        raise NetnsError(f"nft in {ns}: no answer within 15 s") from None
    if proc.returncode != 0:
        raise NetnsError(f"nft {' '.join(args)} in {ns} failed: {proc.stderr.strip()}")
    return proc.stdout


def kill_ns_pids(ns: str) -> None:
    """SIGKILL every process still inside namespace ``ns`` (our own debris: ns names are ours)."""
    for _ in range(5):
        out = _run(["ip", "netns", "pids", ns], check=False).stdout.split()
        pids = [int(p) for p in out if p.isdigit() and int(p) != os.getpid()]
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGCONT)  # a stopped process dies only once continued
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.2)


class TestBed:
    """Namespaces + bridge + veths for ``nodes``; see the module docstring."""

    __test__ = False  # not a pytest class despite the name

    def __init__(
        self,
        nodes: Sequence[str],
        *,
        prefix: str = "pqc",
        subnet: str = "10.77.0",
        first_host: int = 11,
        lock_timeout: float = 600.0,
        lock_path: Path = LOCK_PATH,
    ) -> None:
        if not nodes or len(set(nodes)) != len(nodes):
            raise ValueError(f"nodes: expected distinct names, got {list(nodes)}")
        if first_host + len(nodes) > 254:
            raise ValueError("too many nodes for one /24")
        self.prefix = prefix
        self.subnet = subnet
        self.bridge = f"{prefix}br0"
        self.host_addr = f"{subnet}.1"
        self.lock_timeout = lock_timeout
        self.lock_path = lock_path
        self.nodes: dict[str, Node] = {}
        for i, name in enumerate(nodes):
            ns = f"{prefix}-{name}"
            if len(ns) + 2 > _IFNAMSIZ:
                raise ValueError(f"node name {name!r} too long: {ns}.h must fit in {_IFNAMSIZ} characters")
            self.nodes[name] = Node(name, ns, f"{subnet}.{first_host + i}", ns, f"{ns}.h")
        self._lock: IO[str] | None = None
        self._up = False

    # ------------------------------------------------------------------ lifecycle

    def up(self) -> TestBed:
        reason = unavailable_reason()
        if reason:
            raise NetnsError(reason)
        self._acquire_lock()
        atexit.register(self.down)
        try:
            self.cleanup_debris()
            self._up = True
            add_bridge(self.bridge, f"{self.host_addr}/24")
            for node in self.nodes.values():
                self._add_node(node)
        except BaseException:
            self.down()
            raise
        return self

    def _add_node(self, node: Node) -> None:
        add_node(node, self.bridge)

    def down(self) -> None:
        """Kill what still runs in our namespaces, delete them and the bridge; release the lock."""
        try:
            if self._up:
                for node in self.nodes.values():
                    self._kill_ns_pids(node.ns)
                    _run(["ip", "netns", "del", node.ns], check=False)
                    _run(["ip", "link", "del", node.veth_host], check=False)
                _run(["ip", "link", "del", self.bridge], check=False)
                self._up = False
        finally:
            with contextlib.suppress(Exception):
                atexit.unregister(self.down)
            self._release_lock()

    @property
    def is_up(self) -> bool:
        return self._up

    def __enter__(self) -> TestBed:
        return self.up()

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.down()

    def cleanup_debris(self) -> list[str]:
        """Remove namespaces, veths and the bridge a previous run with our prefix left behind."""
        removed: list[str] = []
        listed = _run(["ip", "netns", "list"], check=False).stdout
        for line in listed.splitlines():
            name = line.split()[0] if line.strip() else ""
            if name.startswith(f"{self.prefix}-"):
                self._kill_ns_pids(name)
                _run(["ip", "netns", "del", name], check=False)
                removed.append(name)
        links = _run(["ip", "-o", "link", "show"], check=False).stdout
        for line in links.splitlines():
            parts = line.split(": ")
            if len(parts) < 2:
                continue
            ifname = parts[1].split("@")[0]
            if ifname == self.bridge or (ifname.startswith(f"{self.prefix}-") and ifname.endswith(".h")):
                _run(["ip", "link", "del", ifname], check=False)
                removed.append(ifname)
        return removed

    @staticmethod
    def _kill_ns_pids(ns: str) -> None:
        kill_ns_pids(ns)

    def _acquire_lock(self) -> None:
        if self._lock is not None:
            return
        handle = open(self.lock_path, "a+")  # noqa: SIM115 - held for the bed's lifetime
        deadline = time.monotonic() + self.lock_timeout
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    handle.close()
                    raise NetnsError(
                        f"another chaos test bed holds {self.lock_path} (waited {self.lock_timeout:g} s); "
                        f"wait for it to finish, or stop the process holding it (fuser -v {self.lock_path})"
                    ) from None
                time.sleep(1.0)
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        self._lock = handle

    def _release_lock(self) -> None:
        if self._lock is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._lock, fcntl.LOCK_UN)
            self._lock.close()
            self._lock = None

    # ------------------------------------------------------------------ running things

    def node(self, name: str) -> Node:
        try:
            return self.nodes[name]
        except KeyError:
            raise NetnsError(f"no node {name!r} (nodes: {', '.join(self.nodes)})") from None

    def addr(self, name: str) -> str:
        return self.node(name).addr

    def exec_argv(self, name: str, argv: Sequence[str], user: str | None = None) -> list[str]:
        """``argv`` run inside node ``name``'s namespace, as ``user`` when given (setpriv drops
        root after entering the namespace: joining one needs root)."""
        prefix = ["ip", "netns", "exec", self.node(name).ns]
        if user is not None:
            import pwd

            pw = pwd.getpwnam(user)
            prefix += ["setpriv", f"--reuid={pw.pw_uid}", f"--regid={pw.pw_gid}", "--clear-groups", "--"]
        return prefix + list(argv)

    def run(
        self, name: str, argv: Sequence[str], *, timeout: float = 15.0, check: bool = True, user: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        return _run(self.exec_argv(name, argv, user), timeout=timeout, check=check)

    def popen(
        self,
        name: str,
        argv: Sequence[str],
        *,
        log_path: Path,
        user: str | None = None,
        cwd: Path | None = None,
        env: Mapping[str, str] | None = None,
    ) -> subprocess.Popen[bytes]:
        """Start a long-running process in the node, in its own session, output to ``log_path``.
        ``ip netns exec`` and ``setpriv`` exec in place: the returned pid is the process itself."""
        with open(log_path, "ab") as log:
            return subprocess.Popen(
                self.exec_argv(name, argv, user),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=str(cwd) if cwd else None,
                env=dict(env) if env is not None else None,
                start_new_session=True,
                close_fds=True,
            )

    def pids(self, name: str) -> list[int]:
        out = _run(["ip", "netns", "pids", self.node(name).ns], check=False).stdout.split()
        return [int(p) for p in out if p.isdigit()]

    # ------------------------------------------------------------------ faults (nftables)

    def _nft(self, name: str, args: Sequence[str], stdin: str | None = None) -> str:
        return nft(self.node(name).ns, args, stdin=stdin)

    def _addrs(self, peers: Iterable[str]) -> list[str]:
        out = []
        for p in peers:
            out.append(self.host_addr if p == "host" else self.addr(p))
        return out

    def block(self, name: str, peers: Iterable[str], direction: str = "both") -> None:
        """Drop packets between node ``name`` and ``peers`` (node names, or "host" for the clients).
        ``direction``: "out" loses what ``name`` sends, "in" what it receives, "both" both."""
        if direction not in ("out", "in", "both"):
            raise ValueError(f"direction: expected out, in or both, got {direction!r}")
        addrs = self._addrs(peers)
        if not addrs:
            return
        elements = "{ " + ", ".join(addrs) + " }"
        if direction in ("out", "both"):
            self._nft(name, ["add", "element", "inet", TABLE, "blocked_out", elements])
        if direction in ("in", "both"):
            self._nft(name, ["add", "element", "inet", TABLE, "blocked_in", elements])

    def heal(self, name: str | None = None) -> None:
        """Remove every block on ``name`` (every node when None)."""
        for n in [name] if name else list(self.nodes):
            for s in ("blocked_out", "blocked_in"):
                self._nft(n, ["flush", "set", "inet", TABLE, s])

    def blocked(self, name: str) -> dict[str, list[str]]:
        """The addresses ``name`` currently drops, per direction."""
        out: dict[str, list[str]] = {}
        for s, key in (("blocked_out", "out"), ("blocked_in", "in")):
            text = self._nft(name, ["list", "set", "inet", TABLE, s])
            inside = text.split("elements = {", 1)[1].split("}", 1)[0] if "elements = {" in text else ""
            out[key] = sorted(a.strip() for a in inside.replace("\n", " ").split(",") if a.strip())
        return out

    def cut(self, a: str, b: str) -> None:
        """Symmetric partition between two nodes (rules on both sides)."""
        self.block(a, [b])
        self.block(b, [a])

    def isolate(self, name: str, *, from_host: bool = False) -> None:
        """Cut ``name`` from every other node (and from the clients too with ``from_host``)."""
        peers = [n for n in self.nodes if n != name]
        for p in peers:
            self.cut(name, p)
        if from_host:
            self.block(name, ["host"])

    def partition(self, groups: Sequence[Sequence[str]]) -> None:
        """Split the nodes into ``groups`` that cannot reach each other; nodes not named in any group
        form one more group."""
        named = [n for g in groups for n in g]
        for n in named:
            self.node(n)
        rest = [n for n in self.nodes if n not in named]
        all_groups = [list(g) for g in groups] + ([rest] if rest else [])
        for i, g in enumerate(all_groups):
            others = [n for j, h in enumerate(all_groups) if j != i for n in h]
            for n in g:
                self.block(n, others)
