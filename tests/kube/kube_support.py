"""Plain helpers for the tests under tests/kube (fixtures are in conftest.py)."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

from pgquorum.chaos import netns
from pgquorum.kube import chart_install
from pgquorum.kube.cluster import Kubectl, LocalKube
from pgquorum.kube.helm import run_helm
from pgquorum.kube.images import BUSYBOX_IMAGE, ETCD_IMAGE, PGQUORUM_IMAGE
from pgquorum.kube.plan import NodePlan

NODES = 3
CHART = Path(__file__).resolve().parents[2] / "charts" / "pgquorum"
RELEASE = chart_install.RELEASE  # the release the operator fixture installs (tests/kube/conftest.py)
OPERATOR_NAMESPACE = chart_install.NAMESPACE


def apply(k: Kubectl, ns: str, obj: dict[str, Any]) -> None:
    k.run(["-n", ns, "apply", "-f", "-"], stdin=json.dumps(obj))


def wait_for(what: str, check: Any, timeout: float = 120.0) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what} (last: {last!r})")


def busybox_pod(name: str, command: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {
            "containers": [{"name": "c", "image": BUSYBOX_IMAGE, "command": ["sh", "-c", command]}],
            "terminationGracePeriodSeconds": 1,
            **spec,
        },
    }


def http_get(k: Kubectl, ns: str, pod: str, host: str, port: int) -> str | None:
    """The body of ``GET /`` from inside ``pod`` (busybox nc: Debian's static wget crashes)."""
    script = f"printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 2 {host} {port}"
    out = k.run(["-n", ns, "exec", pod, "--", "sh", "-c", script], check=False)
    if out.returncode != 0 or "\n\n" not in out.stdout:  # text mode: CRLF arrives as \n
        return None
    return out.stdout.split("\n\n", 1)[1].strip()


def pods(k: Kubectl, ns: str, selector: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = k.json(["-n", ns, "get", "pods", "-l", selector])["items"]
    return items


def running(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        p for p in items if p["status"].get("phase") == "Running" and p["metadata"].get("deletionTimestamp") is None
    ]


# ----------------------------------------------------------------------------- PostgresClusters


def etcd_pod(k: Kubectl, ns: str, node: str | None = None) -> str:
    """A one-member etcd for the agents of clusters in ``ns``; its client URL."""
    apply(
        k,
        ns,
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "etcd", "labels": {"app": "etcd"}},
            "spec": {
                **({"nodeName": node} if node else {}),
                "terminationGracePeriodSeconds": 1,
                "containers": [
                    {
                        "name": "etcd",
                        "image": ETCD_IMAGE,
                        "args": [
                            "--listen-client-urls=http://0.0.0.0:2379",
                            "--advertise-client-urls=http://etcd:2379",
                        ],
                    }
                ],
            },
        },
    )
    apply(
        k,
        ns,
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "etcd"},
            "spec": {"selector": {"app": "etcd"}, "ports": [{"port": 2379}]},
        },
    )
    return f"http://etcd.{ns}.svc:2379"


def client_pod(k: Kubectl, ns: str, cluster: str, node: str | None = None) -> None:
    """A pod with psql and the cluster's superuser password, to write through its Services."""
    apply(
        k,
        ns,
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "client"},
            "spec": {
                **({"nodeName": node} if node else {}),
                "terminationGracePeriodSeconds": 1,
                "securityContext": {"runAsNonRoot": True, "runAsUser": 999},
                "containers": [
                    {
                        "name": "c",
                        "image": PGQUORUM_IMAGE,
                        "command": ["sleep", "infinity"],
                        "env": [
                            {
                                "name": "PGPASSWORD",
                                "valueFrom": {"secretKeyRef": {"name": f"{cluster}-secrets", "key": "superuser"}},
                            }
                        ],
                    }
                ],
            },
        },
    )


def sql(k: Kubectl, ns: str, query: str, host: str = "db-rw") -> tuple[bool, str]:
    """(succeeded, output) of psql in the client pod."""
    out = k.run(
        ["-n", ns, "exec", "client", "--", "psql", "-h", host, "-U", "postgres", "-d", "postgres", "-Atc", query],
        check=False,
        timeout=20,
    )
    return out.returncode == 0, (out.stdout + out.stderr).strip()


def status(k: Kubectl, ns: str, name: str = "db") -> dict[str, Any]:
    got: dict[str, Any] = k.json(["-n", ns, "get", "pgq", name]).get("status") or {}
    return got


def ready_endpoints(k: Kubectl, ns: str, service: str = "db-rw") -> list[str]:
    """The pods a Service sends to now (ready endpoints of its EndpointSlices)."""
    slices = k.json(["-n", ns, "get", "endpointslices", "-l", f"kubernetes.io/service-name={service}"])["items"]
    return sorted(
        e["targetRef"]["name"] for s in slices for e in s.get("endpoints") or [] if e.get("conditions", {}).get("ready")
    )


def start_probe(k: Kubectl, ns: str, cluster: str = "db", name: str = "probe", node: str | None = None) -> None:
    """A pod writing through ``<cluster>-rw`` (``pgquorum chaos probe``) until ``stop_probe``."""
    dsn = f"host={cluster}-rw user=postgres dbname=postgres connect_timeout=2"
    k.run(["-n", ns, "delete", "pod", name, "--ignore-not-found", "--wait=true"], timeout=60)
    apply(
        k,
        ns,
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name},
            "spec": {
                **({"nodeName": node} if node else {}),
                "restartPolicy": "Never",
                "terminationGracePeriodSeconds": 1,
                "securityContext": {"runAsNonRoot": True, "runAsUser": 999},
                "containers": [
                    {
                        "name": "probe",
                        "image": PGQUORUM_IMAGE,
                        "command": ["pgquorum", "chaos", "probe", "--dsn", dsn, "--stop-file", "/tmp/stop"],
                        "env": [
                            {
                                "name": "PGPASSWORD",
                                "valueFrom": {"secretKeyRef": {"name": f"{cluster}-secrets", "key": "superuser"}},
                            }
                        ],
                    }
                ],
            },
        },
    )

    def writing() -> bool:
        logs = k.run(["-n", ns, "logs", name], check=False).stdout
        return '"started"' in logs

    wait_for(f"probe {name} writing", writing, timeout=120)


def stop_probe(k: Kubectl, ns: str, name: str = "probe") -> dict[str, Any]:
    """Stop the probe; its report (acked, lost, phantoms, gaps without acks, ...)."""
    k.run(["-n", ns, "exec", name, "--", "touch", "/tmp/stop"])

    def finished() -> bool:
        phase = k.json(["-n", ns, "get", "pod", name])["status"].get("phase")
        return phase in ("Succeeded", "Failed")

    wait_for(f"probe {name} to finish", finished, timeout=180)
    lines = k.run(["-n", ns, "logs", name]).stdout.strip().splitlines()
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def healthy(k: Kubectl, ns: str, instances: int = 3, timeout: float = 240) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        st = status(k, ns)
        # quorum mode: also the leader's quorum record, without which no failover may promote
        ok = st.get("phase") == "Healthy" and st.get("readyInstances") == instances and st["quorum"]["provable"]
        return st if ok and ready_endpoints(k, ns) == [st.get("leader")] else None

    got: dict[str, Any] = wait_for(f"Healthy, {instances} ready, quorum provable, -rw on the leader", check, timeout)
    return got


def assert_no_loss(result: dict[str, Any]) -> None:
    assert result["acked"] > 0, result
    assert not result["lost"] and not result["phantoms"] and not result["bank"], result


def kill_leader_pod(k: Kubectl, ns: str) -> tuple[str, str, float]:
    """Force-delete the leader's pod (grace 0); (old, new leader, seconds without an acked write)."""
    old = healthy(k, ns)["leader"]
    start_probe(k, ns)
    # the dying agent's last words (its pod and log vanish with it): how it shut down, and when
    tail = subprocess.Popen(k.argv(["-n", ns, "logs", "-f", old]), stdout=subprocess.PIPE, text=True)
    time.sleep(2)
    killed = time.time()
    k.run(["-n", ns, "delete", "pod", old, "--grace-period=0", "--force"], check=False)
    new = wait_for("-rw on a new leader", lambda: (e := ready_endpoints(k, ns)) and e[0] != old and e[0], timeout=60)
    time.sleep(3)
    tail.terminate()
    last_words, _ = tail.communicate(timeout=10)
    for line in last_words.splitlines():
        if any(w in line for w in ("shutdown", "release", "stopped", "signal")):
            print(f"  {old}: {line[:200]}")
    result = stop_probe(k, ns)
    assert_no_loss(result)
    print(f"probe: {result['acked']} acked, gaps {result['gaps'][:3]}, killed at {killed:.3f}")
    return old, new, gap_around(result, killed)


def gap_around(result: dict[str, Any], t: float, within: float = 15.0) -> float:
    """The longest window without an acknowledged write that began around wall-clock time ``t``
    (a fault injected then: the last ack before it up to ``within`` s later, as kubectl and the
    kubelet take a moment to act); 0 when writes never stopped."""
    return max((g["seconds"] for g in result["gaps"] if t - 1.0 <= g["from"] <= t + within), default=0.0)


CUT_TABLE = "pqcut"


def cut_off(node: NodePlan) -> None:
    """Cut ``node`` off from everything — the apiserver, the other nodes and their pods — in its
    namespace, its own pods included (their traffic is forwarded through it): only loopback and
    traffic between its own pods pass. ``heal`` undoes it."""
    local = node.pod_cidr
    ruleset = (
        f"table inet {CUT_TABLE} {{\n"
        f"  chain input {{ type filter hook input priority -10; policy drop; iif lo accept; "
        f"ip saddr {local} accept; }}\n"
        f"  chain output {{ type filter hook output priority -10; policy drop; oif lo accept; "
        f"ip daddr {local} accept; }}\n"
        f"  chain forward {{ type filter hook forward priority -10; policy drop; "
        f"ip saddr {local} ip daddr {local} accept; }}\n"
        "}\n"
    )
    netns.nft(node.ns, ["-f", "-"], stdin=ruleset)


def heal(node: NodePlan) -> None:
    netns.nft(node.ns, ["delete", "table", "inet", CUT_TABLE])


# ----------------------------------------------------------------------------- the Helm chart


def helm(*args: str, kube: LocalKube | None = None, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    """Helm as `pgquorum kube build` built it; against ``kube``'s apiserver when given."""
    return run_helm(args, kube.plan.admin_kubeconfig if kube else None, timeout)


def install_chart(kube: LocalKube, *values: str, image: str = PGQUORUM_IMAGE) -> None:
    """The chart as release ``pgquorum`` in ``pgquorum-system`` with the bundled etcd and ``values``
    (more ``--set`` arguments), as ``pgquorum kube install`` does it; waits for everything."""
    chart_install.install_chart(kube.kubectl, ["--set", "etcd.enabled=true", *values], image=image)


def retag(kube: LocalKube, image: str, new: str) -> None:
    """``image`` under the reference ``new`` on every node: a real new reference to roll to,
    without a registry."""
    for node in kube.plan.nodes:
        tag = ["ctr", "--address", str(node.containerd_socket), "-n", "k8s.io", "images", "tag", "--force"]
        subprocess.run([*tag, image, new], check=True, capture_output=True, timeout=60)


def explain(k: Kubectl) -> None:
    """What every PostgresCluster says it waits for, its pods' last log lines, recent events and
    the operator's last log lines: a failure in CI has to explain itself."""

    def show(argv: list[str], lines: int = 60) -> None:
        out = k.run(argv, check=False, timeout=30)
        print(f"\n--- kubectl {' '.join(argv)} ---")
        print("\n".join((out.stdout + out.stderr).splitlines()[-lines:]))

    clusters = k.run(["get", "postgresclusters", "-A", "-o", "json"], check=False, timeout=30)
    for pgc in json.loads(clusters.stdout or '{"items": []}')["items"]:
        st = pgc.get("status", {})
        print(
            f"\n--- {pgc['metadata']['namespace']}/{pgc['metadata']['name']}: phase {st.get('phase')}, "
            f"leader {st.get('leader')}, term {st.get('term')}"
        )
        for c in st.get("conditions", []):
            print(f"  {c['type']}={c['status']} {c.get('reason')}: {c.get('message')}")
        for m in st.get("members", []):
            print(f"  member {m}")
        for pod in k.run(["-n", pgc["metadata"]["namespace"], "get", "pods", "-o", "name"], check=False).stdout.split():
            show(["-n", pgc["metadata"]["namespace"], "logs", pod, "--all-containers", "--tail=15"], 15)
    show(["get", "pods", "-A", "-o", "wide"])
    show(["get", "events", "-A", "--sort-by=.lastTimestamp"], 40)
    show(
        ["-n", OPERATOR_NAMESPACE, "logs", "-l", "app.kubernetes.io/name=pgquorum-operator", "--prefix", "--tail=60"],
        80,
    )
