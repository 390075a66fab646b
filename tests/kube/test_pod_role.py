"""The agent's pod-role labels on the real apiserver, with a service account holding only the RBAC
the agents get (pods: get, patch): a Service selecting ``role=primary`` follows the label; the new
leader takes the old leader's pod out first; the guard leaves a pod that no longer says primary; a
service account without the permission changes nothing and is told what to grant."""

from __future__ import annotations

import logging
import time
from typing import Any

import pytest
from kube_support import apply, busybox_pod, wait_for

from pgquorum.agent.kubeapi import KubeApi, KubeApiError, pod_path
from pgquorum.agent.podrole import ROLE_LABEL, TERM_ANNOTATION, PodLabeler, PodRole
from pgquorum.kube.cluster import Kubectl, LocalKube

pytestmark = pytest.mark.kube


def service_account(k: Kubectl, ns: str, name: str, verbs: list[str]) -> bytes:
    apply(k, ns, {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name}})
    apply(
        k,
        ns,
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": {"name": name},
            "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": verbs}],
        },
    )
    apply(
        k,
        ns,
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {"name": name},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
            "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": ns}],
        },
    )
    return k.run(["-n", ns, "create", "token", name, "--duration=1h"]).stdout.strip().encode()


def labels(k: Kubectl, ns: str, pod: str) -> dict[str, Any]:
    meta: dict[str, Any] = k.json(["-n", ns, "get", "pod", pod])["metadata"]
    return {**meta.get("labels", {}), **{f"@{a}": v for a, v in meta.get("annotations", {}).items()}}


def member_pod(name: str, role: PodRole) -> dict[str, Any]:
    pod = busybox_pod(name, "sleep 3600")
    pod["metadata"]["labels"] = {"app": "db", ROLE_LABEL: role.value}
    return pod


def endpoints_of(k: Kubectl, ns: str, service: str) -> list[str]:
    slices = k.json(["-n", ns, "get", "endpointslices", "-l", f"kubernetes.io/service-name={service}"])["items"]
    return sorted(
        e["targetRef"]["name"]
        for s in slices
        for e in s.get("endpoints") or []
        if e.get("conditions", {}).get("ready") and e.get("targetRef")
    )


@pytest.fixture
def api(kube: LocalKube, ns: str) -> KubeApi:
    token = service_account(kube.kubectl, ns, "agent", ["get", "patch"])
    return KubeApi(kube.plan.server_url, token, kube.plan.pki_dir / "ca.crt", "pgquorum-test")


def test_the_rw_service_follows_the_label_and_the_old_leader_goes_out_first(
    kube: LocalKube, ns: str, api: KubeApi
) -> None:
    k = kube.kubectl
    for name, role in (("m1", PodRole.PRIMARY), ("m2", PodRole.REPLICA)):
        apply(k, ns, member_pod(name, role))
    apply(
        k,
        ns,
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "db-rw"},
            "spec": {"selector": {"app": "db", ROLE_LABEL: "primary"}, "ports": [{"port": 5432}]},
        },
    )
    k.run(["-n", ns, "wait", "--for=condition=Ready", "pod/m1", "pod/m2", "--timeout=120s"], timeout=130)
    wait_for("-rw on m1", lambda: endpoints_of(k, ns, "db-rw") == ["m1"])

    labeler = PodLabeler(api, ns, "m2")
    labeler.start()
    try:
        started = time.monotonic()
        labeler.demote("m1", 7)  # as the new leader does before it promotes
        labeler.publish(PodRole.PRIMARY, 7)
        wait_for("m2 labelled primary", lambda: labels(k, ns, "m2").get(ROLE_LABEL) == "primary", timeout=10)
        labelled = time.monotonic() - started
        old, new = labels(k, ns, "m1"), labels(k, ns, "m2")
        assert old[ROLE_LABEL] == "none" and new[f"@{TERM_ANNOTATION}"] == "7"
        wait_for("-rw on m2 only", lambda: endpoints_of(k, ns, "db-rw") == ["m2"], timeout=10)
        switched = time.monotonic() - started
        print(f"labels set {labelled:.2f} s, -rw endpoints on the new leader {switched:.2f} s after the request")
        # the old leader never shared -rw with the new one: its guarded change was applied first
        m1_rv = int(k.json(["-n", ns, "get", "pod", "m1"])["metadata"]["resourceVersion"])
        m2_rv = int(k.json(["-n", ns, "get", "pod", "m2"])["metadata"]["resourceVersion"])
        assert m1_rv < m2_rv
    finally:
        labeler.stop()


def test_the_guard_leaves_a_pod_that_no_longer_says_primary(kube: LocalKube, ns: str, api: KubeApi) -> None:
    k = kube.kubectl
    apply(k, ns, member_pod("m1", PodRole.REPLICA))  # the old leader's pod, recreated as a replica
    apply(k, ns, member_pod("m2", PodRole.REPLICA))
    labeler = PodLabeler(api, ns, "m2")
    labeler.start()
    try:
        labeler.demote("m1", 8)
        labeler.demote("gone", 8)  # a pod that does not exist: done, not retried forever
        labeler.publish(PodRole.PRIMARY, 8)
        wait_for("m2 labelled primary", lambda: labels(k, ns, "m2").get(ROLE_LABEL) == "primary", timeout=10)
        assert labels(k, ns, "m1")[ROLE_LABEL] == "replica"
    finally:
        labeler.stop()


def test_without_the_permission_nothing_changes_and_the_error_says_what_to_grant(
    kube: LocalKube, ns: str, caplog: pytest.LogCaptureFixture
) -> None:
    k = kube.kubectl
    token = service_account(k, ns, "readonly", ["get"])
    api = KubeApi(kube.plan.server_url, token, kube.plan.pki_dir / "ca.crt", "pgquorum-test")
    apply(k, ns, member_pod("m1", PodRole.REPLICA))
    with pytest.raises(KubeApiError, match=r"403.*grant the agent's service account"):
        api.call(
            "PATCH",
            pod_path(ns, "m1"),
            {"metadata": {"labels": {ROLE_LABEL: "primary"}}},
            timeout=5,
            content_type="application/merge-patch+json",
        )
    labeler = PodLabeler(api, ns, "m1")
    labeler.start()
    try:
        with caplog.at_level(logging.WARNING, logger="pgquorum.podrole"):
            labeler.publish(PodRole.PRIMARY, 9)
            wait_for("a logged refusal", lambda: any("403" in str(r.__dict__.get("error")) for r in caplog.records))
        assert labels(k, ns, "m1")[ROLE_LABEL] == "replica"
        assert token.decode() not in caplog.text
    finally:
        labeler.stop()
