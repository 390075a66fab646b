"""Process hygiene: spawning as the postgres user, signalling process groups,
reaping orphans, free ports, waiting helpers."""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import os
import pwd
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from pgquorum.chaos.procs import alive as pid_alive
from pgquorum.chaos.procs import proc_stat

log = logging.getLogger("bench")

PG_USER = "postgres"
PG_BIN = Path("/usr/lib/postgresql/15/bin")
T = TypeVar("T")

_PR_SET_CHILD_SUBREAPER = 36


class Reaper:
    """Make this process a child subreaper and reap orphaned zombies.

    PID 1 on this machine does not reap orphans, and postgres refuses to start
    while the PID in ``postmaster.pid`` still answers ``kill(pid, 0)`` (a zombie
    does).  Patroni double-forks its postmaster, so after a SIGKILL the dead
    postmaster would stay a zombie forever.  As a subreaper we inherit such
    orphans; only zombies that are not our own ``Popen`` children are reaped
    here (those are reaped by ``Popen.wait``/``poll``).
    """

    def __init__(self) -> None:
        self._own: set[int] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            if libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
                log.warning("prctl(PR_SET_CHILD_SUBREAPER) failed: errno %s", ctypes.get_errno())
        except OSError as exc:  # pragma: no cover - non-Linux
            log.warning("cannot become subreaper: %s", exc)
        self._thread = threading.Thread(target=self._loop, name="reaper", daemon=True)
        self._thread.start()

    def own(self, pid: int) -> None:
        with self._lock:
            self._own.add(pid)

    def disown(self, pid: int) -> None:
        with self._lock:
            self._own.discard(pid)

    def stop(self) -> None:
        self._stop.set()

    def reap_once(self) -> None:
        me = os.getpid()
        for pid in children_of(me):
            with self._lock:
                if pid in self._own:
                    continue
            if proc_state(pid) == "Z":
                with contextlib.suppress(ChildProcessError, OSError):
                    os.waitpid(pid, os.WNOHANG)

    def _loop(self) -> None:
        while not self._stop.wait(0.5):
            self.reap_once()


REAPER = Reaper()


def proc_state(pid: int) -> str | None:
    st = proc_stat(pid)
    return st[0] if st else None


def children_of(ppid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        st = proc_stat(int(entry))
        if st and len(st) > 1 and st[1] == str(ppid):
            out.append(int(entry))
    return out


def descendants(pid: int) -> list[int]:
    """All live descendants of ``pid`` (breadth first, excluding ``pid``)."""
    parent: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            st = proc_stat(int(entry))
            if st and len(st) > 1:
                parent[int(entry)] = int(st[1])
    out: list[int] = []
    frontier = [pid]
    while frontier:
        cur = frontier.pop()
        kids = [p for p, pp in parent.items() if pp == cur]
        out.extend(kids)
        frontier.extend(kids)
    return out


def pgid_members(pgid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            st = proc_stat(int(entry))
            if st and len(st) > 2 and st[2] == str(pgid):
                out.append(int(entry))
    return out


def signal_tree(pids: Iterable[int | None], sig: signal.Signals) -> list[int]:
    """Send ``sig`` to each pid's process group, the pids and all their descendants.

    Targets are collected first and signalled in one quick pass, so a SIGKILL
    looks like one node dying at once.  Returns the pids signalled.
    """
    targets: list[int] = []
    for pid in pids:
        if not pid or not pid_alive(pid):
            continue
        with contextlib.suppress(OSError):
            pgid = os.getpgid(pid)
            if pgid > 1 and pgid != os.getpgid(0):
                targets.extend(pgid_members(pgid))
        targets.append(pid)
        targets.extend(descendants(pid))
    seen: list[int] = []
    for p in targets:
        if p in seen or p == os.getpid():
            continue
        seen.append(p)
    for p in seen:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(p, sig)
    return seen


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_ports(n: int) -> list[int]:
    """``n`` distinct free loopback ports (held open together while chosen)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


def port_open(port: int, host: str = "127.0.0.1", timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_for(what: str, fn: Callable[[], T | None], timeout: float, interval: float = 0.2) -> T:
    """Poll ``fn`` until it returns a truthy value; raise TimeoutError otherwise."""
    deadline = time.monotonic() + timeout
    last_exc: Exception | None = None
    while True:
        try:
            val = fn()
            if val:
                return val
        except Exception as exc:
            last_exc = exc
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what} (last error: {last_exc})")
        time.sleep(interval)


def http_json(
    url: str,
    *,
    method: str = "GET",
    body: Mapping[str, Any] | None = None,
    timeout: float = 2.0,
    headers: Mapping[str, str] | None = None,
) -> tuple[int, Any]:
    """Tiny JSON-over-HTTP helper (stdlib only). Returns (status, parsed body or text)."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    for k, v in (headers or {}).items():
        req.add_header(k, v)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            status, raw = resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read()
    text = raw.decode(errors="replace")
    try:
        return status, json.loads(text)
    except ValueError:
        return status, text


def pg_user_ids() -> tuple[int, int]:
    pw = pwd.getpwnam(PG_USER)
    return pw.pw_uid, pw.pw_gid


def make_pg_dir(path: Path, mode: int = 0o700) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    uid, gid = pg_user_ids()
    os.chown(path, uid, gid)
    path.chmod(mode)
    return path


def spawn_as_postgres(
    argv: list[str], *, cwd: Path, log_path: Path, env: Mapping[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """Start ``argv`` as the postgres OS user in its own session (own process group)."""
    uid, gid = pg_user_ids()
    full_env = {
        "PATH": f"{PG_BIN}:/usr/local/bin:/usr/bin:/bin",
        "HOME": str(cwd),
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "USER": PG_USER,
        "LOGNAME": PG_USER,
    }
    if env:
        full_env.update(env)
    logf = open(log_path, "ab")  # noqa: SIM115 - handed to the child, closed below
    try:
        proc = subprocess.Popen(
            argv,
            cwd=cwd,
            env=full_env,
            stdin=subprocess.DEVNULL,
            stdout=logf,
            stderr=subprocess.STDOUT,
            user=uid,
            group=gid,
            extra_groups=[],
            start_new_session=True,
            close_fds=True,
        )
    finally:
        logf.close()
    REAPER.own(proc.pid)
    return proc


def stop_process(proc: subprocess.Popen[bytes] | None, timeout: float = 15.0) -> None:
    """SIGTERM the process group, then SIGKILL the whole tree after ``timeout``."""
    if proc is None or proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGCONT)
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        signal_tree([proc.pid], signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(5)
    REAPER.disown(proc.pid)


def rmtree_quiet(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        shutil.rmtree(path)


def read_postmaster_pid(data_dir: Path) -> int | None:
    """The live postmaster's pid from ``postmaster.pid`` (None when not running)."""
    try:
        first = (data_dir / "postmaster.pid").read_text().splitlines()[0]
        pid = int(first.strip())
    except (OSError, ValueError, IndexError):
        return None
    if not pid_alive(pid):
        return None
    try:
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return None
    return pid if comm in ("postgres", "postmaster") else None


__all__ = [
    "PG_BIN",
    "PG_USER",
    "REAPER",
    "free_port",
    "free_ports",
    "http_json",
    "make_pg_dir",
    "pid_alive",
    "port_open",
    "read_postmaster_pid",
    "rmtree_quiet",
    "signal_tree",
    "spawn_as_postgres",
    "stop_process",
    "wait_for",
]
