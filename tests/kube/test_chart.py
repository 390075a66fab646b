"""The Helm chart (``charts/pgquorum``) with the Helm this project builds (``pgquorum kube build``).

Offline: ``helm lint --strict`` passes; its CRDs are the ones the operator's code defines; rendered
with the defaults it makes exactly the objects ``pgquorum operator manifests`` prints (one source of
truth, checked); a wrong value fails with the key's name. On the real cluster: the chart's operator,
bundled etcd and example cluster become Healthy, ``helm test`` writes through ``-rw``, a killed
primary fails over without loss, ``helm upgrade`` to a new image rolls the cluster under a writer
without loss (replicas first, one switchover), ``helm rollback`` rolls it back and ``helm uninstall``
removes everything but the volumes."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
import yaml
from kube_support import (
    CHART,
    OPERATOR_NAMESPACE,
    RELEASE,
    assert_no_loss,
    explain,
    healthy,
    helm,
    install_chart,
    kill_leader_pod,
    retag,
    start_probe,
    status,
    stop_probe,
    wait_for,
)

from pgquorum.kube.cluster import Kubectl, LocalKube
from pgquorum.kube.images import PGQUORUM_IMAGE
from pgquorum.kube.manifests_bundle import BUNDLES, render_bundle
from pgquorum.operator.cli import peering_crds
from pgquorum.operator.crd import postgrescluster_crd
from pgquorum.operator.install import NAME as OPERATOR
from pgquorum.operator.install import operator_objects

pytestmark = pytest.mark.kube


def test_the_chart_lints_strict() -> None:
    proc = helm("lint", "--strict", str(CHART))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_charts_crds_are_the_operators() -> None:
    shipped = [d for f in sorted((CHART / "crds").glob("*.yaml")) for d in yaml.safe_load_all(f.read_text())]
    wanted = [postgrescluster_crd(), *peering_crds()]
    key = lambda o: o["metadata"]["name"]  # noqa: E731
    assert sorted(shipped, key=key) == sorted(wanted, key=key), "regenerate charts/pgquorum/crds (see its header)"


def rendered(*args: str, hooks: bool = False) -> list[dict[str, Any]]:
    """The release's objects (``hooks``: Helm's hook objects instead: tests, pre-delete)."""
    proc = helm("template", "r", str(CHART), "--namespace", "pgquorum-system", *args)
    assert proc.returncode == 0, proc.stderr
    objects = [d for d in yaml.safe_load_all(proc.stdout) if d]
    return [o for o in objects if ("helm.sh/hook" in o["metadata"].get("annotations", {})) == hooks]


def by_name(objects: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(o["kind"], o["metadata"]["name"]): o for o in objects}


DASHBOARD = ("ConfigMap", "pgquorum-dashboard")
MONITORING_APIS = ["--api-versions", "monitoring.coreos.com/v1/PodMonitor"]
MONITORING_APIS += ["--api-versions", "monitoring.coreos.com/v1/PrometheusRule"]


def test_rendered_with_the_defaults_it_is_what_the_operator_installs() -> None:
    expected = [o for o in operator_objects("pgquorum-system", PGQUORUM_IMAGE, replicas=2) if o["kind"] != "Namespace"]
    got = by_name(rendered())
    assert got.pop(DASHBOARD)["metadata"]["labels"] == {"grafana_dashboard": "1"}
    assert got == by_name(expected)


def test_monitoring_objects_are_rendered_only_where_their_crds_exist() -> None:
    without = by_name(rendered("--set", "etcd.enabled=true"))
    assert not [key for key in without if key[0] in ("PodMonitor", "PrometheusRule")]
    got = by_name(rendered("--set", "etcd.enabled=true", *MONITORING_APIS))
    agents = got[("PodMonitor", "pgquorum-agents")]["spec"]
    assert agents["namespaceSelector"] == {"any": True}
    assert agents["podMetricsEndpoints"][0]["port"] == "api"  # the member pods' API port serves /metrics
    assert got[("PodMonitor", "pgquorum-etcd")]["spec"]["podMetricsEndpoints"][0]["port"] == "metrics"
    alerts = yaml.safe_load((CHART / "files" / "alerts.yaml").read_text())
    assert got[("PrometheusRule", "pgquorum")]["spec"] == alerts
    dashboard = json.loads(got[DASHBOARD]["data"]["pgquorum.json"])
    assert dashboard == json.loads((CHART / "files" / "dashboard.json").read_text())
    off = by_name(
        rendered(
            "--set",
            "monitoring.podMonitor.enabled=false",
            "--set",
            "monitoring.dashboard.enabled=false",
            *MONITORING_APIS,
        )
    )
    assert (
        ("PodMonitor", "pgquorum-agents") not in off and DASHBOARD not in off and ("PrometheusRule", "pgquorum") in off
    )


def test_values_reach_the_deployment() -> None:
    got = by_name(
        rendered("--set", "operator.replicas=3", "--set", "image.tag=9.9", "--set", "image.pullPolicy=Always")
    )
    deployment = got[("Deployment", "pgquorum-operator")]
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert deployment["spec"]["replicas"] == 3
    assert container["image"] == "localhost/pgquorum:9.9" and container["imagePullPolicy"] == "Always"


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("operator.replicas=two", "at '/operator/replicas': got string, want integer"),
        ("operator.replicas=0", "/operator/replicas"),
        ("image.pullPolicy=Sometimes", "/image/pullPolicy"),
        ("nope=1", "additional properties 'nope' not allowed"),
        ("operator.replica=2", "additional properties 'replica' not allowed"),
        ("etcd.replicas=2", "/etcd/replicas"),
        ("monitoring.podMonitor.interval=often", "/monitoring/podMonitor/interval"),
        ("exampleCluster.name=Bad_Name", "/exampleCluster/name"),
    ],
)
def test_a_wrong_value_fails_naming_the_key(value: str, says: str) -> None:
    proc = helm("template", "r", str(CHART), "--set", value)
    assert proc.returncode != 0 and says in proc.stderr, proc.stderr


def test_the_bundled_etcd_is_what_the_operator_is_told() -> None:
    got = by_name(rendered("--set", "etcd.enabled=true", "--set", "etcd.replicas=3"))
    urls = ",".join(f"http://pgquorum-etcd-{i}.pgquorum-etcd.pgquorum-system.svc:2379" for i in range(3))
    expected = by_name(operator_objects("pgquorum-system", PGQUORUM_IMAGE, replicas=2, bundled_etcd=urls))
    assert got[("Deployment", OPERATOR)] == expected[("Deployment", OPERATOR)]
    etcd = got[("StatefulSet", "pgquorum-etcd")]
    args = etcd["spec"]["template"]["spec"]["containers"][0]["args"]
    peers = ",".join(
        f"pgquorum-etcd-{i}=http://pgquorum-etcd-{i}.pgquorum-etcd.pgquorum-system.svc:2380" for i in range(3)
    )
    assert f"--initial-cluster={peers}" in args
    assert got[("PodDisruptionBudget", "pgquorum-etcd")]["spec"]["minAvailable"] == 2
    assert got[("Service", "pgquorum-etcd")]["spec"]["publishNotReadyAddresses"] is True


def test_the_example_cluster_needs_an_etcd() -> None:
    proc = helm("template", "r", str(CHART), "--set", "exampleCluster.enabled=true")
    assert proc.returncode != 0 and "exampleCluster.etcdEndpoints" in proc.stderr, proc.stderr
    got = by_name(
        rendered("--set", "exampleCluster.enabled=true", "--set", "exampleCluster.etcdEndpoints={http://e:2379}")
    )
    assert got[("PostgresCluster", "db")]["spec"]["etcd"] == {"endpoints": ["http://e:2379"]}
    hooks = by_name(rendered("--set", "exampleCluster.enabled=true", "--set", "etcd.enabled=true", hooks=True))
    # the pre-delete hook that lets the operator remove it; helm test
    assert {("Job", "pgquorum-uninstall"), ("Pod", "pgquorum-test-write-read")} <= set(hooks)


MANIFESTS = CHART.parents[1] / "manifests"
KUBERNETES_SCHEMAS = "1.34.0"
CUSTOM_KINDS = {"ClusterKopfPeering", "PostgresCluster", "PodMonitor", "PrometheusRule"}


@pytest.mark.parametrize(
    "values",
    [
        [],
        ["--set", "etcd.enabled=true", "--set", "exampleCluster.enabled=true", *MONITORING_APIS],
        ["--set", "etcd.enabled=true", "--set", "etcd.antiAffinity=required", "--set", "etcd.replicas=5"],
    ],
)
def test_every_rendered_object_is_valid_against_the_kubernetes_1_34_schemas(values: list[str]) -> None:
    import kubernetes_validate

    objects = rendered(*values) + rendered(*values, hooks=True)
    checked = 0
    for obj in objects:
        if obj["kind"] in CUSTOM_KINDS:
            continue  # their CRDs' schemas: the apiserver checks those (test_monitoring, test_crd)
        try:
            kubernetes_validate.validate(obj, KUBERNETES_SCHEMAS, strict=True)
        except kubernetes_validate.ValidationError as exc:
            raise AssertionError(f"{obj['kind']} {obj['metadata']['name']}: {exc.message}") from None
        checked += 1
    assert checked >= 5


def test_the_manifests_bundles_are_the_chart_rendered() -> None:
    for name, values in BUNDLES.items():
        assert (MANIFESTS / name).read_text() == render_bundle(values, CHART), (
            f"manifests/{name} differs from the chart: run scripts/render-manifests"
        )


# ----------------------------------------------------------------------------- on the real cluster


def example_pods(k: Kubectl) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = k.json(["-n", OPERATOR_NAMESPACE, "get", "pods", "-l", "pgquorum.io/cluster=db"])[
        "items"
    ]
    return items


def rolled_to(k: Kubectl, image: str, order: list[str]) -> bool:
    """Every member of the example cluster runs ``image`` and it is Healthy; ``order`` collects the
    pods in the order they came up on it."""
    pods = example_pods(k)
    for p in pods:
        if p["spec"]["containers"][0]["image"] == image and p["metadata"]["name"] not in order:
            order.append(p["metadata"]["name"])
    images = {c["image"] for p in pods for c in p["spec"]["containers"]}
    return len(pods) == 3 and images == {image} and status(k, OPERATOR_NAMESPACE).get("phase") == "Healthy"


def test_the_chart_installs_fails_over_upgrades_rolls_back_and_uninstalls(kube: LocalKube, operator: str) -> None:
    k = kube.kubectl
    ns = operator  # the release the operator fixture installed, now with the example cluster
    example = ["--set", "exampleCluster.enabled=true", "--set", "exampleCluster.name=db"]
    rolled = f"{PGQUORUM_IMAGE}-upgraded"
    try:
        started = time.monotonic()
        install_chart(kube, *example)
        healthy(k, ns)
        ready = time.monotonic() - started
        wait_for(
            "QuorumSafe",
            lambda: any(
                c["type"] == "QuorumSafe" and c["status"] == "True" for c in status(k, ns).get("conditions", [])
            ),
        )

        proc = helm("test", RELEASE, "--namespace", ns, "--logs", "--timeout=2m", kube=kube, timeout=150)
        assert proc.returncode == 0 and "wrote and read back" in proc.stdout, proc.stdout + proc.stderr

        old, new, stop = kill_leader_pod(k, ns)
        assert new != old
        healthy(k, ns)

        # helm upgrade to a new image: the operator and every member roll, replicas first
        retag(kube, PGQUORUM_IMAGE, rolled)
        leader = healthy(k, ns)["leader"]
        start_probe(k, ns)
        began = time.monotonic()
        install_chart(kube, *example, image=rolled)
        order: list[str] = []
        wait_for("every member on the upgraded image", lambda: rolled_to(k, rolled, order), timeout=420)
        upgraded = time.monotonic() - began
        healthy(k, ns)
        result = stop_probe(k, ns)
        k.run(["-n", ns, "delete", "pod", "probe", "--wait=false"])
        assert_no_loss(result)
        assert order[-1] == leader, order  # the leader last, after one switchover
        worst = max((g["seconds"] for g in result["gaps"]), default=0.0)

        # helm rollback: back to the first image, the same way
        revision = json.loads(helm("history", RELEASE, "-n", ns, "-o", "json", kube=kube).stdout)[-2]["revision"]
        began = time.monotonic()
        proc = helm("rollback", RELEASE, str(revision), "-n", ns, "--wait", "--timeout=5m", kube=kube, timeout=330)
        assert proc.returncode == 0, proc.stderr
        back: list[str] = []
        wait_for("every member back on the first image", lambda: rolled_to(k, PGQUORUM_IMAGE, back), timeout=420)
        rolled_back = time.monotonic() - began
        healthy(k, ns)

        began = time.monotonic()
        proc = helm("uninstall", RELEASE, "-n", ns, "--wait", "--timeout=5m", kube=kube, timeout=330)
        assert proc.returncode == 0, proc.stderr
        wait_for("no pods left", lambda: not k.json(["-n", ns, "get", "pods"])["items"], timeout=120)
        uninstalled = time.monotonic() - began
        left = {
            (o["kind"], o["metadata"]["name"])
            for o in k.json(["-n", ns, "get", "all,pgq,secrets,configmaps,pdb,serviceaccounts,roles,rolebindings"])[
                "items"
            ]
            if o["metadata"]["name"] not in ("default", "kube-root-ca.crt")
        }
        assert not left, left
        pvcs = {p["metadata"]["name"] for p in k.json(["-n", ns, "get", "pvc"])["items"]}
        assert {f"data-pgquorum-etcd-{i}" for i in range(3)} <= pvcs, pvcs  # etcd's data outlives the release
        print(
            f"MEASURE chart: Healthy {ready:.1f} s after helm install; killed primary: writes stopped {stop:.2f} s; "
            f"helm upgrade rolled 3 in {upgraded:.1f} s (order {order}, longest write stop {worst:.2f} s); "
            f"rollback {rolled_back:.1f} s; uninstall {uninstalled:.1f} s"
        )
    except BaseException:
        explain(k)  # before the cleanup below takes it all away
        raise
    finally:
        # leave the operator installed as the fixture made it, on a fresh etcd: the example
        # cluster's keys and volumes go with this test
        helm("uninstall", RELEASE, "-n", ns, "--wait", "--timeout=3m", kube=kube, timeout=200)
        k.run(["-n", ns, "delete", "pgq", "db", "--ignore-not-found", "--wait=false"], check=False)
        k.run(["-n", ns, "delete", "pod", "probe", "--ignore-not-found"], check=False)
        k.run(["-n", ns, "delete", "pvc", "--all", "--wait=true"], check=False, timeout=120)
        install_chart(kube)


def test_the_bundles_and_the_examples_pass_the_apiservers_dry_run(kube: LocalKube, operator: str, ns: str) -> None:
    k = kube.kubectl
    for name in BUNDLES:
        # server-side, as the bundle's header says; the operator fixture's release already owns these
        out = k.run(
            ["apply", "--server-side", "--force-conflicts", "--dry-run=server", "-f", str(MANIFESTS / name)],
            check=False,
            timeout=60,
        )
        assert out.returncode == 0, f"manifests/{name}: {out.stderr}"
    examples = sorted((MANIFESTS / "examples").glob("*.yaml"))
    assert len(examples) == 3
    for path in examples:
        out = k.run(["-n", ns, "apply", "--dry-run=server", "-f", str(path)], check=False)
        assert out.returncode == 0, f"{path.name}: {out.stderr}"
