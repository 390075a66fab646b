"""The ``kubernetes`` hook: delete the old leader's pod with grace 0, optionally taint its node out-of-service.

Plain REST calls (no client library), in-cluster by default: ``https://$KUBERNETES_SERVICE_HOST:
$KUBERNETES_SERVICE_PORT`` with the service account's token, CA and namespace. ``api_url`` (+
``token_file``/``ca_file``) points it elsewhere.

Steps, all within the hook's timeout:

1. ``taint_node`` only: ``GET`` the pod to learn ``spec.nodeName``;
2. ``DELETE /api/v1/namespaces/<ns>/pods/<pod>?gracePeriodSeconds=0`` (body: ``DeleteOptions``
   with ``gracePeriodSeconds: 0``). 200/202 = deleted; **404 = already gone, counts as fenced** —
   only a Kubernetes ``Status`` saying NotFound for this pod, not any 404 (a wrong ``api_url``);
3. ``taint_node`` only, and only if the node is not Ready (its ``Ready`` condition is ``False``
   or ``Unknown``: Kubernetes already sees it down): add
   ``node.kubernetes.io/out-of-service=nodeshutdown:NoExecute`` with a merge patch guarded by the
   node's ``resourceVersion`` (retried on 409 conflict). A Ready node is never tainted: the taint
   evicts every pod on it without a toleration, and a killed pod on a healthy node is fenced
   by the delete alone. A node cut off a moment ago still counts as Ready until the node
   controller's grace period passes, so a fast failover usually finds it Ready: then the node is
   watched for ``taint_wait`` seconds after the fence and tainted once it turns not Ready
   (``node_watch.py``); the fence itself does not wait for that.

What this does and does not guarantee: a grace-0 delete removes the pod *object* at once; a kubelet
that still reaches the apiserver then kills the containers, but one cut off from it does not. The
out-of-service taint tells Kubernetes the node is down (volumes are detached, pods are not waited
for), so only set ``taint_node`` when a dead node is the likely cause. Pair it with the watchdog,
which reboots a stuck old leader on its own.

RBAC: ``pods: get, delete`` in the namespace; with ``taint_node`` also ``nodes: get, patch``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote

from pgquorum.agent.clock import SystemClock
from pgquorum.agent.kubeapi import Endpoint, Failure, KubeApi, KubeApiError, in_cluster, service_account_namespace
from pgquorum.agent.kubeapi import pod_path as kube_pod_path
from pgquorum.agent.stonith import node_watch
from pgquorum.agent.stonith.config import KubernetesHook
from pgquorum.agent.stonith.model import FenceRequest, HookFailure, Outcome, render
from pgquorum.agent.stonith.webhook import read_secret

TAINT_KEY = "node.kubernetes.io/out-of-service"
TAINT_VALUE = "nodeshutdown"
TAINT_EFFECT = "NoExecute"
CONFLICT_RETRIES = 3


class _Api:
    """The shared client, its errors told as a hook's outcomes, every call within the hook's deadline."""

    def __init__(
        self, base: str, token: bytes | None, ca_file: Path | None, deadline: float, token_file: Path | None = None
    ):
        self.api = KubeApi(base, token, ca_file, "pgquorum-stonith", token_file)
        self.deadline = deadline

    def call(
        self, method: str, path: str, body: dict[str, Any] | None = None, content_type: str = "application/json"
    ) -> tuple[int, dict[str, Any]]:
        try:
            return self.api.call(
                method, path, body, timeout=self.deadline - time.monotonic(), content_type=content_type
            )
        except KubeApiError as exc:
            outcome = Outcome.TIMEOUT if exc.failure is Failure.TIMEOUT else Outcome.FAILED
            raise HookFailure(outcome, str(exc)) from None


def _endpoint(hook: KubernetesHook, environ: Mapping[str, str]) -> Endpoint:
    if hook.api_url is not None:
        return Endpoint(hook.api_url, hook.token_file, hook.ca_file)
    try:
        found = in_cluster(environ, hook.where)
    except KubeApiError as exc:
        raise HookFailure(Outcome.FAILED, f"{exc} and token_file") from None
    return Endpoint(found.base, hook.token_file or found.token_file, hook.ca_file or found.ca_file)


def _namespace(hook: KubernetesHook) -> str:
    if hook.namespace is not None:
        return hook.namespace
    try:
        return service_account_namespace(hook.where)
    except KubeApiError as exc:
        raise HookFailure(Outcome.FAILED, str(exc)) from None


def _pod_gone(status: int, obj: dict[str, Any], pod: str, path: str) -> bool:
    """404 from the apiserver about this very pod. Any other 404 (a wrong api_url hitting another
    HTTP server, a proxy) must not pass for "already fenced"."""
    if status != 404:
        return False
    details = obj.get("details") or {}
    if (
        obj.get("kind") == "Status"
        and obj.get("reason") == "NotFound"
        and details.get("kind", "pods") == "pods"
        and details.get("name", pod) == pod
    ):
        return True
    raise HookFailure(
        Outcome.FAILED, f"{path} -> 404 without a Kubernetes NotFound status for pod {pod!r}: is api_url right?"
    )


def _taint(api: _Api, node: str) -> tuple[bool, str]:
    """Taint ``node`` unless it is Ready; (whether it was Ready, what happened)."""
    path = f"/api/v1/nodes/{quote(node, safe='')}"
    for _ in range(CONFLICT_RETRIES):
        status, obj = api.call("GET", path)
        if status == 404:
            return False, f"node {node} not found, not tainted"
        if node_watch.node_ready(obj):
            return True, f"node {node} is Ready: not tainted (the taint is only for a node Kubernetes sees down)"
        taints = list((obj.get("spec") or {}).get("taints") or [])
        if any(t.get("key") == TAINT_KEY and t.get("effect") == TAINT_EFFECT for t in taints):
            return False, f"node {node} already tainted {TAINT_KEY}"
        taints.append({"key": TAINT_KEY, "value": TAINT_VALUE, "effect": TAINT_EFFECT})
        # The list replaces the node's taints: the resourceVersion makes a concurrent change fail with 409.
        patch = {
            "metadata": {"resourceVersion": (obj.get("metadata") or {}).get("resourceVersion")},
            "spec": {"taints": taints},
        }
        status, _ = api.call("PATCH", path, patch, content_type="application/merge-patch+json")
        if status == 404:
            return False, f"node {node} not found, not tainted"
        if status != 409:
            return False, f"node {node} tainted {TAINT_KEY}={TAINT_VALUE}:{TAINT_EFFECT}"
    raise HookFailure(Outcome.FAILED, f"PATCH {path}: conflict {CONFLICT_RETRIES} times in a row; node not tainted")


def _watch(hook: KubernetesHook, request: FenceRequest, endpoint: Endpoint, pod_path: str, node: str) -> str:
    """Start the deferred taint for a node found Ready (node_watch.py); what to add to the fence's message."""

    def api() -> _Api:  # a fresh deadline per look; the token is re-read (the kubelet rotates it)
        return _Api(endpoint.base, None, endpoint.ca_file, time.monotonic() + hook.timeout, endpoint.token_file)

    def observe() -> node_watch.Observed:
        client = api()
        status, obj = client.call("GET", f"/api/v1/nodes/{quote(node, safe='')}")
        found_node = obj if status != 404 else None
        status, pod = client.call("GET", pod_path)
        return node_watch.Observed(found_node, pod if status != 404 else None)

    def taint() -> str:
        return _taint(api(), node)[1]

    watch = node_watch.NodeWatch(
        node,
        hook.taint_wait,
        hook.taint_poll,
        observe,
        taint,
        SystemClock(),
        {"old_leader": request.old_leader, "new_leader": request.new_leader, "term": request.term},
    )
    if not node_watch.start(watch):
        return f"already watching node {node} to taint it once it is down"
    return f"watching it up to {hook.taint_wait:g} s to taint it once Kubernetes sees it down"


def run_kubernetes(hook: KubernetesHook, request: FenceRequest, environ: Mapping[str, str] | None = None) -> str:
    deadline = time.monotonic() + hook.timeout
    endpoint = _endpoint(hook, os.environ if environ is None else environ)
    token_file = endpoint.token_file
    token = read_secret(token_file, f"{hook.where}.token_file") if token_file is not None else None
    namespace = _namespace(hook)
    pod = render(hook.pod, request, f"{hook.where}.pod")
    api = _Api(endpoint.base, token, endpoint.ca_file, deadline)
    pod_path = kube_pod_path(namespace, pod)
    node: str | None = None
    if hook.taint_node:
        status, obj = api.call("GET", pod_path)
        if _pod_gone(status, obj, pod, pod_path):
            return f"pod {namespace}/{pod} already gone (node unknown, not tainted)"
        node = (obj.get("spec") or {}).get("nodeName")
    status, obj = api.call(
        "DELETE",
        pod_path + "?gracePeriodSeconds=0",
        {"kind": "DeleteOptions", "apiVersion": "v1", "gracePeriodSeconds": 0, "propagationPolicy": "Background"},
    )
    if _pod_gone(status, obj, pod, pod_path):
        text = f"pod {namespace}/{pod} already gone"
    elif status == 409:
        raise HookFailure(Outcome.FAILED, f"DELETE {pod_path}: conflict (409)")
    else:
        text = f"pod {namespace}/{pod} deleted with grace 0"
    if hook.taint_node:
        if not node:
            return text + "; pod had no node yet, nothing to taint"
        ready, what = _taint(api, node)
        text += "; " + what
        if ready:
            text += "; " + _watch(hook, request, endpoint, pod_path, node)
    return text
