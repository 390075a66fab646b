"""Pod discovery for the in-cluster Prometheus (kube/pod_targets.py) on plain pod objects."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pgquorum.kube.pod_targets import JOBS, targets, write_if_changed

AGENTS, ETCD = JOBS


def pod(
    name: str, labels: dict[str, str], ip: str | None = "10.1.0.5", phase: str = "Running", **kw: Any
) -> dict[str, Any]:
    ports = kw.pop("ports", [{"name": "api", "containerPort": 8008}, {"name": "postgres", "containerPort": 5432}])
    meta: dict[str, Any] = {"name": name, "namespace": "db", "labels": labels}
    if kw.pop("deleting", False):
        meta["deletionTimestamp"] = "2026-12-04T00:00:00Z"
    return {
        "metadata": meta,
        "spec": {"nodeName": "node2", "containers": [{"name": "agent", "ports": ports}]},
        "status": {"phase": phase, **({"podIP": ip} if ip else {})},
    }


def test_an_agent_pod_becomes_a_target_on_its_api_port_with_its_names() -> None:
    got = targets([pod("db-1", {"pgquorum.io/cluster": "db"})], AGENTS)
    assert got == [{"targets": ["10.1.0.5:8008"], "labels": {"namespace": "db", "pod": "db-1", "node": "node2"}}]


def test_pods_not_running_without_an_address_leaving_or_unlabelled_are_left_out() -> None:
    labels = {"pgquorum.io/cluster": "db"}
    pods = [
        pod("pending", labels, ip=None, phase="Pending"),
        pod("no-ip", labels, ip=None),
        pod("leaving", labels, deleting=True),
        pod("client", {"app": "client"}),
        pod("no-api-port", labels, ports=[{"name": "postgres", "containerPort": 5432}]),
        pod("db-0", labels, ip="fd00::5"),
    ]
    assert [g["targets"] for g in targets(pods, AGENTS)] == [["[fd00::5]:8008"]]


def test_etcd_is_found_by_its_name_label_on_its_metrics_port() -> None:
    etcd = pod(
        "etcd-0", {"app.kubernetes.io/name": "pgquorum-etcd"}, ports=[{"name": "metrics", "containerPort": 2381}]
    )
    other = pod(
        "x", {"app.kubernetes.io/name": "pgquorum-etcd-backup"}, ports=[{"name": "metrics", "containerPort": 1}]
    )
    assert [g["labels"]["pod"] for g in targets([other, etcd], ETCD)] == ["etcd-0"]  # the regex matches whole values


def test_the_file_is_rewritten_only_when_the_targets_change(tmp_path: Path) -> None:
    path = tmp_path / "agents.json"
    groups = targets([pod("db-1", {"pgquorum.io/cluster": "db"})], AGENTS)
    assert write_if_changed(path, groups)
    assert not write_if_changed(path, groups)
    assert json.loads(path.read_text()) == groups
    assert write_if_changed(path, [])


def test_an_answer_past_the_body_limit_is_an_error_not_an_empty_list() -> None:
    """A pod list cut at the read limit parsed as ``{}``: no targets at all, silently (found on the
    real cluster). Past the limit is now an error naming it."""
    import pytest
    from stonith_servers import RecordingServer, Reply

    from pgquorum.agent.kubeapi import KubeApi, KubeApiError

    items = [pod(f"db-{i}", {"pgquorum.io/cluster": "db"}) for i in range(400)]
    srv = RecordingServer(lambda req: Reply(200, {"kind": "PodList", "items": items}))
    try:
        api = KubeApi(srv.url, None, None, "test")
        with pytest.raises(KubeApiError, match="answer larger than 65536 bytes"):
            api.call("GET", "/api/v1/pods", timeout=5)
        _, body = api.call("GET", "/api/v1/pods", timeout=5, body_limit=1 << 22)
        assert len(targets(body["items"], AGENTS)) == 400
    finally:
        srv.close()
