"""The local-kill hook against real process groups: a pid file, and the local runner's cluster.json layout."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pgquorum.agent.clock import SystemClock
from pgquorum.agent.postgres.process import pid_alive, start_time
from pgquorum.agent.stonith import FenceRequest, Outcome, parse_hooks, run_hooks
from pgquorum.agent.stonith.model import HookResult

REQ = FenceRequest("main", "a", "b", 3)


class Procs:
    """Processes a test started; whatever survives the test is killed and reaped."""

    def __init__(self) -> None:
        self.started: list[subprocess.Popen[bytes]] = []

    def start(self, argv: list[str], **kw: object) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(argv, start_new_session=True, stdin=subprocess.DEVNULL, **kw)  # type: ignore[call-overload]
        self.started.append(proc)
        return proc  # type: ignore[no-any-return]

    def cleanup(self) -> None:
        for proc in self.started:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)


@pytest.fixture
def procs() -> Iterator[Procs]:
    p = Procs()
    yield p
    p.cleanup()


def group_members(pgid: int) -> list[int]:
    members = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                stat = Path(f"/proc/{entry.name}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[2]) == pgid:
                members.append(int(entry.name))
    return members


def wait_for(cond: object, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)


def run_one(raw: dict[str, object], request: FenceRequest = REQ) -> HookResult:
    (result,) = run_hooks(parse_hooks([raw]), request, SystemClock()).results
    return result


def test_kills_the_whole_process_group_from_a_pid_file(procs: Procs, tmp_path: Path) -> None:
    leader = procs.start(["/bin/sh", "-c", "sleep 300 & sleep 300 & wait"])
    wait_for(lambda: len(group_members(leader.pid)) == 3)
    victims = group_members(leader.pid)
    (tmp_path / "a.pid").write_text(f"{leader.pid}\n/some/dir\n")
    result = run_one({"type": "local-kill", "pid_file": str(tmp_path / "{old_leader}.pid")})
    assert result.outcome is Outcome.OK, result.message
    assert result.message == f"killed pid {leader.pid} from {tmp_path / 'a.pid'} (3 processes)"
    assert not any(pid_alive(p) for p in victims)
    assert leader.wait(timeout=5) == -signal.SIGKILL


def test_a_paused_old_leader_is_killed_too(procs: Procs, tmp_path: Path) -> None:
    leader = procs.start(["sleep", "300"])
    os.killpg(leader.pid, signal.SIGSTOP)  # SIGSTOP: the "primary paused longer than ttl" case
    (tmp_path / "pid").write_text(str(leader.pid))
    assert run_one({"type": "local-kill", "pid_file": str(tmp_path / "pid")}).outcome is Outcome.OK
    assert leader.wait(timeout=5) == -signal.SIGKILL


def test_already_gone_counts_as_fenced_but_a_missing_pid_file_does_not(procs: Procs, tmp_path: Path) -> None:
    done = procs.start(["true"])
    done.wait()
    (tmp_path / "pid").write_text(str(done.pid))
    result = run_one({"type": "local-kill", "pid_file": str(tmp_path / "pid")})
    assert result.outcome is Outcome.OK and "already gone" in result.message
    result = run_one({"type": "local-kill", "pid_file": str(tmp_path / "absent.pid")})
    assert result.outcome is Outcome.FAILED
    assert result.message.startswith(f"stonith[0].pid_file: cannot read {tmp_path / 'absent.pid'}")
    (tmp_path / "junk").write_text("not a pid\n")
    result = run_one({"type": "local-kill", "pid_file": str(tmp_path / "junk")})
    assert result.outcome is Outcome.FAILED and "does not start with a pid" in result.message


def test_never_kills_its_own_process_group(tmp_path: Path) -> None:
    (tmp_path / "pid").write_text(str(os.getpid()))
    result = run_one({"type": "local-kill", "pid_file": str(tmp_path / "pid")})
    assert result.outcome is Outcome.FAILED and "own process group; refusing" in result.message
    (tmp_path / "pid").write_text("1")
    result = run_one({"type": "local-kill", "pid_file": str(tmp_path / "pid")})
    assert result.outcome is Outcome.FAILED and "refusing to kill it" in result.message


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run the hook as another user")
def test_not_permitted_fails_clearly(procs: Procs, runner_dir: Path) -> None:
    leader = procs.start(["sleep", "300"])  # owned by root
    runner_dir.chmod(0o755)  # readable by the unprivileged user the hook runs as
    (runner_dir / "pid").write_text(str(leader.pid))
    code = (
        "import json;from pgquorum.agent.clock import SystemClock;"
        "from pgquorum.agent.stonith import FenceRequest, parse_hooks, run_hooks;"
        f"h=parse_hooks([{{'type':'local-kill','pid_file':{str(runner_dir / 'pid')!r}}}]);"
        "r=run_hooks(h, FenceRequest('main','a','b',3), SystemClock()).results[0];"
        "print(json.dumps(r.as_dict()))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], user=65534, group=65534, extra_groups=[], capture_output=True, text=True,
        timeout=60, cwd="/",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["outcome"] == "failed"
    assert "not permitted to kill" in result["message"]
    assert leader.poll() is None


@pytest.fixture
def runner_dir() -> Iterator[Path]:
    # A short path outside pytest's tmp: it is matched against /proc/<pid>/cmdline.
    root = Path(tempfile.mkdtemp(prefix="pgq-lk-"))
    yield root
    shutil.rmtree(root, ignore_errors=True)


def fake_member(procs: Procs, data_dir: Path, name: str) -> tuple[subprocess.Popen[bytes], subprocess.Popen[bytes]]:
    """An agent-like and a postmaster-like process laid out like local/runner.py leaves them."""
    home = data_dir / name
    pgdata = home / "pgdata"
    pgdata.mkdir(parents=True)
    agent = procs.start(
        [sys.executable, "-c", "import time; time.sleep(300)", "agent", "--config", str(home / "agent.yaml")]
    )
    # The postmaster check wants comm "postgres" and cwd = pgdata: run sleep under that name there.
    bindir = data_dir / "bin"
    bindir.mkdir(exist_ok=True)
    postgres = bindir / "postgres"
    if not postgres.exists():
        shutil.copy(shutil.which("sleep") or "/bin/sleep", postgres)
    postmaster = procs.start([str(postgres), "300"], cwd=pgdata)
    wait_for(lambda: start_time(postmaster.pid) is not None)
    started = start_time(postmaster.pid)
    (pgdata / "postmaster.pid").write_text(f"{postmaster.pid}\n{pgdata}\n{int(started or 0)}\n5432\n")
    return agent, postmaster


def write_state(data_dir: Path, members: dict[str, int | None]) -> None:
    state = {
        "cluster": "main",
        "run_as": "postgres",
        "etcd_client_port": 1,
        "etcd_peer_port": 2,
        "members": [{"name": n, "pg_port": 1, "api_port": 2, "agent_pid": pid} for n, pid in members.items()],
    }
    (data_dir / "cluster.json").write_text(json.dumps(state))


def test_local_runner_layout_kills_the_old_leaders_agent_and_postgres(procs: Procs, runner_dir: Path) -> None:
    agent_a, pg_a = fake_member(procs, runner_dir, "a")
    agent_b, pg_b = fake_member(procs, runner_dir, "b")
    write_state(runner_dir, {"a": agent_a.pid, "b": agent_b.pid})
    result = run_one({"type": "local-kill", "data_dir": str(runner_dir)})
    assert result.outcome is Outcome.OK, result.message
    assert f"agent of a (pid {agent_a.pid})" in result.message and f"postgres of a (pid {pg_a.pid})" in result.message
    assert agent_a.wait(timeout=5) == -signal.SIGKILL
    assert pg_a.wait(timeout=5) == -signal.SIGKILL
    assert agent_b.poll() is None and pg_b.poll() is None  # only the old leader


def test_local_runner_layout_never_kills_a_reused_pid(procs: Procs, runner_dir: Path) -> None:
    (runner_dir / "a" / "pgdata").mkdir(parents=True)
    stranger = procs.start(["sleep", "300"])  # holds the pid cluster.json still names, and a stale postmaster.pid
    (runner_dir / "a" / "pgdata" / "postmaster.pid").write_text(f"{stranger.pid}\n/x\n0\n")
    write_state(runner_dir, {"a": stranger.pid})
    result = run_one({"type": "local-kill", "data_dir": str(runner_dir)})
    assert result.outcome is Outcome.OK and "already gone" in result.message
    assert stranger.poll() is None


def test_local_runner_layout_unknown_member_fails(runner_dir: Path) -> None:
    write_state(runner_dir, {"x": None})
    result = run_one({"type": "local-kill", "data_dir": str(runner_dir)})
    assert result.outcome is Outcome.FAILED and "no member 'a' in" in result.message
    result = run_one({"type": "local-kill", "data_dir": str(runner_dir / "nowhere")})
    assert result.outcome is Outcome.FAILED and "cannot read the local cluster state" in result.message
