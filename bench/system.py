"""The ``System`` interface every HA manager under test implements, plus shared parts.

A concrete system (``PatroniSystem``, later ``PgquorumSystem``) only has to
start/stop its cluster, describe its members, and perform a switchover and a
member restart.  The fault hooks are generic: they act on the pids and on the
per-member etcd proxies that ``members()`` / ``self.proxies`` expose, and can
be overridden when a system needs something else.
"""

from __future__ import annotations

import abc
import atexit
import contextlib
import logging
import os
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from bench.procs import (
    REAPER,
    http_json,
    make_pg_dir,
    pid_alive,
    rmtree_quiet,
    signal_tree,
    spawn_as_postgres,
    stop_process,
    wait_for,
)
from bench.proxy import ProxyHub

log = logging.getLogger("bench")

ETCD_BIN = os.environ.get("BENCH_ETCD_BIN", "/usr/bin/etcd")


@dataclass(frozen=True, slots=True)
class Timing:
    ttl: float
    loop_wait: float
    retry_timeout: float


@dataclass(frozen=True, slots=True)
class Member:
    name: str
    role: str  # "leader" | "replica" | "stopped" | "unknown" (normalised by the system)
    state: str  # the system's own wording ("running", "streaming", ...)
    streaming: bool  # a replica that streams from the current leader
    agent_pid: int | None
    postgres_pid: int | None
    pg_port: int
    api_url: str | None
    host: str = "127.0.0.1"


class System(abc.ABC):
    """A 3-member PostgreSQL HA cluster plus its DCS, all on loopback."""

    #: short name used in reports ("patroni", "pgquorum")
    name: str = "abstract"

    def __init__(self, profile: str, timing: Timing, workdir: Path | None = None, keep: bool = False) -> None:
        self.profile = profile
        self.timing = timing
        self.keep = keep
        self._own_workdir = workdir is None
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix=f"pgquorum-bench-{self.name}-", dir="/var/tmp"))
        make_pg_dir(self.workdir)
        self.proxies = ProxyHub()  # name of member -> its proxy to the DCS
        self.dsn_extra = ""  # appended to every DSN (e.g. "passfile=...")
        self._armed: dict[str, Member] = {}
        _LIVE.add(self)

    # ------------------------------------------------------------------ lifecycle

    @abc.abstractmethod
    def up(self) -> None:
        """Start DCS + 3 members; return when there is a leader and 2 streaming replicas."""

    @abc.abstractmethod
    def _down(self) -> None:
        """Stop every process the system started (idempotent)."""

    def down(self) -> None:
        try:
            self._down()
        finally:
            self.proxies.close()
            _LIVE.discard(self)
            if self._own_workdir and not self.keep:
                rmtree_quiet(self.workdir)

    def __enter__(self) -> System:
        self.up()
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.down()

    # ------------------------------------------------------------------ inspection

    @abc.abstractmethod
    def members(self) -> list[Member]:
        """Every configured member (also dead ones, with role "stopped")."""

    def member(self, name: str) -> Member:
        for m in self.members():
            if m.name == name:
                return m
        raise KeyError(name)

    def leader(self) -> str | None:
        """Name of the current leader whose postgres is running, or None."""
        leaders = [m for m in self.members() if m.role == "leader" and m.postgres_pid]
        return leaders[0].name if len(leaders) == 1 else None

    def healthy(self) -> bool:
        ms = self.members()
        leaders = [m for m in ms if m.role == "leader" and m.postgres_pid]
        return len(leaders) == 1 and all(m.streaming for m in ms if m is not leaders[0])

    def wait_healthy(self, timeout: float = 180.0) -> str:
        """Wait for one leader and all other members streaming; return the leader."""
        wait_for(f"{self.name}: a leader and streaming replicas", self.healthy, timeout, interval=0.5)
        leader = self.leader()
        assert leader is not None
        return leader

    def dsn(self, *, connect_timeout: int = 2) -> str:
        """Multi-host libpq string reaching whichever member is writable."""
        ms = sorted(self.members(), key=lambda m: m.name)
        hosts = ",".join(m.host for m in ms)
        ports = ",".join(str(m.pg_port) for m in ms)
        return (
            f"host={hosts} port={ports} dbname=postgres user=postgres "
            f"target_session_attrs=read-write connect_timeout={connect_timeout} "
            f"application_name=bench {self.dsn_extra}"
        ).strip()

    def member_dsn(self, name: str, *, connect_timeout: int = 2, read_write: bool = False) -> str:
        m = self.member(name)
        tsa = " target_session_attrs=read-write" if read_write else ""
        return (
            f"host={m.host} port={m.pg_port} dbname=postgres user=postgres "
            f"connect_timeout={connect_timeout} application_name=bench{tsa} {self.dsn_extra}"
        ).strip()

    # ------------------------------------------------------------------ control

    @abc.abstractmethod
    def switchover(self, candidate: str | None = None) -> None:
        """Planned switchover away from the current leader; returns when it is done."""

    @abc.abstractmethod
    def start_member(self, name: str) -> None:
        """(Re)start the agent of a member whose agent is not running."""

    @abc.abstractmethod
    def stop_member(self, name: str) -> None:
        """Stop the agent (and its postgres) of a member gracefully."""

    def restart_member(self, name: str) -> None:
        self.stop_member(name)
        self.start_member(name)

    def agent_pids(self, name: str) -> list[int]:
        """The agent's processes (for memory / CPU accounting): agent pid and non-postgres children."""
        m = self.member(name)
        return [m.agent_pid] if m.agent_pid else []

    # ------------------------------------------------------------------ fault hooks

    def arm(self, name: str) -> Member:
        """Resolve ``name``'s pids now, so that the next fault hook acts without a lookup.

        ``members()`` may be slow (a CLI call); the runner arms the target just
        before it takes the fault timestamp, so the timestamp is the injection.
        """
        m = self.member(name)
        self._armed[name] = m
        return m

    def disarm(self) -> None:
        self._armed.clear()

    def armed_leader(self) -> str | None:
        """The armed member if it was the leader when armed, else a fresh lookup."""
        for m in self._armed.values():
            if m.role == "leader":
                return m.name
        return self.leader()

    def _target(self, name: str) -> Member:
        return self._armed.get(name) or self.member(name)

    def kill_node(self, name: str) -> list[int]:
        """SIGKILL the agent and the whole postgres process group, as if the node died."""
        m = self._target(name)
        return signal_tree([m.postgres_pid, m.agent_pid], signal.SIGKILL)

    def kill_postgres(self, name: str) -> list[int]:
        """SIGKILL the postmaster only (its backends notice and exit); the agent stays alive."""
        m = self._target(name)
        if not m.postgres_pid:
            raise RuntimeError(f"{name}: postgres is not running")
        os.kill(m.postgres_pid, signal.SIGKILL)
        return [m.postgres_pid]

    def freeze_node(self, name: str) -> list[int]:
        m = self._target(name)
        return signal_tree([m.agent_pid, m.postgres_pid], signal.SIGSTOP)

    def thaw_pids(self, pids: list[int]) -> None:
        for p in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(p, signal.SIGCONT)

    def pause_node(self, name: str, seconds: float) -> None:
        """SIGSTOP the agent and postgres for ``seconds`` then SIGCONT (blocking)."""
        pids = self.freeze_node(name)
        try:
            time.sleep(seconds)
        finally:
            self.thaw_pids(pids)

    def cut_from_etcd(self, name: str, mode: str = "blackhole") -> None:
        """Make ``name`` lose the DCS (its proxy stops forwarding)."""
        if name not in self.proxies.names():
            raise NotImplementedError(f"{self.name}: member {name} does not reach the DCS through a proxy")
        self.proxies.set_mode(name, "reset" if mode == "reset" else "blackhole")

    def heal_etcd(self, name: str | None = None) -> None:
        if name is None:
            self.proxies.heal_all()
        elif name in self.proxies.names():
            self.proxies.set_mode(name, "pass")

    def delay_etcd(self, name: str, seconds: float) -> None:
        self.proxies.set_mode(name, "pass", delay=seconds)

    def recover(self, timeout: float = 180.0) -> str:
        """Undo every fault (proxies, stopped processes, dead agents) and wait for health."""
        self.heal_etcd()
        for m in self.members():
            for pid in (m.agent_pid, m.postgres_pid):
                if pid:
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.killpg(os.getpgid(pid), signal.SIGCONT)
            if not pid_alive(m.agent_pid):
                log.info("recover: starting %s", m.name)
                self.start_member(m.name)
        try:
            return self.wait_healthy(timeout)
        except TimeoutError:
            stuck = [m.name for m in self.members() if m.role != "leader" and not m.streaming]
            log.warning("recover: restarting members that do not stream: %s", stuck)
            for name in stuck:
                self.restart_member(name)
            return self.wait_healthy(timeout)


class EtcdServer:
    """A single-node etcd on loopback, run as the postgres user."""

    def __init__(self, workdir: Path, client_port: int, peer_port: int) -> None:
        self.dir = make_pg_dir(workdir / "etcd")
        self.client_port = client_port
        self.peer_port = peer_port
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.client_port}"

    def start(self, timeout: float = 30.0) -> None:
        peer = f"http://127.0.0.1:{self.peer_port}"
        argv = [
            ETCD_BIN,
            "--name",
            "bench",
            "--data-dir",
            str(self.dir / "data"),
            "--listen-client-urls",
            self.url,
            "--advertise-client-urls",
            self.url,
            "--listen-peer-urls",
            peer,
            "--initial-advertise-peer-urls",
            peer,
            "--initial-cluster",
            f"bench={peer}",
            "--initial-cluster-state",
            "new",
            "--initial-cluster-token",
            f"bench-{self.client_port}",
            "--log-level",
            "warn",
        ]
        self.proc = spawn_as_postgres(argv, cwd=self.dir, log_path=self.dir / "etcd.log")

        def ok() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"etcd exited: see {self.dir / 'etcd.log'}")
            status, body = http_json(f"{self.url}/health", timeout=1.0)
            return status == 200 and isinstance(body, dict) and body.get("health") == "true"

        wait_for("etcd health", ok, timeout)

    def stop(self) -> None:
        stop_process(self.proc)
        self.proc = None


class _Registry:
    """Systems still up, torn down at interpreter exit whatever happened."""

    def __init__(self) -> None:
        self._live: list[System] = []
        atexit.register(self.down_all)

    def add(self, s: System) -> None:
        self._live.append(s)

    def discard(self, s: System) -> None:
        with contextlib.suppress(ValueError):
            self._live.remove(s)

    def down_all(self) -> None:
        for s in list(self._live):
            with contextlib.suppress(Exception):
                s.down()


_LIVE = _Registry()


def install_signal_handlers() -> None:
    """Turn SIGTERM/SIGHUP into KeyboardInterrupt so ``finally`` blocks tear down."""

    def handler(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, handler)
    REAPER.start()
