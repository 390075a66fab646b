"""Running PostgreSQL binaries as the right OS user, with hard timeouts, and signalling them.

PostgreSQL refuses to run as root. When the agent is root every binary runs as an unprivileged
user (``postgres`` unless configured) and every file we create for postgres is chowned to it;
otherwise everything runs as the current user. Linux only: liveness and child lookup use /proc.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import select
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pgquorum.agent.postgres.errors import PostgresError, PostgresTimeout


@dataclass(frozen=True)
class OsUser:
    """The OS user postgres runs as."""

    name: str
    uid: int
    gid: int
    home: str
    switch: bool  # True: we are root and drop to this user for every postgres binary
    agent_user: str  # the OS user of the agent itself (for the peer-authentication map)

    @classmethod
    def resolve(cls, run_as: str | None) -> OsUser:
        euid = os.geteuid()
        if euid == 0:
            name = run_as or "postgres"
            try:
                pw = pwd.getpwnam(name)
            except KeyError:
                raise PostgresError(
                    f"postgres.run_as: OS user {name!r} does not exist; PostgreSQL refuses to run as root, "
                    "so create that user (the postgresql packages create 'postgres') or set run_as"
                ) from None
            if pw.pw_uid == 0:
                raise PostgresError(f"postgres.run_as: {name!r} is root; PostgreSQL refuses to run as root")
            return cls(name, pw.pw_uid, pw.pw_gid, pw.pw_dir or "/", True, "root")
        try:
            me = pwd.getpwuid(euid)
            name, home = me.pw_name, me.pw_dir or "/"
        except KeyError:  # containers with an arbitrary uid and no passwd entry
            name, home = str(euid), "/"
        if run_as and run_as != name:
            raise PostgresError(
                f"postgres.run_as: {run_as!r} needs the agent to run as root; it runs as {name!r}. "
                "Remove run_as or start the agent as that user"
            )
        return cls(name, euid, os.getegid(), home, False, name)

    def popen_kwargs(self) -> dict[str, Any]:
        if not self.switch:
            return {}
        # extra_groups=[] drops root's supplementary groups too.
        return {"user": self.uid, "group": self.gid, "extra_groups": []}

    def chown(self, path: Path) -> None:
        if self.switch:
            os.chown(path, self.uid, self.gid, follow_symlinks=False)

    def env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        """A clean environment: no inherited PG* variables can redirect a tool to another server."""
        env = {
            "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
            "HOME": self.home,
            "USER": self.name,
            "LOGNAME": self.name,
            "LC_ALL": "C",  # tool output is parsed (pg_controldata) and quoted in errors: keep it English
            "LANG": "C",
        }
        if "TZ" in os.environ:
            env["TZ"] = os.environ["TZ"]
        if extra:
            env.update(extra)
        return env


@dataclass(frozen=True)
class CommandResult:
    returncode: int
    output: str  # stdout and stderr interleaved

    def tail(self, lines: int = 15) -> str:
        return tail_text(self.output, lines)


def tail_text(text: str, lines: int = 15, limit: int = 3000) -> str:
    out = "\n".join(text.rstrip().splitlines()[-lines:])
    return out[-limit:]


def run(
    cmd: Sequence[str],
    user: OsUser,
    timeout: float,
    *,
    env: dict[str, str] | None = None,
    stdin_data: bytes | None = None,
) -> CommandResult:
    """Run a command as the postgres user; on timeout kill its whole process group and raise."""
    name = Path(cmd[0]).name
    try:
        proc = subprocess.Popen(
            list(cmd),
            stdin=subprocess.PIPE if stdin_data is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            cwd="/",  # the agent's cwd may not be readable by the postgres user
            env=user.env(env),
            start_new_session=True,  # own process group: a timeout kills helpers it forked too
            **user.popen_kwargs(),
        )
    except OSError as exc:
        raise PostgresError(f"cannot run {name}: {exc}") from None
    try:
        out, _ = proc.communicate(input=stdin_data, timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_group(proc.pid, signal.SIGKILL)
        try:
            out, _ = proc.communicate(timeout=5)
        except subprocess.TimeoutExpired:  # a grandchild in another group still holds the pipe
            proc.kill()
            out = b""
        raise PostgresTimeout(
            f"{name} did not finish within {timeout:.1f}s and was killed; last output:\n"
            f"{tail_text(out.decode(errors='replace'))}"
        ) from None
    return CommandResult(proc.returncode, out.decode(errors="replace"))


def kill_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def send_signal(pid: int, sig: signal.Signals) -> bool:
    try:
        os.kill(pid, sig)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def _stat_fields(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # comm (field 2) may hold spaces and parentheses: split after the last ')'.
    return raw[raw.rfind(")") + 2 :].split()


def pid_alive(pid: int) -> bool:
    """True while the process exists and is not a zombie (a dead child not yet reaped)."""
    fields = _stat_fields(pid)
    return fields is not None and fields[0] not in ("Z", "X", "x")


def is_postgres(pid: int) -> bool:
    """The pid belongs to a live postgres process (guards against pid reuse after a restart)."""
    if pid <= 0 or pid == os.getpid() or not pid_alive(pid):
        return False
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip().startswith("postgres")
    except OSError:
        return False


def start_time(pid: int) -> float | None:
    """Wall-clock start time of a process (seconds since the epoch), from /proc."""
    fields = _stat_fields(pid)
    if fields is None or len(fields) < 20:
        return None
    try:
        with open("/proc/stat") as f:
            btime = next(int(line.split()[1]) for line in f if line.startswith("btime "))
        return btime + int(fields[19]) / os.sysconf("SC_CLK_TCK")
    except (OSError, StopIteration, ValueError):
        return None


def is_postmaster_of(pid: int, data_dir: Path, started_at: float | None) -> bool:
    """``pid`` is a live postgres running in ``data_dir`` that started when its postmaster.pid says.

    A stale postmaster.pid (postgres was SIGKILLed) can name a pid that now belongs to another
    cluster's backend or to one of ours: postgres chdirs into its data directory, and the start
    time tells a reused pid apart.
    """
    if not is_postgres(pid):
        return False
    try:
        if os.path.realpath(f"/proc/{pid}/cwd") != os.path.realpath(data_dir):
            return False
    except OSError:
        return False
    if started_at is None:
        return True
    actual = start_time(pid)
    return actual is None or abs(actual - started_at) < 10


def children_of(pid: int) -> list[int]:
    """Direct children of ``pid`` (postgres backends call setsid(), so a process group is not enough)."""
    kids = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        fields = _stat_fields(int(entry.name))
        if fields is not None and len(fields) > 1 and fields[1] == str(pid):
            kids.append(int(entry.name))
    return kids


def kill_tree(pid: int, known_children: Sequence[int] = ()) -> None:
    """SIGKILL a postmaster and all its children.

    Children are collected before the postmaster dies (afterwards they are re-parented). A postmaster
    killed alone would leave backends able to finish a commit, and SIGKILL even ends stopped processes.
    """
    kids = set(known_children) | set(children_of(pid))
    send_signal(pid, signal.SIGKILL)
    kill_group(pid, signal.SIGKILL)
    for kid in kids | set(children_of(pid)):
        send_signal(kid, signal.SIGKILL)


def wait_gone(pid: int, timeout: float, interval: float = 0.01) -> bool:
    """Poll until the process is gone (or a zombie); True if it went within ``timeout``."""
    deadline = time.monotonic() + timeout
    while pid_alive(pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)
    return True


def wait_exit(pid: int) -> None:
    """Block until a process that is not our child exits (pidfd: woken at once, no polling)."""
    try:
        fd = os.pidfd_open(pid)
    except OSError:  # already gone, or a kernel without pidfd
        while pid_alive(pid):
            time.sleep(0.1)
        return
    try:
        select.select([fd], [], [])
    finally:
        os.close(fd)


def write_file(path: Path, text: str, user: OsUser, mode: int = 0o600) -> None:
    """Atomically replace ``path`` (write, fsync, rename) with a file owned by the postgres user."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, text.encode())
        os.fchmod(fd, mode)
        if user.switch:
            os.fchown(fd, user.uid, user.gid)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def make_dir(path: Path, user: OsUser, mode: int = 0o700) -> None:
    """Create ``path`` (and missing parents, which stay the agent's) owned by the postgres user."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.mkdir(mode=mode)
    user.chown(path)
    path.chmod(mode)
