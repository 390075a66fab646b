"""``pgquorumctl`` end to end against a real local cluster (etcd + 3 PostgreSQL members).

The tests share one cluster and run in file order: read-only commands first, then the changes;
each change waits for a healthy cluster again before the next test.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from local_support import scratch_cluster

from pgquorum.local.runner import LocalCluster

pytestmark = pytest.mark.integration


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.3) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def ctl(*args: str, env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """``python -m pgquorum.ctl ARGS`` with stdin not a terminal, and no PGQUORUM_* from the caller."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("PGQUORUM_")}
    return subprocess.run(
        [sys.executable, "-m", "pgquorum.ctl", *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**base, **(env or {})},
    )


def ok(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 0, f"{proc.args} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    assert "Traceback" not in proc.stderr
    return proc.stdout


def one_error_line(proc: subprocess.CompletedProcess[str], code: int = 1) -> str:
    assert proc.returncode == code, f"{proc.args}: expected exit {code}, got {proc.returncode}:\n{proc.stdout}"
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, f"expected one stderr line, got {lines!r}"
    assert "Traceback" not in proc.stderr
    return lines[0]


def dead_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    with scratch_cluster("pgquorum-ctl-") as c:
        up = subprocess.run(
            [sys.executable, "-m", "pgquorum", "local", "up", "--data-dir", str(c.data_dir)],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert up.returncode == 0, f"local up failed:\n{up.stdout}\n{up.stderr}"
        yield c


def local(c: LocalCluster) -> list[str]:
    return ["--local", "--data-dir", str(c.data_dir)]


def cluster_json(c: LocalCluster) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(ok(ctl("list", "--json", *local(c))))
    return data


def healthy(c: LocalCluster) -> dict[str, Any] | None:
    proc = ctl("list", "--json", *local(c))
    if proc.returncode != 0:
        return None
    view: dict[str, Any] = json.loads(proc.stdout)
    roles = sorted(m["role"] for m in view["members"])
    return view if roles == ["leader", "replica", "replica"] and view["leader"] else None


def replicas(view: dict[str, Any]) -> list[str]:
    return sorted(m["name"] for m in view["members"] if m["role"] == "replica")


# -- read-only -------------------------------------------------------------------------------------


def test_list_shows_one_leader_and_two_replicas(cluster: LocalCluster) -> None:
    view = wait_for(lambda: healthy(cluster), 90, "a healthy cluster")
    assert set(view) >= {"leader", "term", "members"}
    assert view["term"] >= 1
    for m in view["members"]:
        assert set(m) >= {"name", "role", "state", "term", "timeline", "lag_bytes", "api_url", "conn_url"}

    out = ok(ctl("list", *local(cluster)))
    lines = out.splitlines()
    assert lines[0] == f"cluster local: leader {view['leader']}, term {view['term']}"
    assert lines[1].split() == ["MEMBER", "ROLE", "STATE", "TERM", "TIMELINE", "LAG", "HOST"]
    rows = [line.split() for line in lines[2:5]]
    assert sorted(r[0] for r in rows) == sorted(m["name"] for m in view["members"])
    assert sorted(r[1] for r in rows) == ["leader", "replica", "replica"]
    leader_row = next(r for r in rows if r[1] == "leader")
    assert leader_row[0] == view["leader"] and leader_row[-1].startswith("127.0.0.1:")


def test_api_urls_and_pgquorum_ctl(cluster: LocalCluster) -> None:
    state = cluster.load()
    urls = ",".join([dead_url(), *(m.api_url for m in state.members)])
    view = json.loads(ok(ctl("--api", urls, "list", "--json")))
    assert view["leader"] in {m.name for m in state.members}
    env = {"PGQUORUM_API": state.members[1].api_url}
    assert json.loads(ok(ctl("list", "--json", env=env)))["leader"] == view["leader"]
    proc = subprocess.run(
        [sys.executable, "-m", "pgquorum", "ctl", "list", *local(cluster)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0 and "MEMBER" in proc.stdout, proc.stderr


def test_unreachable_api_is_one_line_and_exit_1() -> None:
    urls = [dead_url(), dead_url()]
    line = one_error_line(ctl("--api", ",".join(urls), "--timeout", "1", "list"))
    assert line.startswith("pgquorumctl: GET /cluster: no member API answered; tried ")
    for url in urls:
        assert f"{url} (connection refused)" in line


def test_etcd_discovery(cluster: LocalCluster) -> None:
    state = cluster.load()
    etcd = f"http://127.0.0.1:{state.etcd_client_port}"
    view = json.loads(ok(ctl("--etcd", f"{dead_url()},{etcd}", "--cluster", "local", "list", "--json")))
    assert view["leader"] == cluster_json(cluster)["leader"]
    out = ok(ctl("list", "--etcd", etcd, "--cluster", "local", "--prefix", "pgquorum"))
    assert out.startswith("cluster local: leader ")
    line = one_error_line(ctl("--etcd", etcd, "--cluster", "nosuch", "list"))
    assert "no member of cluster 'nosuch' is registered under /pgquorum/nosuch/" in line
    line = one_error_line(ctl("--etcd", dead_url(), "--cluster", "local", "--timeout", "1", "list"))
    assert line.startswith("pgquorumctl: --etcd: etcd unreachable")


def test_changes_need_force_without_a_terminal(cluster: LocalCluster) -> None:
    before = cluster_json(cluster)
    for args in (["switchover"], ["failover", "--candidate", "pg2"], ["restart", "pg1"], ["reinit", "pg2"]):
        line = one_error_line(ctl(*args, *local(cluster)), code=2)
        assert "stdin is not a terminal" in line and "--force" in line
    after = cluster_json(cluster)
    assert (after["leader"], after["term"]) == (before["leader"], before["term"])


def test_history_shows_the_bootstrap(cluster: LocalCluster) -> None:
    data = json.loads(ok(ctl("history", "--json", *local(cluster))))
    first = data["history"][0]
    assert first["reason"] == "bootstrap" and first["term"] == 1 and first["new_leader"]
    assert first["old_leader"] is None
    out = ok(ctl("history", *local(cluster)))
    assert out.splitlines()[0].split()[:3] == ["TERM", "TIMELINE", "AT"]
    assert "bootstrap" in out.splitlines()[1]


def test_config_show_set_and_edit(cluster: LocalCluster, tmp_path: Path) -> None:
    original = json.loads(ok(ctl("config", "show", "--json", *local(cluster))))["config"]
    assert set(original) >= {"maximum_lag_on_failover", "primary_start_timeout"}
    human = ok(ctl("config", "show", *local(cluster)))
    assert f"maximum_lag_on_failover: {original['maximum_lag_on_failover']}" in human.splitlines()

    line = one_error_line(ctl("config", "set", "no_such_setting=1", *local(cluster)))
    assert "bad request: no_such_setting: not a dynamic setting" in line and "(field: no_such_setting)" in line

    doubled = original["maximum_lag_on_failover"] * 2
    out = ok(ctl("config", "set", f"maximum_lag_on_failover={doubled}", *local(cluster)))
    assert out.splitlines() == [f"~ maximum_lag_on_failover: {original['maximum_lag_on_failover']} -> {doubled}"]
    assert (
        json.loads(ok(ctl("config", "show", "--json", *local(cluster))))["config"]["maximum_lag_on_failover"] == doubled
    )

    # config edit: an $EDITOR that changes one value; only that change is sent
    script = tmp_path / "editor.py"
    script.write_text(
        "import pathlib, re, sys\n"
        "p = pathlib.Path(sys.argv[1])\n"
        "p.write_text(re.sub(r'primary_start_timeout: .*', 'primary_start_timeout: 25.0', p.read_text()))\n"
    )
    out = ok(ctl("config", "edit", *local(cluster), env={"EDITOR": f"{sys.executable} {script}"}))
    assert out.splitlines() == [f"~ primary_start_timeout: {original['primary_start_timeout']} -> 25.0"]
    after = json.loads(ok(ctl("config", "show", "--json", *local(cluster))))["config"]
    assert (after["primary_start_timeout"], after["maximum_lag_on_failover"]) == (25.0, doubled)

    # null removes the overrides: back to the agents' own settings
    ok(ctl("config", "set", "maximum_lag_on_failover=null", "primary_start_timeout=null", *local(cluster)))
    assert json.loads(ok(ctl("config", "show", "--json", *local(cluster))))["config"] == original


# -- changes ---------------------------------------------------------------------------------------


def test_changes_without_credentials_are_refused(cluster: LocalCluster) -> None:
    state = cluster.load()
    line = one_error_line(ctl("--api", state.members[0].api_url, "switchover", "--force"))
    assert "HTTP 401" in line and "--token-file" in line


def test_switchover_to_a_candidate(cluster: LocalCluster) -> None:
    before = wait_for(lambda: healthy(cluster), 90, "a healthy cluster")
    candidate = replicas(before)[0]
    out = ok(ctl("switchover", "--candidate", candidate, "--force", *local(cluster), timeout=200))
    assert out.strip()
    after = wait_for(
        lambda: (v := healthy(cluster)) and v["leader"] == candidate and v, 60, f"{candidate} leading a healthy cluster"
    )
    assert after["term"] > before["term"]
    history = json.loads(ok(ctl("history", "--json", *local(cluster))))["history"]
    assert history[-1]["new_leader"] == candidate and history[-1]["old_leader"] == before["leader"]


def test_scheduled_switchover_is_accepted(cluster: LocalCluster) -> None:
    before = wait_for(lambda: healthy(cluster), 90, "a healthy cluster")
    when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 4))
    out = ok(ctl("switchover", "--scheduled", when, "--force", *local(cluster)))
    assert out.strip()
    after = wait_for(
        lambda: (v := healthy(cluster)) and v["leader"] != before["leader"] and v, 60, "the scheduled switchover"
    )
    assert after["term"] > before["term"]


def test_failover_to_a_candidate(cluster: LocalCluster) -> None:
    before = wait_for(lambda: healthy(cluster), 90, "a healthy cluster")
    candidate = replicas(before)[-1]
    proc = ctl("failover", "--candidate", candidate, "--force", *local(cluster), timeout=200)
    ok(proc)
    for line in proc.stderr.splitlines():
        assert line.startswith("WARNING: ")
    wait_for(lambda: (v := healthy(cluster)) and v["leader"] == candidate, 60, f"{candidate} leading")


def test_failover_to_a_stranger_is_refused(cluster: LocalCluster) -> None:
    line = one_error_line(ctl("failover", "--candidate", "nosuch", "--force", *local(cluster)))
    assert "nosuch" in line and "candidate" in line and ("HTTP 400" in line or "HTTP 409" in line)


def test_restart_a_replica(cluster: LocalCluster) -> None:
    before = wait_for(lambda: healthy(cluster), 90, "a healthy cluster")
    member = replicas(before)[0]
    pg_port = next(m.pg_port for m in cluster.load().members if m.name == member)
    pid_file = cluster.data_dir / member / "pgdata" / "postmaster.pid"
    old_pid = pid_file.read_text().split()[0]
    ok(ctl("restart", member, "--force", *local(cluster)))
    wait_for(
        lambda: pid_file.exists() and pid_file.read_text().split()[0] != old_pid,
        60,
        f"{member} (port {pg_port}) restarted",
    )
    wait_for(lambda: healthy(cluster), 90, "healthy after the restart")


def test_reinit_a_replica_and_refuse_the_leader(cluster: LocalCluster) -> None:
    before = wait_for(lambda: healthy(cluster), 90, "a healthy cluster")
    line = one_error_line(ctl("reinit", before["leader"], "--force", *local(cluster)))
    assert "HTTP 409" in line
    member = replicas(before)[-1]
    ok(ctl("reinit", member, "--force", *local(cluster), timeout=200))
    wait_for(lambda: healthy(cluster), 120, "healthy after the reinit")
