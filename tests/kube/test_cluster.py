"""The local multi-node Kubernetes (``pgquorum kube up``) behaves as Kubernetes does: real
apiserver, kubelets on containerd, kube-proxy, CoreDNS, the local-path provisioner.
The cluster comes from the session fixture in conftest.py; each test works in its own namespace."""

from __future__ import annotations

import json
import time

import pytest
from kube_support import NODES, apply, busybox_pod, http_get, pods, running, wait_for

from pgquorum.chaos import netns
from pgquorum.kube.cluster import LocalKube, chaos_node
from pgquorum.kube.images import BUSYBOX_IMAGE

pytestmark = pytest.mark.kube


def test_pods_spread_over_nodes_and_a_service_reaches_a_pod_on_another_node(kube: LocalKube, ns: str) -> None:
    k = kube.kubectl
    apply(
        k,
        ns,
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "web"},
            "spec": {
                "replicas": NODES,
                "selector": {"matchLabels": {"app": "web"}},
                "template": {
                    "metadata": {"labels": {"app": "web"}},
                    "spec": {
                        "topologySpreadConstraints": [
                            {
                                "maxSkew": 1,
                                "topologyKey": "kubernetes.io/hostname",
                                "whenUnsatisfiable": "DoNotSchedule",
                                "labelSelector": {"matchLabels": {"app": "web"}},
                            }
                        ],
                        "containers": [
                            {
                                "name": "c",
                                "image": BUSYBOX_IMAGE,
                                "command": [
                                    "sh",
                                    "-c",
                                    "echo hello-from-$(hostname) > /tmp/index.html; httpd -f -p 8080 -h /tmp",
                                ],
                                "readinessProbe": {"tcpSocket": {"port": 8080}, "periodSeconds": 1},
                            }
                        ],
                    },
                },
            },
        },
    )
    apply(
        k,
        ns,
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "web"},
            "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]},
        },
    )
    ready = wait_for(
        "3 web pods running", lambda: len(running(pods(k, ns, "app=web"))) == NODES and running(pods(k, ns, "app=web"))
    )
    assert {p["spec"]["nodeName"] for p in ready} == {n.name for n in kube.plan.nodes}
    # a client on node1 asks the Service by DNS name until every backend (two on other nodes) answered
    apply(k, ns, busybox_pod("client", "sleep 3600", nodeName="node1"))
    wait_for("client running", lambda: running(pods(k, ns, "app=client")))
    seen: set[str] = set()

    def ask() -> bool:
        body = http_get(k, ns, "client", f"web.{ns}.svc.cluster.local", 80)
        if body:
            seen.add(body)
        return len(seen) == NODES

    wait_for("answers from every web pod through the Service", ask, timeout=60)
    svc_ip = k.json(["-n", ns, "get", "service", "web"])["spec"]["clusterIP"]
    assert (http_get(k, ns, "client", svc_ip, 80) or "").startswith("hello-from-web")


def test_a_pvc_binds_and_keeps_its_data_across_a_pod_restart(kube: LocalKube, ns: str) -> None:
    k = kube.kubectl
    apply(
        k,
        ns,
        {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {"name": "data"},
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "64Mi"}}},
        },
    )
    vol = {"volumes": [{"name": "d", "persistentVolumeClaim": {"claimName": "data"}}]}
    writer = busybox_pod("writer", "echo kept > /d/file; sleep 3600", **vol)
    writer["spec"]["containers"][0]["volumeMounts"] = [{"name": "d", "mountPath": "/d"}]
    apply(k, ns, writer)
    wait_for("writer running", lambda: running(pods(k, ns, "app=writer")))
    pvc = k.json(["-n", ns, "get", "pvc", "data"])
    assert pvc["status"]["phase"] == "Bound" and pvc["spec"]["storageClassName"] == "standard"
    node = k.json(["-n", ns, "get", "pod", "writer"])["spec"]["nodeName"]
    pv = k.json(["get", "pv", pvc["spec"]["volumeName"]])
    assert str(kube.plan.node(node).local_path_dir) in pv["spec"]["hostPath"]["path"]
    k.run(["-n", ns, "delete", "pod", "writer", "--wait=true", "--timeout=60s"])
    reader = busybox_pod("reader", "cat /d/file; sleep 3600", **vol)
    reader["spec"]["containers"][0]["volumeMounts"] = [{"name": "d", "mountPath": "/d"}]
    apply(k, ns, reader)
    wait_for("reader running", lambda: running(pods(k, ns, "app=reader")))
    assert wait_for("the data", lambda: k.run(["-n", ns, "logs", "reader"], check=False).stdout.strip() == "kept")


def test_a_statefulset_recreates_a_killed_pod(kube: LocalKube, ns: str) -> None:
    k = kube.kubectl
    apply(
        k,
        ns,
        {
            "apiVersion": "apps/v1",
            "kind": "StatefulSet",
            "metadata": {"name": "db"},
            "spec": {
                "serviceName": "db",
                "replicas": 2,
                "selector": {"matchLabels": {"app": "db"}},
                "template": {
                    "metadata": {"labels": {"app": "db"}},
                    "spec": {
                        "terminationGracePeriodSeconds": 1,
                        "containers": [{"name": "c", "image": BUSYBOX_IMAGE, "command": ["sleep", "3600"]}],
                    },
                },
            },
        },
    )
    wait_for("2 db pods", lambda: len(running(pods(k, ns, "app=db"))) == 2)
    old_uid = k.json(["-n", ns, "get", "pod", "db-0"])["metadata"]["uid"]
    k.run(["-n", ns, "delete", "pod", "db-0", "--grace-period=0", "--force"])

    def replaced() -> bool:
        p = k.run(["-n", ns, "get", "pod", "db-0", "-o", "json"], check=False)
        if p.returncode != 0:
            return False
        obj = json.loads(p.stdout)
        return bool(obj["metadata"]["uid"] != old_uid and obj["status"].get("phase") == "Running")

    wait_for("db-0 recreated", replaced, timeout=60)


def test_a_node_cut_off_goes_not_ready_and_its_pods_are_marked_for_eviction(kube: LocalKube, ns: str) -> None:
    k = kube.kubectl
    victim = kube.plan.nodes[-1]
    apply(k, ns, busybox_pod("stranded", "sleep 3600", nodeName=victim.name))
    wait_for("pod on the victim running", lambda: running(pods(k, ns, "app=stranded")))
    node = chaos_node(victim)
    others = [kube.plan.apiserver_addr] + [n.addr for n in kube.plan.nodes if n.name != victim.name]
    elements = "{ " + ", ".join(others) + " }"
    cut_at = time.monotonic()
    for chain_set in ("blocked_out", "blocked_in"):
        netns.nft(node.ns, ["add", "element", "inet", netns.TABLE, chain_set, elements])
    try:

        def not_ready() -> bool:
            obj = k.json(["get", "node", victim.name])
            conds = {c["type"]: c["status"] for c in obj["status"]["conditions"]}
            return conds.get("Ready") == "Unknown"

        wait_for(f"{victim.name} NotReady", not_ready, timeout=90)
        noticed = time.monotonic() - cut_at
        # node-monitor-grace-period is 50 s in 1.34; allow the monitor period on top
        assert noticed <= 60, noticed
        taints = {t["key"] for t in k.json(["get", "node", victim.name])["spec"].get("taints", [])}
        assert "node.kubernetes.io/unreachable" in taints

        def marked() -> bool:
            pod = k.json(["-n", ns, "get", "pod", "stranded"])
            ready = {c["type"]: c["status"] for c in pod["status"].get("conditions", [])}
            return ready.get("Ready") == "False"

        wait_for("the stranded pod marked not ready", marked, timeout=30)
    finally:
        for chain_set in ("blocked_out", "blocked_in"):
            netns.nft(node.ns, ["flush", "set", "inet", netns.TABLE, chain_set])
    wait_for(
        f"{victim.name} Ready again",
        lambda: all(
            c["status"] == "True"
            for c in k.json(["get", "node", victim.name])["status"]["conditions"]
            if c["type"] == "Ready"
        ),
        timeout=90,
    )
