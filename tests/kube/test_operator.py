"""The operator on the real cluster (two replicas, one active, its least-privilege ClusterRole) and
a PostgresCluster of 3 in quorum mode, with a probe pod writing through ``-rw`` around every
disruption: created → Ready with one leader and a writable ``-rw``; a killed primary pod is replaced
by a promoted replica and ``-rw`` follows — with the operator running and scaled to 0 (it is not in
the failover path) — with no acknowledged write lost; a switchover asked for in the spec is carried
out and audited; a rolling image update and a scale 3→5→3 keep every write; deleting the resource
removes what it made (PVCs retained). Times are printed as ``MEASURE`` lines."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from kube_support import (
    assert_no_loss,
    client_pod,
    cut_off,
    etcd_pod,
    gap_around,
    heal,
    healthy,
    kill_leader_pod,
    ready_endpoints,
    retag,
    sql,
    start_probe,
    status,
    stop_probe,
    wait_for,
)

from pgquorum.kube.cluster import Kubectl, LocalKube
from pgquorum.kube.images import PGQUORUM_IMAGE
from pgquorum.operator.install import NAME as OPERATOR

pytestmark = pytest.mark.kube
SAFE_NODE = "node1"  # etcd and the probe stay here: the node-cut test never cuts it


@pytest.fixture(scope="module")
def db(kube: LocalKube, operator: str) -> Iterator[tuple[str, float]]:
    k = kube.kubectl
    ns = f"db-{uuid.uuid4().hex[:6]}"
    k.run(["create", "namespace", ns])
    endpoint = etcd_pod(k, ns, node=SAFE_NODE)  # the node-cut test cuts another one
    started = time.monotonic()
    body = {
        "apiVersion": "pgquorum.io/v1alpha1",
        "kind": "PostgresCluster",
        "metadata": {"name": "db"},
        "spec": {
            "instances": 3,
            "synchronous": {"mode": "quorum", "k": 1},
            "etcd": {"endpoints": [endpoint]},
            "parameters": {"shared_buffers": "32MB"},
            # the node-cut test checks the deferred out-of-service taint; a Ready node is never tainted
            "stonith": {"kubernetes": {"deletePod": True, "taintNode": True}},
        },
    }
    k.run(["-n", ns, "apply", "-f", "-"], stdin=json.dumps(body))
    try:
        wait_for("phase Healthy", lambda: status(k, ns).get("phase") == "Healthy", timeout=240)
    except AssertionError:
        print(k.run(["-n", operator, "logs", f"deployment/{OPERATOR}", "--tail=60"], check=False).stdout)
        print(k.run(["-n", ns, "get", "pods,pvc", "-o", "wide"], check=False).stdout)
        raise
    ready = time.monotonic() - started
    client_pod(k, ns, "db", node=SAFE_NODE)
    k.run(["-n", ns, "wait", "--for=condition=Ready", "pod/client", "--timeout=120s"], timeout=130)
    yield ns, ready
    k.run(["delete", "namespace", ns, "--wait=false"], check=False)


def test_a_cluster_of_three_becomes_ready_with_one_leader_and_a_writable_rw(
    kube: LocalKube, db: tuple[str, float]
) -> None:
    k = kube.kubectl
    ns, ready = db
    st = status(k, ns)
    print(f"MEASURE PostgresCluster of 3: Healthy {ready:.1f} s after apply; leader {st.get('leader')}")
    assert st["readyInstances"] == 3 and st["leader"] in ("db-0", "db-1", "db-2")
    roles = sorted(m["role"] for m in st["members"])
    assert roles == ["leader", "replica", "replica"], st["members"]
    assert {c["type"]: c["status"] for c in st["conditions"]}["Ready"] == "True"
    wait_for("-rw on the leader", lambda: ready_endpoints(k, ns) == [st["leader"]], timeout=30)
    ok, out = sql(k, ns, "create table t (id int primary key); insert into t values (1); select count(*) from t")
    assert ok and out.endswith("1"), out
    pods = k.json(["-n", ns, "get", "pods", "-l", "pgquorum.io/cluster=db"])["items"]
    assert len({p["spec"]["nodeName"] for p in pods}) == 3  # preferred anti-affinity spread them


def assert_failover_event(k: Kubectl, ns: str, old: str, new: str, timeout: float = 60) -> None:
    """The operator posts a Failover event on the cluster for the failover old -> new."""

    def posted() -> list[str] | None:
        events = k.json(["-n", ns, "get", "events", "--field-selector", "reason=Failover"])["items"]
        return [e["message"] for e in events] if any(f"{old} -> {new}" in e["message"] for e in events) else None

    wait_for(f"a Failover event {old} -> {new}", posted, timeout=timeout)


def test_a_killed_primary_pod_is_replaced_and_rw_follows_without_loss(
    kube: LocalKube, db: tuple[str, float], operator: str
) -> None:
    k = kube.kubectl
    ns, _ = db
    old, new, gap = kill_leader_pod(k, ns)
    print(f"MEASURE operator running: primary pod {old} killed, -rw on {new}, writes stopped {gap:.2f} s")
    # the operator recreates the lost pod once the new leader leads; it comes back as a replica
    st = healthy(k, ns, timeout=180)
    assert {m["name"]: m["role"] for m in st["members"]}[old] == "replica", st["members"]
    assert st["leader"] == new and st["lastFailover"]["to"] == new and st["lastFailover"]["from"] == old
    assert_failover_event(k, ns, old, new)


def test_failover_does_not_need_the_operator(kube: LocalKube, db: tuple[str, float], operator: str) -> None:
    k = kube.kubectl
    ns, _ = db
    healthy(k, ns)
    k.run(["-n", operator, "scale", f"deployment/{OPERATOR}", "--replicas=0"])
    try:
        operator_pods = ["-n", operator, "get", "pods", "-l", f"app.kubernetes.io/name={OPERATOR}"]
        wait_for("no operator pod", lambda: not k.json(operator_pods)["items"], timeout=60)
        old, new, gap = kill_leader_pod(k, ns)
        print(f"MEASURE operator scaled to 0: primary pod {old} killed, -rw on {new}, writes stopped {gap:.2f} s")
        ok, out = sql(k, ns, "select count(*) from t")
        assert ok and int(out.splitlines()[-1]) >= 1, out
    finally:
        k.run(["-n", operator, "scale", f"deployment/{OPERATOR}", "--replicas=2"])
    # back, the operator recreates the pod it did not see go
    healthy(k, ns, timeout=240)


def test_a_switchover_in_the_spec_is_carried_out_and_audited(kube: LocalKube, db: tuple[str, float]) -> None:
    k = kube.kubectl
    ns, _ = db
    st = healthy(k, ns)
    # the replica streaming longest (a member recreated by the tests before may still be settling)
    items = k.json(["-n", ns, "get", "pods"])["items"]
    pods = {p["metadata"]["name"]: p["metadata"]["creationTimestamp"] for p in items}
    target = min((m["name"] for m in st["members"] if m["role"] == "replica"), key=lambda n: pods[n])
    at = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    start_probe(k, ns)
    asked = time.time()
    patch = {"spec": {"switchover": {"target": target, "at": at}}}
    k.run(["-n", ns, "patch", "pgq", "db", "--type=merge", "-p", json.dumps(patch)])

    def done() -> dict[str, Any] | None:
        record = status(k, ns).get("switchover") or {}
        return record if record.get("target") == target and record.get("state") != "Pending" else None

    record = wait_for("status.switchover done", done, timeout=90)
    assert record["state"] == "Done" and record["at"] == at, record
    wait_for("-rw on the target", lambda: ready_endpoints(k, ns) == [target], timeout=30)
    took = time.time() - asked
    result = stop_probe(k, ns)
    assert_no_loss(result)
    worst = max((g["seconds"] for g in result["gaps"]), default=0.0)
    print(f"MEASURE switchover to {target}: done {took:.1f} s after the patch, longest write stop {worst:.2f} s")
    reasons = {e["reason"] for e in k.json(["-n", ns, "get", "events"])["items"]}
    assert {"Switchover", "SwitchoverDone"} <= reasons, reasons
    # the record stands: the same request is not carried out again
    time.sleep(5)
    assert status(k, ns)["switchover"] == record


def test_a_rolling_image_update_keeps_every_write(kube: LocalKube, db: tuple[str, float]) -> None:
    k = kube.kubectl
    ns, _ = db
    leader = healthy(k, ns)["leader"]
    rolled = f"{PGQUORUM_IMAGE}-rolled"
    retag(kube, PGQUORUM_IMAGE, rolled)
    start_probe(k, ns)
    started = time.monotonic()
    k.run(["-n", ns, "patch", "pgq", "db", "--type=merge", "-p", json.dumps({"spec": {"image": rolled}})])

    def rolled_out() -> bool:
        pods = k.json(["-n", ns, "get", "pods", "-l", "pgquorum.io/cluster=db"])["items"]
        images = {c["image"] for p in pods for c in p["spec"]["containers"]}
        return len(pods) == 3 and images == {rolled} and status(k, ns).get("phase") == "Healthy"

    order: list[str] = []

    def watch() -> bool:
        for p in k.json(["-n", ns, "get", "pods", "-l", "pgquorum.io/cluster=db"])["items"]:
            name = p["metadata"]["name"]
            if p["spec"]["containers"][0]["image"] == rolled and name not in order:
                order.append(name)
        return rolled_out()

    wait_for("every pod on the new image", watch, timeout=420)
    took = time.monotonic() - started
    st = healthy(k, ns)
    result = stop_probe(k, ns)
    assert_no_loss(result)
    assert order[-1] == leader, order  # the leader last, after a switchover
    worst = max((g["seconds"] for g in result["gaps"]), default=0.0)
    print(f"MEASURE rolling image update of 3: {took:.1f} s, order {order}, longest write stop {worst:.2f} s")
    assert st["leader"] != leader


def restart_operator_mid_change(k: Kubectl, operator: str, ns: str, begun: Callable[[dict[str, Any]], bool]) -> None:
    """Once the change has begun, kill both operator pods (grace 0): the new ones resume it."""
    wait_for("the change under way", lambda: begun(status(k, ns)), timeout=120)
    k.run(["-n", operator, "delete", "pods", "--all", "--grace-period=0", "--force"], check=False)


def test_scale_3_to_5_to_3_under_a_writer_without_loss_and_an_operator_restart_midway(
    kube: LocalKube, db: tuple[str, float], operator: str
) -> None:
    k = kube.kubectl
    ns, _ = db
    healthy(k, ns)
    start_probe(k, ns)
    started = time.monotonic()
    k.run(["-n", ns, "patch", "pgq", "db", "--type=merge", "-p", json.dumps({"spec": {"instances": 5}})])
    restart_operator_mid_change(k, operator, ns, lambda st: len(st.get("members", [])) > 3)
    st = healthy(k, ns, instances=5, timeout=300)
    up = time.monotonic() - started
    assert sorted(m["role"] for m in st["members"]) == ["leader", "replica", "replica", "replica", "replica"]
    assert st["quorum"]["provable"], st["quorum"]
    started = time.monotonic()
    k.run(["-n", ns, "patch", "pgq", "db", "--type=merge", "-p", json.dumps({"spec": {"instances": 3}})])
    restart_operator_mid_change(k, operator, ns, lambda st: "db-4" not in {m.get("pod") for m in st.get("members", [])})

    def three() -> bool:
        st = status(k, ns)
        names = {m["name"] for m in st.get("members", [])}
        return st.get("phase") == "Healthy" and names == {"db-0", "db-1", "db-2"}

    wait_for("back to 3 members", three, timeout=420)
    down = time.monotonic() - started
    result = stop_probe(k, ns)
    assert_no_loss(result)
    worst = max((g["seconds"] for g in result["gaps"]), default=0.0)
    print(
        f"MEASURE scale 3->5: {up:.1f} s; 5->3: {down:.1f} s; longest write stop {worst:.2f} s, {result['acked']} acked"
    )
    pods = {p["metadata"]["name"] for p in k.json(["-n", ns, "get", "pods", "-l", "pgquorum.io/cluster=db"])["items"]}
    assert pods == {"db-0", "db-1", "db-2"}


def test_a_primary_cut_off_with_its_node_is_fenced_and_leaves_rw(kube: LocalKube, db: tuple[str, float]) -> None:
    """The old primary's node reaches nothing: its kubelet cannot report and its agent cannot
    relabel its pod. The new leader, which reaches the apiserver, fences it as part of promoting:
    the STONITH hook deletes the pod with grace 0, and -rw sends nowhere else but the new leader."""
    k = kube.kubectl
    ns, _ = db
    st = healthy(k, ns)
    where = {m["name"]: m.get("node") for m in st["members"]}
    if where[st["leader"]] == SAFE_NODE:  # the leader must not share a node with etcd and the probe
        target = next(n for n, node in where.items() if node != SAFE_NODE)
        at = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        k.run(
            [
                "-n",
                ns,
                "patch",
                "pgq",
                "db",
                "--type=merge",
                "-p",
                json.dumps({"spec": {"switchover": {"target": target, "at": at}}}),
            ]
        )
        wait_for("the leader off the safe node", lambda: status(k, ns).get("leader") == target, timeout=90)
        st = healthy(k, ns)
    old = st["leader"]
    victim = next(n for n in kube.plan.nodes if n.name == where[old])
    old_uid = k.json(["-n", ns, "get", "pod", old])["metadata"]["uid"]
    start_probe(k, ns, node=SAFE_NODE)
    time.sleep(2)
    cut = time.time()
    cut_off(victim)
    try:

        def moved_on() -> str | None:
            eps = ready_endpoints(k, ns)
            return eps[0] if len(eps) == 1 and eps[0] != old else None

        # seen once at 57 s instead of 5 s (under investigation): the bound is safety, the time is reported
        new = wait_for("-rw on a new leader only", moved_on, timeout=150)
        moved = time.time() - cut

        def fenced() -> bool:
            got = k.run(["-n", ns, "get", "pod", old, "-o", "json"], check=False)
            return got.returncode != 0 or json.loads(got.stdout)["metadata"]["uid"] != old_uid

        wait_for(f"{old}'s pod deleted by the new leader", fenced, timeout=60)
        fenced_after = time.time() - cut
        time.sleep(3)
        result = stop_probe(k, ns)
        # The node was still Ready when the new leader fenced (the node controller waits its grace
        # period, 50 s): the leader keeps watching it and taints it once it is not Ready.
        wait_for(f"{victim.name} tainted out-of-service", lambda: out_of_service(k, victim.name), timeout=150)
        tainted_after = time.time() - cut
        not_ready = not_ready_since(k, victim.name)
    finally:
        heal(victim)
    assert_no_loss(result)
    gap = gap_around(result, cut)
    print(
        f"MEASURE node of primary {old} cut off: -rw on {new} alone {moved:.1f} s, "
        f"old pod deleted {fenced_after:.1f} s, writes stopped {gap:.2f} s, node tainted {tainted_after:.1f} s "
        f"(not Ready at {not_ready})"
    )
    # As Kubernetes documents for this taint, whoever repaired the node removes it.
    wait_for(f"{victim.name} Ready again", lambda: not_ready_since(k, victim.name) is None, timeout=120)
    k.run(["taint", "nodes", victim.name, "node.kubernetes.io/out-of-service:NoExecute-"])
    # healed: the member comes back as a replica on its own volume
    st = healthy(k, ns, timeout=240)
    assert {m["name"]: m["role"] for m in st["members"]}[old] == "replica", st["members"]
    # the operator's active replica may have been on the cut node: the event comes once it sees again
    assert_failover_event(k, ns, old, new)


def out_of_service(k: Kubectl, node: str) -> bool:
    taints = k.json(["get", "node", node])["spec"].get("taints") or []
    return any(t["key"] == "node.kubernetes.io/out-of-service" and t["effect"] == "NoExecute" for t in taints)


def not_ready_since(k: Kubectl, node: str) -> str | None:
    """When the node's Ready condition last turned not True; None while it is Ready."""
    for c in k.json(["get", "node", node])["status"].get("conditions") or []:
        if c["type"] == "Ready" and c["status"] != "True":
            return str(c.get("lastTransitionTime"))
    return None


def test_deleting_the_cluster_removes_what_it_made_and_keeps_the_volumes(
    kube: LocalKube, db: tuple[str, float]
) -> None:
    k = kube.kubectl
    ns, _ = db
    k.run(["-n", ns, "delete", "pgq", "db", "--wait=true", "--timeout=60s"], timeout=70)

    def gone() -> bool:
        left = k.json(
            [
                "-n",
                ns,
                "get",
                "pods,services,configmaps,secrets,roles,poddisruptionbudgets",
                "-l",
                "pgquorum.io/cluster=db",
            ]
        )
        return not left["items"]

    wait_for("the cluster's objects gone", gone, timeout=120)
    pvcs = k.json(["-n", ns, "get", "pvc", "-l", "pgquorum.io/cluster=db"])["items"]
    # pvcRetention: Retain (the default) keeps every volume, also those of db-3 and db-4 (scaled away)
    assert sorted(p["metadata"]["name"] for p in pvcs) == [f"db-{i}-data" for i in range(5)]
