"""``kubectl pgquorum`` on the real cluster: the installed ``kubectl-pgquorum`` executable, run with
this cluster's kubectl ($KUBECTL) and admin kubeconfig, against one PostgresCluster of 2 data members
and a witness (quorum votes: the witness's vote lets the surviving replica be promoted). ``status``
(table and JSON), ``history`` (pgquorumctl in the leader's pod), a ``failover`` to the replica with
``-rw`` following, a ``switchover`` asked for in ``spec.switchover`` and followed to Done (needs the
operator's status.switchover), and wrong command lines exiting 2 with one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kube_support import etcd_pod, ready_endpoints, status, wait_for

from pgquorum.kube.cluster import Kubectl, LocalKube
from pgquorum.operator.install import NAME as OPERATOR

pytestmark = pytest.mark.kube
PLUGIN = Path(sys.executable).parent / "kubectl-pgquorum"  # installed beside this interpreter


@pytest.fixture(scope="module")
def db(kube: LocalKube, operator: str) -> Iterator[str]:
    k = kube.kubectl
    ns = f"kp-{uuid.uuid4().hex[:6]}"
    k.run(["create", "namespace", ns])
    body = {
        "apiVersion": "pgquorum.io/v1alpha1",
        "kind": "PostgresCluster",
        "metadata": {"name": "db"},
        "spec": {
            "instances": 2,
            "witnesses": 1,
            "quorumVotes": True,
            "etcd": {"endpoints": [etcd_pod(k, ns)]},
            "parameters": {"shared_buffers": "32MB"},
        },
    }
    k.run(["-n", ns, "apply", "-f", "-"], stdin=json.dumps(body))
    try:
        healthy(k, ns)
    except AssertionError:
        print(k.run(["-n", operator, "logs", f"deployment/{OPERATOR}", "--tail=60"], check=False).stdout)
        print(k.run(["-n", ns, "get", "pods,pvc", "-o", "wide"], check=False).stdout)
        raise
    yield ns
    k.run(["delete", "namespace", ns, "--wait=false"], check=False)


def healthy(k: Kubectl, ns: str, timeout: float = 240) -> dict[str, Any]:
    """Healthy, both data members ready, the one that does not lead a replica again (a deposed
    leader is ready before its agent reports it streaming), and -rw on the leader."""

    def check() -> dict[str, Any] | None:
        st = status(k, ns)
        ok = st.get("phase") == "Healthy" and st.get("readyInstances") == 2
        roles = sorted(m["role"] for m in st.get("members", []) if m["name"] in ("db-0", "db-1"))
        return st if ok and roles == ["leader", "replica"] and ready_endpoints(k, ns) == [st.get("leader")] else None

    got: dict[str, Any] = wait_for("Healthy: a leader, a replica, -rw on the leader", check, timeout=timeout)
    return got


def plugin(kube: LocalKube, ns: str, *args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "KUBECTL": str(kube.kubectl.binary)}
    argv = [str(PLUGIN), f"--kubeconfig={kube.plan.admin_kubeconfig}", "-n", ns, *args]
    started = time.monotonic()
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout)
    print(f"$ kubectl pgquorum {' '.join(args)}  # rc {proc.returncode}, {time.monotonic() - started:.1f} s")
    print(proc.stdout + proc.stderr)
    return proc


def test_two_data_members_and_a_witness_become_healthy(kube: LocalKube, db: str) -> None:
    k = kube.kubectl
    st = healthy(k, db)
    roles = {m["name"]: m["role"] for m in st["members"]}
    assert sorted(roles.values()) == ["leader", "replica", "witness"] and roles["db-w0"] == "witness", roles
    witness = k.json(["-n", db, "get", "pod", "db-w0"])
    assert witness["metadata"]["labels"]["pgquorum.io/role"] == "witness"
    assert not [v for v in witness["spec"]["volumes"] if "persistentVolumeClaim" in v]
    pvcs = sorted(p["metadata"]["name"] for p in k.json(["-n", db, "get", "pvc"])["items"])
    assert pvcs == ["db-0-data", "db-1-data"]


def test_status_prints_the_header_and_members_and_json_the_status(kube: LocalKube, db: str) -> None:
    st = healthy(kube.kubectl, db)
    proc = plugin(kube, db, "status", "db")
    assert proc.returncode == 0 and proc.stderr == ""
    lines = proc.stdout.splitlines()
    assert lines[0].startswith(f"cluster db (namespace {db}): Healthy, leader {st['leader']}, term {st['term']}")
    assert any(line.startswith("quorum: ") for line in lines)
    header = next(i for i, line in enumerate(lines) if line.startswith("MEMBER"))
    rows = {line.split()[0]: line.split() for line in lines[header + 1 :]}
    assert set(rows) == {"db-0", "db-1", "db-w0"}
    assert rows[st["leader"]][1] == "leader" and rows["db-w0"][1] == "witness"
    assert all(r[-1] == "yes" for r in rows.values())
    proc = plugin(kube, db, "status", "db", "--json")
    assert proc.returncode == 0
    got = json.loads(proc.stdout)
    assert got["phase"] == "Healthy" and got["leader"] == st["leader"]
    assert sorted(m["name"] for m in got["members"]) == ["db-0", "db-1", "db-w0"]


def test_history_runs_pgquorumctl_in_the_leaders_pod(kube: LocalKube, db: str) -> None:
    st = healthy(kube.kubectl, db)
    proc = plugin(kube, db, "history", "db", "--json")
    assert proc.returncode == 0, proc.stderr
    items = json.loads(proc.stdout)["history"]
    assert items and items[-1]["new_leader"] == st["leader"] and items[-1]["term"] == st["term"], items
    proc = plugin(kube, db, "history", "db")
    assert proc.returncode == 0 and proc.stdout.split()[:3] == ["TERM", "TIMELINE", "AT"], proc.stdout


def test_wrong_command_lines_exit_2_with_one_line(kube: LocalKube, db: str) -> None:
    for args, says in (
        (["status", "nope"], "CLUSTER nope: no PostgresCluster 'nope' in namespace"),
        (["failover", "db", "--to", "db-w0", "--force"], "--to db-w0: not a data member of db; use one of db-0, db-1"),
        (["switchover", "db", "--to", "db-7"], "--to db-7: not a data member of db"),
        (["switchover", "db", "--at", "2020-01-01T00:00:00Z"], "--at '2020-01-01T00:00:00Z': that is in the past"),
    ):
        proc = plugin(kube, db, *args)
        assert proc.returncode == 2 and proc.stdout == "", args
        assert len(proc.stderr.splitlines()) == 1 and says in proc.stderr, (args, proc.stderr)


def test_a_failover_to_the_replica_moves_rw(kube: LocalKube, db: str) -> None:
    k = kube.kubectl
    st = healthy(k, db)
    replica = next(m["name"] for m in st["members"] if m["role"] == "replica")
    started = time.monotonic()
    proc = plugin(kube, db, "failover", "db", "--to", replica, "--force")
    assert proc.returncode == 0, proc.stderr
    assert f"{replica} leads" in proc.stdout, proc.stdout
    wait_for(f"-rw on {replica}", lambda: ready_endpoints(k, db) == [replica], timeout=60)
    print(f"MEASURE kubectl pgquorum failover: -rw on {replica} {time.monotonic() - started:.1f} s after the command")
    after = healthy(k, db)
    assert after["leader"] == replica and after["term"] > st["term"]


def test_a_switchover_is_asked_in_the_spec_and_followed_to_done(kube: LocalKube, db: str) -> None:
    """Needs the operator's side: spec.switchover carried out and recorded in status.switchover."""
    k = kube.kubectl
    st = healthy(k, db)
    target = next(m["name"] for m in st["members"] if m["role"] == "replica")  # the only one: the default
    proc = plugin(kube, db, "switchover", "db", "--timeout", "150")
    assert proc.returncode == 0, proc.stderr
    line = proc.stdout.strip()
    assert line.startswith(f"switchover to {target} done, leader {target} term "), line
    spec = k.json(["-n", db, "get", "pgq", "db"])["spec"]["switchover"]
    record = status(k, db)["switchover"]
    assert record["target"] == spec["target"] == target and record["at"] == spec["at"] and record["state"] == "Done"
    wait_for(f"-rw on {target}", lambda: ready_endpoints(k, db) == [target], timeout=60)
