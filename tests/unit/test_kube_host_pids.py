"""Recorded pids of the local cluster's processes: a stale pid file must never name another process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from pgquorum.kube import host
from pgquorum.kube.plan import plan_cluster


def test_a_recorded_process_is_found_while_it_runs_and_forgotten_once_it_exits(tmp_path: Path) -> None:
    plan = plan_cluster(1, state_dir=tmp_path / "s", run_dir=tmp_path / "r")
    pid = host.start("sleeper", [sys.executable, "-c", "import time; time.sleep(60)"], plan, tmp_path / "log")
    assert host.recorded_pid(plan, "sleeper") == pid
    host.stop_recorded(plan, ["sleeper"], grace=5)
    assert not host.alive(pid)  # exited (a zombie of ours until reaped counts as gone)
    assert host.recorded_pid(plan, "sleeper") is None


def test_a_stale_pid_file_naming_a_live_process_is_ignored_and_that_process_is_not_killed(tmp_path: Path) -> None:
    plan = plan_cluster(1, state_dir=tmp_path / "s", run_dir=tmp_path / "r")
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        plan.pid_dir.mkdir(parents=True)
        # as a pid file copied from another machine or left over from before a reboot reads
        (plan.pid_dir / "old.pid").write_text(f"{bystander.pid} 00000000-0000-0000-0000-000000000000:1\n")
        (plan.pid_dir / "older.pid").write_text(f"{os.getpid()}\n")  # the format without an identity
        assert host.recorded_pid(plan, "old") is None
        assert host.recorded_pid(plan, "older") is None
        host.stop_recorded(plan, ["old", "older"], grace=1)
        assert bystander.poll() is None
    finally:
        bystander.kill()
        bystander.wait()
