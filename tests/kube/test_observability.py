"""Prometheus inside the cluster (Debian's, in an image of ours: kube/prometheus.py) watching a
PostgresCluster through a failover: it discovers and scrapes every agent and the chart's etcd,
loads the chart's alert rules without an error, and every panel of the chart's Grafana dashboard
returns series over the run; the panels are drawn to a PNG from the same answers (the path is
printed; ``PGQUORUM_E2E_OUT`` chooses the folder)."""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from kube_support import client_pod, healthy, kill_leader_pod, status, wait_for

from pgquorum.kube import dashboard
from pgquorum.kube.cluster import LocalKube
from pgquorum.kube.prometheus import api_data, install_prometheus, uninstall_prometheus

pytestmark = pytest.mark.kube


@pytest.fixture(scope="module")
def prometheus(kube: LocalKube) -> Iterator[str]:
    url = install_prometheus(kube.kubectl, node="node1")
    yield url
    uninstall_prometheus(kube.kubectl)


def up_targets(url: str, job: str) -> list[str]:
    active = api_data(url, "/api/v1/targets?state=active")["activeTargets"]
    return sorted(t["labels"].get("pod", "?") for t in active if t["labels"].get("job") == job and t["health"] == "up")


def test_prometheus_scrapes_every_member_and_every_dashboard_panel_has_series(
    kube: LocalKube, operator: str, prometheus: str, tmp_path: Path
) -> None:
    k = kube.kubectl
    ns = f"obs-{uuid.uuid4().hex[:6]}"
    k.run(["create", "namespace", ns])
    try:
        body = {
            "apiVersion": "pgquorum.io/v1alpha1",
            "kind": "PostgresCluster",
            "metadata": {"name": "db"},
            # on the chart's bundled etcd, which Prometheus scrapes too
            "spec": {
                "instances": 3,
                "synchronous": {"mode": "quorum", "k": 1},
                "etcd": {"bundled": True},
                "parameters": {"shared_buffers": "32MB"},
            },
        }
        k.run(["-n", ns, "apply", "-f", "-"], stdin=json.dumps(body))
        wait_for("phase Healthy", lambda: status(k, ns).get("phase") == "Healthy", timeout=240)
        client_pod(k, ns, "db", node="node1")
        k.run(["-n", ns, "wait", "--for=condition=Ready", "pod/client", "--timeout=120s"], timeout=130)
        start = time.time()
        members = wait_for(
            "the 3 agents scraped",
            lambda: (
                (got := [p for p in up_targets(prometheus, "pgquorum-agents") if p.startswith("db-")])
                and len(got) == 3
                and got
            ),
            timeout=60,
        )
        etcd = wait_for("the bundled etcd scraped", lambda: up_targets(prometheus, "pgquorum-etcd"), timeout=60)
        assert members == ["db-0", "db-1", "db-2"] and len(etcd) == 3, (members, etcd)
        time.sleep(10)  # a few scrapes of the steady state before the fault
        old, new, gap = kill_leader_pod(k, ns)
        healthy(k, ns, timeout=180)
        time.sleep(10)  # the recreated member scraped again, counters' increase visible
        end = time.time()

        selected = dashboard.panels(dashboard.load(), cluster=".+")
        results = dashboard.read_panels(prometheus, selected, start - 5, end, step=1.0)
        out = Path(os.environ.get("PGQUORUM_E2E_OUT", tmp_path))
        png = out / "dashboard.png"
        dashboard.render_png(results, png, start, title=f"failover {old} -> {new} (writes stopped {gap:.1f} s)")
        print(f"MEASURE dashboard: {len(results)} panels drawn to {png} ({png.stat().st_size} bytes)")
        empty = [r.panel.title for r in results if r.empty]
        assert not empty, f"dashboard panels without a series over a run with a failover: {empty}"

        # the chart's alert rules load and evaluate without an error
        groups = api_data(prometheus, "/api/v1/rules")["groups"]
        rules = [r for g in groups for r in g["rules"]]
        assert rules and all(r["health"] == "ok" for r in rules), [(r["name"], r.get("lastError")) for r in rules]
        firing = [r["name"] for r in rules if r.get("state") == "firing"]
        print(f"MEASURE alert rules: {len(rules)} loaded, firing at the end: {firing or 'none'}")
        assert "PgquorumNoLeader" not in firing and "PgquorumTwoLeaders" not in firing
    finally:
        k.run(["-n", ns, "delete", "pgq", "db", "--wait=false"], check=False)
        k.run(["delete", "namespace", ns, "--wait=false"], check=False)
