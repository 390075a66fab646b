"""The chart's monitoring objects on the real apiserver, against prometheus-operator's own CRDs
(from its Go module, `pgquorum kube build`): the PodMonitors and the PrometheusRule the chart
renders once those CRDs exist are accepted by their schemas and stored as rendered."""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from kube_support import CHART, helm

from pgquorum.kube.build import MONITORING_CRD_FILES, monitoring_crd_paths
from pgquorum.kube.cluster import LocalKube

pytestmark = pytest.mark.kube


def install_monitoring_crds(kube: LocalKube) -> None:
    paths = monitoring_crd_paths()
    missing = [p for p in paths if not p.is_file()]
    if missing:
        pytest.fail(f"{missing[0]} missing: `pgquorum kube build` fetches prometheus-operator's CRDs", pytrace=False)
    k = kube.kubectl
    for path in paths:
        k.run(["apply", "--server-side", "--force-conflicts", "-f", str(path)], timeout=60)
    for name in MONITORING_CRD_FILES:
        k.run(["wait", "--for=condition=Established", f"crd/{name}.monitoring.coreos.com", "--timeout=60s"], timeout=70)


def monitoring_objects(ns: str) -> list[dict[str, Any]]:
    apis = ["--api-versions", "monitoring.coreos.com/v1/PodMonitor"]
    apis += ["--api-versions", "monitoring.coreos.com/v1/PrometheusRule"]
    proc = helm("template", "r", str(CHART), "--namespace", ns, "--set", "etcd.enabled=true", *apis)
    assert proc.returncode == 0, proc.stderr
    docs = [d for d in yaml.safe_load_all(proc.stdout) if d]
    return [d for d in docs if d["apiVersion"].startswith("monitoring.coreos.com/")]


def test_the_monitoring_objects_are_valid_for_prometheus_operators_crds(kube: LocalKube, ns: str) -> None:
    install_monitoring_crds(kube)
    k = kube.kubectl
    objects = monitoring_objects(ns)
    assert sorted((o["kind"], o["metadata"]["name"]) for o in objects) == [
        ("PodMonitor", "pgquorum-agents"),
        ("PodMonitor", "pgquorum-etcd"),
        ("PrometheusRule", "pgquorum"),
    ]
    stream = yaml.safe_dump_all(objects)
    k.run(["-n", ns, "apply", "--dry-run=server", "-f", "-"], stdin=stream)
    k.run(["-n", ns, "apply", "-f", "-"], stdin=stream)
    stored = k.json(["-n", ns, "get", "prometheusrule", "pgquorum"])
    rendered = next(o for o in objects if o["kind"] == "PrometheusRule")
    assert stored["spec"] == rendered["spec"]
    # a wrong object is refused by the CRD's schema at apply time
    bad = {**objects[0], "spec": {**objects[0]["spec"], "podMetricsEndpoints": [{"port": 8008}]}}
    out = k.run(["-n", ns, "apply", "--dry-run=server", "-f", "-"], stdin=yaml.safe_dump(bad), check=False)
    assert out.returncode != 0 and "port" in out.stderr, out.stderr
