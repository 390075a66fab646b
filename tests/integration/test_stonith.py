"""STONITH end to end against a real PostgreSQL 15 primary laid out like the local runner leaves it.

* local-kill through ``cluster.json`` kills the old leader's agent and its postmaster *and every
  backend*: a client in the middle of a transaction loses its connection and nothing commits
  afterwards; a paused (SIGSTOPped) primary is killed the same way.
* a chain of every hook type in order (exec notifier, signed webhook, kubernetes fence against a
  recording server on loopback, local-kill), and a failing ``required`` webhook that blocks the
  promotion with a clear verdict and leaves the later hooks unrun.

The kubernetes hook talks to a small recording HTTP server here; the test against a real
kube-apiserver (RBAC, a StatefulSet recreating the pod) comes with the operator issue.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))  # the shared loopback servers

from stonith_servers import RecordingServer, Reply, Seen

from pgquorum.agent.clock import SystemClock
from pgquorum.agent.config import default_bin_dir
from pgquorum.agent.postgres.process import OsUser, children_of, kill_tree, make_dir, pid_alive, run
from pgquorum.agent.stonith import FenceRequest, Outcome, parse_hooks, run_hooks, verify_signature
from pgquorum.local.ports import free_port

BIN = Path(default_bin_dir())
REQ = FenceRequest("main", "a", "b", 4)
KEY = b"integration-hmac-key-0123456789"
TOKEN = "integration-token-abcdef0123456789"

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not (BIN / "postgres").exists(), reason=f"no PostgreSQL binaries in {BIN}"),
]


@dataclass
class OldLeader:
    data_dir: Path  # the local runner's DATA_DIR
    agent: subprocess.Popen[bytes]
    postmaster: subprocess.Popen[bytes]
    port: int

    def connect(self) -> psycopg.Connection[tuple[Any, ...]]:
        return psycopg.connect(host="127.0.0.1", port=self.port, user="postgres", dbname="postgres", connect_timeout=3)


@pytest.fixture
def old_leader() -> Iterator[OldLeader]:
    """Member ``a`` of a local-runner-shaped directory: a real postgres primary and an agent-like process."""
    user = OsUser.resolve(None)
    root = Path(tempfile.mkdtemp(prefix="pgq-stonith-", dir="/var/tmp"))
    root.chmod(0o755)
    home = root / "a"
    make_dir(home, user, 0o755)
    pgdata = home / "pgdata"
    result = run([str(BIN / "initdb"), "-D", str(pgdata), "-U", "postgres", "--auth=trust", "-N"], user, 120)
    assert result.returncode == 0, result.tail()
    port = free_port()
    started: list[subprocess.Popen[bytes]] = []
    try:
        postmaster = subprocess.Popen(
            [
                str(BIN / "postgres"), "-D", str(pgdata), "-p", str(port), "-k", str(home),
                "-c", "listen_addresses=127.0.0.1", "-c", "shared_buffers=16MB", "-c", "max_connections=20",
                "-c", "fsync=off",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=open(home / "postgres.log", "ab"),  # noqa: SIM115 - the child keeps it
            cwd="/",
            start_new_session=True,
            **user.popen_kwargs(),
        )  # fmt: skip
        started.append(postmaster)
        agent = subprocess.Popen(
            [sys.executable, "-c", "import time; time.sleep(600)", "agent", "--config", str(home / "agent.yaml")],
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        started.append(agent)
        state = {
            "cluster": "main",
            "run_as": user.name,
            "etcd_client_port": 1,
            "etcd_peer_port": 2,
            "members": [
                {"name": "a", "pg_port": port, "api_port": 1, "agent_pid": agent.pid},
                {"name": "b", "pg_port": 2, "api_port": 3, "agent_pid": None},
            ],
        }
        (root / "cluster.json").write_text(json.dumps(state))
        leader = OldLeader(root, agent, postmaster, port)
        deadline = time.monotonic() + 30
        while True:
            try:
                leader.connect().close()
                break
            except psycopg.OperationalError:
                assert time.monotonic() < deadline, (home / "postgres.log").read_text()[-2000:]
                time.sleep(0.1)
        yield leader
    finally:
        for proc in started:
            if proc.poll() is None:
                kill_tree(proc.pid)  # backends leave the postmaster's process group
            proc.wait(timeout=10)
        shutil.rmtree(root, ignore_errors=True)


def gone(pids: list[int], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while any(pid_alive(p) for p in pids):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def test_local_kill_stops_a_real_primary_mid_transaction(old_leader: OldLeader) -> None:
    client = old_leader.connect()
    client.execute("CREATE TABLE t (id int)")
    client.commit()
    client.execute("INSERT INTO t VALUES (1)")  # open transaction on a backend of the old primary
    backends = children_of(old_leader.postmaster.pid)
    assert len(backends) >= 3  # checkpointer, walwriter, ..., the client's backend

    outcome = run_hooks(parse_hooks([{"type": "local-kill", "data_dir": str(old_leader.data_dir)}]), REQ, SystemClock())

    assert outcome.may_promote, outcome.reason
    assert old_leader.agent.wait(timeout=5) == -signal.SIGKILL
    assert old_leader.postmaster.wait(timeout=5) == -signal.SIGKILL
    assert gone(backends), "a backend of the old primary survived: it could still finish a commit"
    with pytest.raises(psycopg.OperationalError):
        client.commit()
    with pytest.raises(psycopg.OperationalError):
        old_leader.connect()


def test_local_kill_stops_a_paused_primary(old_leader: OldLeader) -> None:
    os.kill(old_leader.agent.pid, signal.SIGSTOP)
    os.kill(old_leader.postmaster.pid, signal.SIGSTOP)  # first: a stopped postmaster forks no new child
    backends = children_of(old_leader.postmaster.pid)
    for pid in backends:
        with contextlib.suppress(ProcessLookupError):  # e.g. the fixture's probe backend, exiting
            os.kill(pid, signal.SIGSTOP)
    outcome = run_hooks(
        parse_hooks([{"type": "local-kill", "data_dir": str(old_leader.data_dir), "timeout": 3}]), REQ, SystemClock()
    )
    assert outcome.may_promote, outcome.reason
    assert outcome.results[0].duration < 3
    assert gone([old_leader.agent.pid, old_leader.postmaster.pid, *backends])


@dataclass
class Stamped:
    at: float
    seen: Seen


def test_every_hook_type_in_order_then_the_old_primary_is_gone(old_leader: OldLeader, tmp_path: Path) -> None:
    log: list[Stamped] = []

    def respond(req: Seen) -> Reply:
        log.append(Stamped(time.time(), req))
        if req.path == "/fence":
            ok = req.headers.get("authorization") == f"Bearer {TOKEN}" and verify_signature(
                KEY, req.body, req.headers.get("x-pgquorum-signature")
            )
            return Reply(200 if ok else 403, {"fenced": ok})
        return Reply(200, {"kind": "Pod"})  # the kubernetes DELETE

    (tmp_path / "token").write_text(TOKEN)
    (tmp_path / "key").write_bytes(KEY)
    stamp = tmp_path / "exec-ran-at"
    notify = tmp_path / "notify"
    notify.write_text(f'#!/bin/sh\ndate +%s.%N > {stamp}\necho "paging: $PGQUORUM_OLD_LEADER -> $2"\n')
    notify.chmod(0o755)
    srv = RecordingServer(respond)
    try:
        hooks = parse_hooks(
            [
                {"type": "exec", "name": "page", "policy": "best-effort", "command": [str(notify)]},
                {
                    "type": "webhook",
                    "name": "fencer",
                    "url": srv.url + "/fence",
                    "token_file": str(tmp_path / "token"),
                    "hmac_key_file": str(tmp_path / "key"),
                },
                {
                    "type": "kubernetes",
                    "name": "k8s",
                    "policy": "best-effort",
                    "api_url": srv.url,
                    "namespace": "db",
                },
                {"type": "local-kill", "name": "kill", "data_dir": str(old_leader.data_dir)},
            ]
        )
        outcome = run_hooks(hooks, REQ, SystemClock())
    finally:
        srv.close()
    assert outcome.may_promote, outcome.reason
    assert [(r.hook, r.outcome) for r in outcome.results] == [
        ("page", Outcome.OK),
        ("fencer", Outcome.OK),
        ("k8s", Outcome.OK),
        ("kill", Outcome.OK),
    ]
    assert "paging: a -> b" in outcome.results[0].message
    assert [(s.seen.method, s.seen.path.split("?")[0]) for s in log] == [
        ("POST", "/fence"),
        ("DELETE", "/api/v1/namespaces/db/pods/a"),
    ]
    assert float(stamp.read_text()) <= log[0].at <= log[1].at
    assert old_leader.postmaster.wait(timeout=5) == -signal.SIGKILL


def test_a_failing_required_webhook_blocks_promotion_and_the_later_hooks(old_leader: OldLeader) -> None:
    srv = RecordingServer(lambda req: Reply(500, b"fencing backend unavailable"))
    try:
        hooks = parse_hooks(
            [
                {"type": "webhook", "name": "fencer", "url": srv.url + "/fence", "timeout": 2},
                {"type": "local-kill", "name": "kill", "data_dir": str(old_leader.data_dir)},
            ]
        )
        outcome = run_hooks(hooks, REQ, SystemClock())
    finally:
        srv.close()
    assert not outcome.may_promote
    assert outcome.reason == (
        "promotion of b for term 4 blocked: required STONITH hook 'fencer' (webhook) failed: "
        f"POST {srv.url}/fence -> 500: fencing backend unavailable"
    )
    assert outcome.results[1].outcome is Outcome.SKIPPED
    assert outcome.metric_samples() == (("fencer", "failure"), ("kill", "skipped"))
    assert old_leader.postmaster.poll() is None  # not killed: this failover is not happening
    old_leader.connect().close()
