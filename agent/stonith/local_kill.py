"""The ``local-kill`` hook: SIGKILL the old leader's processes on this machine, then wait until they are gone.

Two sources of pids, both read only:

* ``pid_file``: its first line is a pid (``postmaster.pid`` qualifies). That process, its process
  group and its direct children are killed (postgres backends leave the postmaster's group).
* ``data_dir``: the local runner's directory (see local/runner.py). ``cluster.json`` gives the old
  leader's agent pid (the agent leads its own session: its whole group is killed) and
  ``<data_dir>/<member>/pgdata/postmaster.pid`` its postmaster (checked against /proc so a reused
  pid is never killed). The agent dies first so it cannot restart its postgres.

"Fenced" means every targeted process is verifiably dead (or a zombie) before the timeout; a
process that is already gone counts as fenced. A missing pid file does not: it may be a typo.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

from pgquorum.agent.postgres.process import children_of, is_postmaster_of, pid_alive
from pgquorum.agent.stonith.config import LocalKillHook
from pgquorum.agent.stonith.model import FenceRequest, HookFailure, Outcome, render

POLL = 0.01  # seconds between liveness checks after SIGKILL


@dataclass(frozen=True)
class _Target:
    what: str  # for messages: "agent of a (pid 123)"
    pid: int


def _read_pid(path: Path, field: str) -> tuple[int, list[str]]:
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise HookFailure(Outcome.FAILED, f"{field}: cannot read {path} ({exc.strerror or exc})") from None
    try:
        pid = int(lines[0].strip())
    except (IndexError, ValueError):
        raise HookFailure(Outcome.FAILED, f"{field}: {path} does not start with a pid") from None
    if pid <= 1:
        raise HookFailure(Outcome.FAILED, f"{field}: {path} names pid {pid}; refusing to kill it")
    return pid, lines


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _runner_targets(data_dir: Path, member: str, field: str) -> list[_Target]:
    state_file = data_dir / "cluster.json"
    try:
        state = json.loads(state_file.read_text())
        members = {m["name"]: m for m in state["members"]}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise HookFailure(
            Outcome.FAILED, f"{field}: cannot read the local cluster state {state_file} ({exc})"
        ) from None
    slot = members.get(member)
    if slot is None:
        raise HookFailure(
            Outcome.FAILED, f"{field}: no member {member!r} in {state_file} (members: {', '.join(sorted(members))})"
        )
    targets = []
    agent_pid = slot.get("agent_pid")
    # The runner starts the agent with --config <DATA_DIR>/<member>/agent.yaml: a reused pid will not match.
    marker = os.path.join(os.path.realpath(data_dir), member, "agent.yaml")
    if isinstance(agent_pid, int) and agent_pid > 1 and pid_alive(agent_pid) and marker in _cmdline(agent_pid):
        targets.append(_Target(f"agent of {member} (pid {agent_pid})", agent_pid))
    pgdata = data_dir / member / "pgdata"
    pid_path = pgdata / "postmaster.pid"
    if pid_path.exists():
        pid, lines = _read_pid(pid_path, field)
        try:
            started: float | None = float(lines[2])
        except (IndexError, ValueError):
            started = None
        if is_postmaster_of(pid, pgdata, started):
            targets.append(_Target(f"postgres of {member} (pid {pid})", pid))
    return targets


@dataclass(frozen=True)
class _Victim:
    target: _Target
    pgid: int
    kids: tuple[int, ...]


def _survey(target: _Target) -> _Victim | None:
    """Group and children of a target, taken before anything is killed (children of a dead parent are re-parented)."""
    try:
        pgid = os.getpgid(target.pid)
    except ProcessLookupError:
        return None
    if target.pid == os.getpid() or pgid == os.getpgrp():
        raise HookFailure(Outcome.FAILED, f"{target.what} is in this agent's own process group; refusing to kill it")
    return _Victim(target, pgid, tuple(children_of(target.pid)))


def _kill(victim: _Victim) -> list[int]:
    """SIGKILL the process, its group and its children; the pids to wait for."""
    pid = victim.target.pid
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass  # died meanwhile (e.g. in the agent's group, killed just before): its children still go below
    except PermissionError:
        raise HookFailure(
            Outcome.FAILED, f"not permitted to kill {victim.target.what}: run the agent as its user (or as root)"
        ) from None
    # A group member or child we may not signal shows up in the wait after this.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(victim.pgid, signal.SIGKILL)
    for kid in victim.kids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(kid, signal.SIGKILL)
    return [pid, *victim.kids]


def run_local_kill(hook: LocalKillHook, request: FenceRequest) -> str:
    deadline = time.monotonic() + hook.timeout
    if hook.pid_file is not None:
        path = Path(render(hook.pid_file, request, f"{hook.where}.pid_file"))
        pid, _ = _read_pid(path, f"{hook.where}.pid_file")
        targets = [_Target(f"pid {pid} from {path}", pid)] if pid_alive(pid) else []
    else:
        assert hook.data_dir is not None
        targets = _runner_targets(hook.data_dir, request.old_leader, f"{hook.where}.data_dir")
    if not targets:
        return f"old leader {request.old_leader} has no live process here (already gone)"
    # Survey every target before the first kill: killing the agent's group could take its postgres
    # with it, and backends re-parented before we listed them could still finish a commit.
    victims = [v for v in (_survey(t) for t in targets) if v is not None]
    waiting: dict[int, str] = {}
    for victim in victims:
        for pid in _kill(victim):
            waiting.setdefault(pid, victim.target.what)
    while True:
        alive = {pid: what for pid, what in waiting.items() if pid_alive(pid)}
        if not alive:
            break
        if time.monotonic() >= deadline:
            raise HookFailure(
                Outcome.TIMEOUT,
                f"still alive {hook.timeout:g}s after SIGKILL: "
                + ", ".join(f"pid {p} ({w})" for p, w in alive.items()),
            )
        time.sleep(POLL)
    return "killed " + ", ".join(t.what for t in targets) + f" ({len(waiting)} processes)"
