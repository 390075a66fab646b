"""The exec hook with real scripts: exit status, output, environment and arguments, timeouts that kill the group."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from pgquorum.agent.clock import SystemClock
from pgquorum.agent.postgres.process import pid_alive
from pgquorum.agent.stonith import FenceRequest, Outcome, parse_hooks, run_hooks
from pgquorum.agent.stonith.model import HookResult

REQ = FenceRequest("main", "pg-a", "pg-b", 7, old_leader_api_url="http://10.0.0.1:8008", old_leader_host="10.0.0.1")


def script(tmp_path: Path, name: str, body: str) -> Path:
    path = tmp_path / name
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return path


def run_one(raw: dict[str, object], request: FenceRequest = REQ) -> HookResult:
    (result,) = run_hooks(parse_hooks([raw]), request, SystemClock()).results
    return result


def test_exit_zero_is_fenced_and_the_output_is_kept(tmp_path: Path) -> None:
    fence = script(tmp_path, "fence", 'echo "powering off $1"\nexit 0\n')
    result = run_one({"type": "exec", "command": [str(fence)]})
    assert result.outcome is Outcome.OK
    assert "exited 0" in result.message and "powering off pg-a" in result.message
    assert result.duration < 5


def test_a_non_zero_exit_fails_with_status_and_last_output(tmp_path: Path) -> None:
    fence = script(tmp_path, "fence", 'echo "line one"\necho "ipmi: host unreachable" >&2\nexit 3\n')
    result = run_one({"type": "exec", "command": [str(fence)]})
    assert result.outcome is Outcome.FAILED
    assert "exited with status 3" in result.message
    assert "line one | ipmi: host unreachable" in result.message


def test_a_hook_killed_by_a_signal_says_so(tmp_path: Path) -> None:
    fence = script(tmp_path, "fence", "kill -TERM $$\n")
    result = run_one({"type": "exec", "command": [str(fence)]})
    assert result.outcome is Outcome.FAILED
    assert "killed by SIGTERM" in result.message


def test_environment_and_trailing_arguments(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "seen"
    fence = script(
        tmp_path,
        "fence",
        f'printf "%s\\n" "$@" > {out}\nenv | grep -E "^(PGQUORUM_|FENCE_)" | sort >> {out}\n',
    )
    monkeypatch.setenv("PGQUORUM_TERM", "999")  # stale, inherited from the agent: must not leak through
    result = run_one({"type": "exec", "command": [str(fence), "--hard"], "env": {"FENCE_TARGET": "bmc-{old_leader}"}})
    assert result.outcome is Outcome.OK, result.message
    assert out.read_text().splitlines() == [
        "--hard",
        "pg-a",
        "pg-b",
        "7",
        "main",
        "FENCE_TARGET=bmc-pg-a",
        "PGQUORUM_CLUSTER=main",
        "PGQUORUM_NEW_LEADER=pg-b",
        "PGQUORUM_OLD_LEADER=pg-a",
        "PGQUORUM_OLD_LEADER_API_URL=http://10.0.0.1:8008",
        "PGQUORUM_OLD_LEADER_HOST=10.0.0.1",
        "PGQUORUM_TERM=7",
    ]


def test_placeholders_choose_the_argv(tmp_path: Path) -> None:
    out = tmp_path / "seen"
    fence = script(tmp_path, "fence", f'printf "%s\\n" "$@" > {out}\n')
    result = run_one({"type": "exec", "command": [str(fence), "--node={old_leader_host}", "--term", "{term}", "{{x}}"]})
    assert result.outcome is Outcome.OK
    assert out.read_text().splitlines() == ["--node=10.0.0.1", "--term", "7", "{x}"]


def test_a_placeholder_without_a_value_fails_clearly(tmp_path: Path) -> None:
    fence = script(tmp_path, "fence", "exit 0\n")
    result = run_one(
        {"type": "exec", "command": [str(fence), "{old_leader_host}"]}, FenceRequest("main", "pg-a", "pg-b", 7)
    )
    assert result.outcome is Outcome.FAILED
    assert result.message == "stonith[0].command[1]: placeholder {old_leader_host} has no value for this failover"


def test_a_missing_or_non_executable_command_fails_naming_the_field(tmp_path: Path) -> None:
    result = run_one({"type": "exec", "command": [str(tmp_path / "nope")]})
    assert result.outcome is Outcome.FAILED
    assert "No such file or directory" in result.message and "stonith[0].command[0]" in result.message
    plain = tmp_path / "plain"
    plain.write_text("exit 0\n")
    plain.chmod(0o644)
    result = run_one({"type": "exec", "command": [str(plain)]})  # even root needs one x bit to exec
    assert result.outcome is Outcome.FAILED and "Permission denied" in result.message


def test_timeout_kills_the_whole_process_group(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    fence = script(
        tmp_path,
        "fence",
        f"sleep 300 &\necho $! > {pids}\necho $$ >> {pids}\necho fencing...\nsleep 300\n",
    )
    started = time.monotonic()
    result = run_one({"type": "exec", "command": [str(fence)], "timeout": 0.5})
    elapsed = time.monotonic() - started
    assert result.outcome is Outcome.TIMEOUT
    assert "did not exit within 0.5s" in result.message and "was killed" in result.message
    assert "fencing..." in result.message
    assert 0.5 <= elapsed < 3.0
    child, shell = (int(x) for x in pids.read_text().split())
    deadline = time.monotonic() + 2
    while (pid_alive(child) or pid_alive(shell)) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not pid_alive(shell), "the hook itself survived its timeout"
    assert not pid_alive(child), "a helper the hook forked survived the timeout"


def test_a_background_helper_holding_stdout_does_not_stretch_a_successful_hook(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    fence = script(tmp_path, "fence", f"sleep 300 &\necho $! > {pids}\nexit 0\n")
    started = time.monotonic()
    result = run_one({"type": "exec", "command": [str(fence)], "timeout": 5})
    assert result.outcome is Outcome.OK
    assert time.monotonic() - started < 2
    os.kill(int(pids.read_text()), 9)
