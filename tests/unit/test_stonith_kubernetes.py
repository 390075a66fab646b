"""The kubernetes fence against a small real HTTP server on loopback that records requests and keeps pods and nodes.

It checks the REST calls the hook makes (paths, verbs, grace 0, the taint patch guarded by
resourceVersion, the bearer token, TLS with the service-account CA). The same hook against a real
kube-apiserver (RBAC, admission, a StatefulSet recreating the pod) is tested with the operator
issue, where a real apiserver runs.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from stonith_servers import RecordingServer, Reply, Seen, self_signed, tls_context

from pgquorum.agent.clock import SystemClock
from pgquorum.agent.stonith import FenceRequest, Outcome, node_watch, parse_hooks, run_hooks
from pgquorum.agent.stonith.kubernetes import TAINT_KEY
from pgquorum.agent.stonith.model import HookResult

REQ = FenceRequest("main", "pg-0", "pg-1", 5)
TOKEN = "sa-token-eyJhbGciOiJSUzI1NiJ9.payload"
OUT_OF_SERVICE = {"key": TAINT_KEY, "value": "nodeshutdown", "effect": "NoExecute"}


@dataclass
class Apiserver:
    """Just enough of the pods and nodes API: GET/DELETE pod, GET/PATCH node, bearer auth, 403 on demand."""

    pods: dict[str, dict[str, Any]] = field(default_factory=dict)  # "ns/name" -> pod
    nodes: dict[str, dict[str, Any]] = field(default_factory=dict)
    forbid: set[str] = field(default_factory=set)  # verbs answered with 403
    conflicts: int = 0  # PATCHes to refuse with 409 as if the node changed meanwhile
    delay: float = 0.0

    def __call__(self, req: Seen) -> Reply:
        time.sleep(self.delay)
        if req.headers.get("authorization") != f"Bearer {TOKEN}":
            return Reply(401, {"kind": "Status", "message": "Unauthorized", "code": 401})
        if req.method in self.forbid:
            msg = 'pods "pg-0" is forbidden: User "system:serviceaccount:db:pgq" cannot delete resource "pods"'
            return Reply(403, {"kind": "Status", "message": msg, "code": 403})
        path = req.path.split("?")[0].split("/")
        if path[1:4] == ["api", "v1", "namespaces"] and path[5] == "pods":
            key = f"{path[4]}/{path[6]}"
            pod = self.pods.get(key)
            if pod is None:  # what kube-apiserver answers
                return Reply(
                    404,
                    {
                        "kind": "Status",
                        "apiVersion": "v1",
                        "status": "Failure",
                        "message": f'pods "{path[6]}" not found',
                        "reason": "NotFound",
                        "details": {"name": path[6], "kind": "pods"},
                        "code": 404,
                    },
                )
            if req.method == "DELETE":
                del self.pods[key]
            return Reply(200, pod)
        if path[1:4] == ["api", "v1", "nodes"]:
            node = self.nodes.get(path[4])
            if node is None:
                return Reply(404, {"kind": "Status", "reason": "NotFound", "code": 404})
            if req.method == "PATCH":
                assert req.headers["content-type"] == "application/merge-patch+json"
                patch = req.json()
                if self.conflicts or patch["metadata"]["resourceVersion"] != node["metadata"]["resourceVersion"]:
                    self.conflicts = max(0, self.conflicts - 1)
                    node["metadata"]["resourceVersion"] = str(int(node["metadata"]["resourceVersion"]) + 1)
                    return Reply(409, {"kind": "Status", "reason": "Conflict", "code": 409})
                node["spec"]["taints"] = patch["spec"]["taints"]
                node["metadata"]["resourceVersion"] = str(int(node["metadata"]["resourceVersion"]) + 1)
            return Reply(200, node)
        return Reply(404, {"kind": "Status", "code": 404})


@pytest.fixture
def api() -> Apiserver:
    return Apiserver(
        pods={"db/pg-0": {"metadata": {"name": "pg-0"}, "spec": {"nodeName": "node-a"}}},
        nodes={
            "node-a": {
                "metadata": {"name": "node-a", "resourceVersion": "100"},
                "spec": {"taints": [{"key": "dedicated", "value": "pg", "effect": "NoSchedule"}]},
                # its kubelet stopped reporting: the node controller set Ready to Unknown
                "status": {"conditions": [{"type": "Ready", "status": "Unknown"}]},
            }
        },
    )


@pytest.fixture
def server(api: Apiserver) -> Iterator[RecordingServer]:
    srv = RecordingServer(api)
    yield srv
    node_watch.stop_all()  # no deferred taint outlives its test (or talks to a closed server)
    srv.close()


@pytest.fixture
def token(tmp_path: Path) -> Path:
    path = tmp_path / "token"
    path.write_text(TOKEN)
    return path


def fence(server: RecordingServer, token: Path, **extra: Any) -> HookResult:
    raw = {"type": "kubernetes", "api_url": server.url, "token_file": str(token), "namespace": "db", **extra}
    (result,) = run_hooks(parse_hooks([raw]), REQ, SystemClock()).results
    return result


def test_deletes_the_old_leaders_pod_with_grace_zero(server: RecordingServer, api: Apiserver, token: Path) -> None:
    result = fence(server, token)
    assert result.outcome is Outcome.OK, result.message
    assert result.message == "pod db/pg-0 deleted with grace 0"
    (seen,) = server.seen
    assert (seen.method, seen.path) == ("DELETE", "/api/v1/namespaces/db/pods/pg-0?gracePeriodSeconds=0")
    assert seen.json()["gracePeriodSeconds"] == 0 and seen.json()["kind"] == "DeleteOptions"
    assert seen.headers["authorization"] == f"Bearer {TOKEN}"
    assert "db/pg-0" not in api.pods
    assert api.nodes["node-a"]["spec"]["taints"] == [{"key": "dedicated", "value": "pg", "effect": "NoSchedule"}]


def test_a_pod_already_gone_counts_as_fenced(server: RecordingServer, api: Apiserver, token: Path) -> None:
    api.pods.clear()
    result = fence(server, token)
    assert result.outcome is Outcome.OK
    assert result.message == "pod db/pg-0 already gone"


def test_a_404_that_is_not_the_apiserver_speaking_does_not_count(token: Path) -> None:
    # A wrong api_url (some other HTTP server) answers 404 for everything: that is not "pod gone".
    srv = RecordingServer(lambda req: Reply(404, b"<html>Not Found</html>"))
    try:
        result = fence(srv, token)
        tainted = fence(srv, token, taint_node=True)
    finally:
        srv.close()
    assert result.outcome is Outcome.FAILED and "404 without a Kubernetes NotFound status" in result.message
    assert tainted.outcome is Outcome.FAILED and "is api_url right?" in tainted.message


def test_pod_name_template(server: RecordingServer, api: Apiserver, token: Path) -> None:
    api.pods["db/main-pg-0-t5"] = {"spec": {}}
    result = fence(server, token, pod="{cluster}-{old_leader}-t{term}")
    assert result.outcome is Outcome.OK
    assert server.seen[0].path.startswith("/api/v1/namespaces/db/pods/main-pg-0-t5?")


def test_taint_node_adds_out_of_service_keeping_other_taints(
    server: RecordingServer, api: Apiserver, token: Path
) -> None:
    result = fence(server, token, taint_node=True)
    assert result.outcome is Outcome.OK, result.message
    assert "node node-a tainted node.kubernetes.io/out-of-service=nodeshutdown:NoExecute" in result.message
    assert [(s.method, s.path.split("?")[0]) for s in server.seen] == [
        ("GET", "/api/v1/namespaces/db/pods/pg-0"),
        ("DELETE", "/api/v1/namespaces/db/pods/pg-0"),
        ("GET", "/api/v1/nodes/node-a"),
        ("PATCH", "/api/v1/nodes/node-a"),
    ]
    assert server.seen[3].json()["metadata"]["resourceVersion"] == "100"
    assert api.nodes["node-a"]["spec"]["taints"] == [
        {"key": "dedicated", "value": "pg", "effect": "NoSchedule"},
        OUT_OF_SERVICE,
    ]
    # Idempotent: a retry of the whole fence (new pod of the StatefulSet) does not add it twice.
    api.pods["db/pg-0"] = {"spec": {"nodeName": "node-a"}}
    again = fence(server, token, taint_node=True)
    assert "already tainted" in again.message
    assert api.nodes["node-a"]["spec"]["taints"].count(OUT_OF_SERVICE) == 1


def test_a_concurrent_node_change_is_retried(server: RecordingServer, api: Apiserver, token: Path) -> None:
    api.conflicts = 1
    result = fence(server, token, taint_node=True)
    assert result.outcome is Outcome.OK, result.message
    assert [s.method for s in server.seen].count("PATCH") == 2
    assert OUT_OF_SERVICE in api.nodes["node-a"]["spec"]["taints"]


def test_forbidden_fails_with_the_apiservers_reason_and_an_rbac_hint(
    server: RecordingServer, api: Apiserver, token: Path
) -> None:
    api.forbid.add("DELETE")
    result = fence(server, token)
    assert result.outcome is Outcome.FAILED
    assert 'DELETE /api/v1/namespaces/db/pods/pg-0?gracePeriodSeconds=0 -> 403: pods "pg-0" is forbidden' in (
        result.message
    )
    assert "grant the agent's service account" in result.message


def test_a_wrong_token_fails(server: RecordingServer, tmp_path: Path) -> None:
    wrong = tmp_path / "wrong"
    wrong.write_text("nope-nope-nope")
    result = fence(server, wrong)
    assert result.outcome is Outcome.FAILED and "-> 401: Unauthorized; the token was refused" in result.message


def test_a_hung_apiserver_times_out(server: RecordingServer, api: Apiserver, token: Path) -> None:
    api.delay = 3
    started = time.monotonic()
    result = fence(server, token, timeout=0.5)
    assert result.outcome is Outcome.TIMEOUT
    assert time.monotonic() - started < 1.5


def test_in_cluster_endpoint_over_tls_with_the_service_account_ca(
    api: Apiserver, token: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cert, key = self_signed(tmp_path)
    srv = RecordingServer(api, tls=tls_context(cert, key))
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "127.0.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", str(srv.port))
    try:
        raw = {"type": "kubernetes", "namespace": "db", "token_file": str(token), "ca_file": str(cert)}
        (result,) = run_hooks(parse_hooks([raw]), REQ, SystemClock()).results
    finally:
        srv.close()
    assert result.outcome is Outcome.OK, result.message
    assert srv.seen[0].method == "DELETE"


def test_outside_a_pod_without_api_url_fails_clearly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    (result,) = run_hooks(parse_hooks([{"type": "kubernetes", "namespace": "db"}]), REQ, SystemClock()).results
    assert result.outcome is Outcome.FAILED
    assert result.message.startswith("stonith[0]: not in a Kubernetes pod (KUBERNETES_SERVICE_HOST is unset)")


def test_the_request_body_is_valid_delete_options(server: RecordingServer, token: Path) -> None:
    fence(server, token)
    body = json.loads(server.seen[0].body)
    assert body == {
        "kind": "DeleteOptions",
        "apiVersion": "v1",
        "gracePeriodSeconds": 0,
        "propagationPolicy": "Background",
    }


def test_a_ready_node_is_never_tainted(server: RecordingServer, api: Apiserver, token: Path) -> None:
    # a killed pod on a healthy node: the taint would evict every other pod there
    api.nodes["node-a"]["status"]["conditions"] = [{"type": "Ready", "status": "True"}]
    result = fence(server, token, taint_node=True)
    assert result.outcome is Outcome.OK, result.message
    assert "pod db/pg-0 deleted with grace 0" in result.message
    assert "node node-a is Ready: not tainted" in result.message
    assert [s.method for s in server.seen] == ["GET", "DELETE", "GET"]
    assert OUT_OF_SERVICE not in api.nodes["node-a"]["spec"]["taints"]


# ----------------------------------------------------------------------------- the deferred taint


def _ready(node: dict[str, Any], status: str) -> None:
    node["status"]["conditions"] = [{"type": "Ready", "status": status}]


def _watch_for(node: str) -> Any:
    return node_watch._running.get(node)


def test_a_node_still_ready_at_fence_time_is_tainted_once_it_goes_down(
    server: RecordingServer, api: Apiserver, token: Path
) -> None:
    # a node cut off a moment ago: Ready until the node controller's grace period passes
    _ready(api.nodes["node-a"], "True")
    result = fence(server, token, taint_node=True, taint_poll=0.05, taint_wait=30)
    assert result.outcome is Outcome.OK, result.message
    assert "is Ready: not tainted" in result.message
    assert "watching it up to 30 s to taint it once Kubernetes sees it down" in result.message
    watch = _watch_for("node-a")
    assert watch is not None
    api.pods["db/pg-0"] = {"metadata": {"name": "pg-0"}, "spec": {"nodeName": "node-a"}}  # recreated
    again = fence(server, token, taint_node=True, taint_poll=0.05, taint_wait=30)  # a second fence, same node
    assert "already watching node node-a" in again.message
    time.sleep(0.2)
    assert OUT_OF_SERVICE not in api.nodes["node-a"]["spec"]["taints"]  # still Ready: no taint
    _ready(api.nodes["node-a"], "Unknown")
    watch.join(5)
    assert watch.outcome is not None and "tainted node.kubernetes.io/out-of-service" in watch.outcome
    assert OUT_OF_SERVICE in api.nodes["node-a"]["spec"]["taints"]
    assert _watch_for("node-a") is None


def test_the_watch_stops_without_a_taint_when_the_member_is_back_on_a_working_node(
    server: RecordingServer, api: Apiserver, token: Path
) -> None:
    _ready(api.nodes["node-a"], "True")
    fence(server, token, taint_node=True, taint_poll=0.05, taint_wait=30)
    watch = _watch_for("node-a")
    # the operator recreated the member's pod on the same node and it became Ready: the node works
    api.pods["db/pg-0"] = {
        "metadata": {"name": "pg-0"},
        "spec": {"nodeName": "node-a"},
        "status": {"conditions": [{"type": "Ready", "status": "True"}]},
    }
    watch.join(5)
    assert watch.outcome is not None and "Ready again on node node-a" in watch.outcome
    _ready(api.nodes["node-a"], "False")
    time.sleep(0.2)
    assert OUT_OF_SERVICE not in api.nodes["node-a"]["spec"]["taints"]


def test_the_watch_gives_up_after_taint_wait_with_the_node_ready(
    server: RecordingServer, api: Apiserver, token: Path
) -> None:
    _ready(api.nodes["node-a"], "True")
    fence(server, token, taint_node=True, taint_poll=0.05, taint_wait=0.3)
    watch = _watch_for("node-a")
    watch.join(5)
    assert watch.outcome == "node node-a stayed Ready: not tainted"
    assert OUT_OF_SERVICE not in api.nodes["node-a"]["spec"]["taints"]


def test_the_watch_retries_through_api_errors(server: RecordingServer, api: Apiserver, token: Path) -> None:
    _ready(api.nodes["node-a"], "True")
    fence(server, token, taint_node=True, taint_poll=0.05, taint_wait=30)
    watch = _watch_for("node-a")
    api.forbid.add("GET")  # the apiserver refuses for a while (an RBAC change rolling out)
    time.sleep(0.2)
    _ready(api.nodes["node-a"], "Unknown")
    api.forbid.clear()
    watch.join(5)
    assert watch.outcome is not None and "tainted" in watch.outcome
    assert OUT_OF_SERVICE in api.nodes["node-a"]["spec"]["taints"]
