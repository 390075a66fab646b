"""Process helpers of the chaos harness: liveness from /proc (zombies count as dead), signalling
process groups, and an orphan reaper.

PID 1 on these machines does not reap orphans. An agent killed by a fault leaves its postmaster
and backends orphaned; when they die they stay zombies for ever. The harness (``pgquorum chaos
run``, its own process) makes itself a child subreaper and reaps such orphans -- but only zombies
from *another session* than its own: the short commands it runs itself (``ip``, ``nft``) share its
session and are waited for by ``subprocess``, and reaping one of them first would turn its exit
status into 0. The long-lived processes it starts in their own sessions (agents, etcd) are
registered with ``own()`` and left to their ``Popen``. (bench/procs.py has its own reaper for
loopback clusters, which reaps every orphan; it imports ``proc_stat`` and ``alive`` from here.)
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import threading
from pathlib import Path

from pgquorum.agent.postgres.process import pid_alive

log = logging.getLogger("pgquorum.chaos")

_PR_SET_CHILD_SUBREAPER = 36


def proc_stat(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name: [state, ppid, pgrp, session, ...]."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rfind(")") + 2 :].split()


def alive(pid: int | None) -> bool:
    """True for a live process (a zombie has exited: not alive)."""
    return pid_alive(pid) if pid else False


def comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def postmaster_pid(pgdata: Path) -> int | None:
    """The live postmaster of ``pgdata`` (None when none runs)."""
    try:
        pid = int((pgdata / "postmaster.pid").read_text().splitlines()[0])
    except (OSError, ValueError, IndexError):
        return None
    return pid if alive(pid) and comm(pid) in ("postgres", "postmaster") else None


def signal_group(pid: int | None, sig: signal.Signals) -> bool:
    """Send ``sig`` to ``pid``'s process group (it leads one: started in its own session)."""
    if not pid:
        return False
    try:
        os.killpg(os.getpgid(pid), sig)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def descendants(pid: int) -> list[int]:
    """Every live descendant of ``pid`` (breadth first)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            st = proc_stat(int(entry))
            if st and len(st) > 1 and st[0] not in ("Z", "X"):
                children.setdefault(int(st[1]), []).append(int(entry))
    out: list[int] = []
    frontier = [pid]
    while frontier:
        kids = children.get(frontier.pop(0), [])
        out.extend(kids)
        frontier.extend(kids)
    return out


def signal_tree(pid: int | None, sig: signal.Signals) -> list[int]:
    """Send ``sig`` to ``pid``'s process group and to every descendant of ``pid``.

    The group alone is not enough for PostgreSQL: every postmaster child calls setsid(), so each
    backend and walsender leads its own session. A SIGSTOPped postmaster whose backends keep
    running still acknowledges writes on open connections. The tree is walked twice, to catch a
    child forked while the first pass ran (a stopped or killed postmaster forks no more)."""
    if not pid or not alive(pid):
        return []
    hit: list[int] = []
    signal_group(pid, sig)
    for _ in range(2):
        for p in [pid, *descendants(pid)]:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(p, sig)
                if p not in hit:
                    hit.append(p)
    return hit


class Reaper:
    """Child subreaper + a thread reaping orphaned zombies (see the module docstring)."""

    def __init__(self) -> None:
        self._own: set[int] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is not None:
            return
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            if libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
                log.warning("prctl(PR_SET_CHILD_SUBREAPER) failed: errno %s", ctypes.get_errno())
                return
        except OSError as exc:
            log.warning("cannot become a child subreaper: %s", exc)
            return
        self._thread = threading.Thread(target=self._loop, name="chaos-reaper", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def own(self, pid: int) -> None:
        with self._lock:
            self._own.add(pid)

    def reap_once(self) -> int:
        me = os.getpid()
        my_session = os.getsid(0)
        reaped = 0
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            pid = int(entry)
            st = proc_stat(pid)
            if not st or st[0] != "Z" or st[1] != str(me) or st[3] == str(my_session):
                continue
            with self._lock:
                if pid in self._own:
                    continue
            with contextlib.suppress(ChildProcessError, OSError):
                os.waitpid(pid, os.WNOHANG)
                reaped += 1
        return reaped

    def _loop(self) -> None:
        while not self._stop.wait(1.0):
            try:
                self.reap_once()
            except Exception:  # never let the reaper die: zombies would pile up again
                log.exception("reaper")


REAPER = Reaper()
