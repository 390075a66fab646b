"""Prometheus inside the local cluster: Debian's Prometheus in an image of ours
(``images/prometheus``), scraping every pgquorum agent and the chart's bundled etcd — what the
chart's PodMonitors ask of a prometheus-operator — and evaluating the chart's alert rules
(``files/alerts.yaml``). Debian builds Prometheus without Kubernetes service discovery, so a
sidecar in the same pod (``kube/pod_targets.py``, the pgquorum image) lists the pods every second
and writes ``file_sd`` target files, which Prometheus follows at once.

``prometheus_objects`` is pure (the objects to apply); ``install_prometheus`` applies them and
returns the pod's URL. The host routes to pod addresses (not to ClusterIPs), so tests and the chaos
runner query it directly. It runs on one chosen node (``node``): a fault that cuts another node off
must not hide the cluster from it, as on the local chaos bed, where Prometheus sits in the host's
namespace. Least privilege: its ServiceAccount may only list pods.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import yaml

from pgquorum.cache import BuildError
from pgquorum.chaos.prometheus import get_json, parse_matrix, range_url
from pgquorum.kube.cluster import Kubectl
from pgquorum.kube.images import PGQUORUM_IMAGE, PROMETHEUS_IMAGE, source_root
from pgquorum.kube.pod_targets import JOBS

Obj = dict[str, Any]

NAMESPACE = "pgquorum-monitoring"
NAME = "prometheus"
PORT = 9090
SCRAPE_INTERVAL = "1s"  # the agents loop every second; what a failover does is seen at this grain
LABELS = {"app.kubernetes.io/name": "prometheus", "app.kubernetes.io/part-of": "pgquorum-e2e"}


SD_DIR = "/etc/prometheus/sd"


def prometheus_config(scrape_interval: str = SCRAPE_INTERVAL) -> Obj:
    return {
        "global": {"scrape_interval": scrape_interval, "evaluation_interval": scrape_interval},
        "rule_files": ["/etc/prometheus/rules/*.yaml"],
        "scrape_configs": [
            # the agents of every PostgresCluster in any namespace, and the chart's bundled etcd
            {"job_name": job.name, "file_sd_configs": [{"files": [f"{SD_DIR}/{job.name}.json"]}]}
            for job in JOBS
        ]
        + [{"job_name": "prometheus", "static_configs": [{"targets": [f"localhost:{PORT}"]}]}],
    }


def alert_rules(root: Path | None = None) -> str:
    path = (root or source_root()) / "charts" / "pgquorum" / "files" / "alerts.yaml"
    try:
        return path.read_text()
    except OSError as exc:
        raise BuildError(f"prometheus: cannot read the chart's alert rules {path}: {exc.strerror}") from None


def prometheus_objects(
    rules: str, node: str | None = None, image: str = PROMETHEUS_IMAGE, sidecar_image: str = PGQUORUM_IMAGE
) -> list[Obj]:
    meta = {"namespace": NAMESPACE, "labels": LABELS}
    pod_spec: Obj = {
        "serviceAccountName": NAME,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": 997,
            "runAsGroup": 997,
            "fsGroup": 997,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [
            {
                "name": NAME,
                "image": image,
                "imagePullPolicy": "IfNotPresent",
                "args": [
                    "--config.file=/etc/prometheus/config/prometheus.yml",
                    "--storage.tsdb.path=/prometheus",
                    "--storage.tsdb.retention.time=1d",
                    f"--web.listen-address=:{PORT}",
                ],
                "ports": [{"name": "web", "containerPort": PORT}],
                "readinessProbe": {"httpGet": {"path": "/-/ready", "port": PORT}, "periodSeconds": 2},
                "resources": {"requests": {"cpu": "50m", "memory": "128Mi"}, "limits": {"memory": "512Mi"}},
                "securityContext": {
                    "allowPrivilegeEscalation": False,
                    "capabilities": {"drop": ["ALL"]},
                    "readOnlyRootFilesystem": True,
                },
                "volumeMounts": [
                    {"name": "config", "mountPath": "/etc/prometheus/config", "readOnly": True},
                    {"name": "rules", "mountPath": "/etc/prometheus/rules", "readOnly": True},
                    {"name": "data", "mountPath": "/prometheus"},
                    {"name": "sd", "mountPath": SD_DIR, "readOnly": True},
                ],
            },
            {
                "name": "pod-targets",
                "image": sidecar_image,
                "imagePullPolicy": "IfNotPresent",
                "command": ["/opt/pgquorum/bin/python3", "-m", "pgquorum.kube.pod_targets", "--out", "/sd"],
                "resources": {"requests": {"cpu": "20m", "memory": "48Mi"}, "limits": {"memory": "128Mi"}},
                "securityContext": {
                    "runAsUser": 999,
                    "runAsGroup": 999,
                    "allowPrivilegeEscalation": False,
                    "capabilities": {"drop": ["ALL"]},
                    "readOnlyRootFilesystem": True,
                },
                "volumeMounts": [{"name": "sd", "mountPath": "/sd"}],
            },
        ],
        "volumes": [
            {"name": "config", "configMap": {"name": f"{NAME}-config"}},
            {"name": "rules", "configMap": {"name": f"{NAME}-rules"}},
            {"name": "data", "emptyDir": {}},
            {"name": "sd", "emptyDir": {}},
        ],
    }
    if node is not None:
        pod_spec["nodeSelector"] = {"kubernetes.io/hostname": node}
    return [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE, "labels": LABELS}},
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": NAME, **meta}},
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": "pgquorum-e2e-prometheus", "labels": LABELS},
            "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]}],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": "pgquorum-e2e-prometheus", "labels": LABELS},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": "pgquorum-e2e-prometheus",
            },
            "subjects": [{"kind": "ServiceAccount", "name": NAME, "namespace": NAMESPACE}],
        },
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": f"{NAME}-config", **meta},
            "data": {"prometheus.yml": yaml.safe_dump(prometheus_config(), sort_keys=False)},
        },
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": f"{NAME}-rules", **meta},
            "data": {"alerts.yaml": rules},
        },
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": NAME, **meta},
            "spec": {
                "replicas": 1,
                "strategy": {"type": "Recreate"},
                "selector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}},
                "template": {"metadata": {"labels": LABELS}, "spec": pod_spec},
            },
        },
    ]


def install_prometheus(k: Kubectl, node: str | None = None, timeout: float = 180.0) -> str:
    """Apply ``prometheus_objects`` (a config change restarts the pod), wait until it is ready;
    its URL (``http://<pod IP>:9090``)."""
    objects = prometheus_objects(alert_rules(), node)
    k.run(["apply", "-f", "-"], stdin=json.dumps({"apiVersion": "v1", "kind": "List", "items": objects}))
    k.run(["-n", NAMESPACE, "rollout", "restart", f"deployment/{NAME}"])
    k.run(
        ["-n", NAMESPACE, "rollout", "status", f"deployment/{NAME}", f"--timeout={int(timeout)}s"], timeout=timeout + 10
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pods = k.json(["-n", NAMESPACE, "get", "pods", "-l", "app.kubernetes.io/name=prometheus"])["items"]
        ready = [
            p
            for p in pods
            if p["metadata"].get("deletionTimestamp") is None
            and any(c["type"] == "Ready" and c["status"] == "True" for c in p["status"].get("conditions") or [])
        ]
        if len(ready) == 1 and ready[0]["status"].get("podIP"):
            return f"http://{ready[0]['status']['podIP']}:{PORT}"
        time.sleep(1)
    raise BuildError(
        f"prometheus: no ready pod in {NAMESPACE} after {timeout:g} s (kubectl -n {NAMESPACE} describe pods)"
    )


def uninstall_prometheus(k: Kubectl) -> None:
    k.run(["delete", "namespace", NAMESPACE, "--ignore-not-found", "--wait=false"], check=False)
    k.run(["delete", "clusterrole,clusterrolebinding", "pgquorum-e2e-prometheus", "--ignore-not-found"], check=False)


def query_range(url: str, promql: str, start: float, end: float, step: float) -> list[Obj]:
    """A range query's series: ``[{"node", "labels", "values": [[t, v], ...]}]`` (chaos/prometheus.py)."""
    try:
        return parse_matrix(get_json(range_url(url, promql, start, end, step), timeout=20), {})
    except (OSError, ValueError) as exc:
        raise BuildError(f"prometheus query {promql!r}: {exc}") from None


def api_data(url: str, path: str, timeout: float = 10.0) -> Obj:
    """Another API answer's ``data`` (``/api/v1/targets``, ``/api/v1/rules``)."""
    try:
        body = get_json(url + path, timeout)
    except (OSError, ValueError) as exc:
        raise BuildError(f"prometheus {path}: {exc}") from None
    if not isinstance(body, dict) or body.get("status") != "success":
        raise BuildError(f"prometheus {path}: {body!r}"[:300])
    data: Obj = body["data"]
    return data
