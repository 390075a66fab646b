"""STONITH in the promotion path, with real agents, etcd and PostgreSQL (invariant I2).

Every data member fences the old leader through two exec hooks before promoting: ``gate`` (required)
succeeds only once a flag file exists, ``audit`` (best-effort) always fails. While the gate fails, no
member may promote — the cluster refuses writes in a clear, logged state; once it passes, the new
leader promotes although the best-effort hook failed, and counts that failure in its metrics.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from local_support import scratch_cluster

from pgquorum.local.runner import LocalCluster

pytestmark = pytest.mark.integration


def wait_for(predicate: Any, timeout: float, what: str, interval: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def run_cli(*args: str) -> str:
    proc = subprocess.run([sys.executable, "-m", "pgquorum", *args], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"pgquorum {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


@pytest.fixture(scope="module")
def setup() -> Iterator[tuple[LocalCluster, Path]]:
    with scratch_cluster("pgquorum-stonith-", tail=25) as cluster:
        hooks = cluster.data_dir.parent / "hooks"
        hooks.mkdir()
        hooks.chmod(0o777)  # the agents run as the postgres user
        gate = hooks / "gate.sh"
        gate.write_text(
            "#!/bin/sh\n"
            f'echo "$PGQUORUM_OLD_LEADER $PGQUORUM_NEW_LEADER $PGQUORUM_TERM" >> {hooks}/calls\n'
            f"test -f {hooks}/allow\n"
        )
        audit = hooks / "audit.sh"
        audit.write_text("#!/bin/sh\nexit 3\n")
        for script in (gate, audit):
            script.chmod(0o755)
        cluster.up(
            stonith=[
                {"type": "exec", "name": "gate", "command": [str(gate)], "timeout": 2, "policy": "required"},
                {"type": "exec", "name": "audit", "command": [str(audit)], "timeout": 2, "policy": "best-effort"},
            ]
        )
        yield cluster, hooks


def status(cluster: LocalCluster) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(run_cli("local", "status", "--json", "--data-dir", str(cluster.data_dir)))
    return data


def writable(dsn: str) -> bool:
    try:
        with psycopg.connect(dsn, autocommit=True, connect_timeout=1) as conn:
            conn.execute("CREATE TABLE IF NOT EXISTS stonith_rows (at float8)")
            conn.execute("INSERT INTO stonith_rows VALUES (extract(epoch FROM now()))")
            return True
    except psycopg.Error:
        return False


def test_required_hook_blocks_promotion_until_it_succeeds_best_effort_failure_is_counted(
    setup: tuple[LocalCluster, Path],
) -> None:
    cluster, hooks = setup
    before = status(cluster)
    old, term = before["leader"], before["term"]
    assert old and writable(before["dsn"])
    run_cli("local", "kill", "--member", old, "--data-dir", str(cluster.data_dir))

    # The gate fails: someone takes the key (and runs the hooks), nobody promotes, writes stay refused.
    wait_for(lambda: (hooks / "calls").exists(), 20, "the STONITH hooks to run")
    blocked_until = time.monotonic() + 8.0
    while time.monotonic() < blocked_until:
        assert not writable(before["dsn"]), "a member promoted although a required STONITH hook failed"
        time.sleep(0.3)
    calls = (hooks / "calls").read_text().split()
    assert calls[0] == old and calls[1] != old and int(calls[2]) > term
    logs = "".join(p.read_text(errors="replace") for p in cluster.data_dir.glob("*/agent.log"))
    assert "promotion blocked by STONITH" in logs
    assert len((hooks / "calls").read_text().splitlines()) >= 2, "a blocked promotion retries the hooks"

    # The fence works now: the next retry passes and the new leader promotes.
    (hooks / "allow").write_text("")
    started = time.monotonic()
    wait_for(lambda: writable(before["dsn"]), 30, "promotion once the required hook succeeds", interval=0.1)
    print(f"writes back {time.monotonic() - started:.2f}s after the fence started to succeed")
    after = status(cluster)
    leader = next(m for m in after["members"] if m["name"] == after["leader"])
    with urllib.request.urlopen(leader["api_url"] + "/metrics", timeout=3) as resp:
        metrics = resp.read().decode()
    assert any(
        line.startswith("pgquorum_stonith_results_total")
        and 'hook="audit"' in line
        and 'outcome="failure"' in line
        and float(line.rsplit(" ", 1)[1]) >= 1
        for line in metrics.splitlines()
    ), "the best-effort hook's failure was not counted"
    assert any(
        line.startswith("pgquorum_stonith_results_total")
        and 'hook="gate"' in line
        and 'outcome="success"' in line
        and float(line.rsplit(" ", 1)[1]) >= 1
        for line in metrics.splitlines()
    )

    run_cli("local", "start", "--member", old, "--data-dir", str(cluster.data_dir))
    wait_for(
        lambda: sorted(m["role"] for m in status(cluster)["members"]) == ["leader", "replica", "replica"],
        120,
        "the killed member rejoining",
    )
