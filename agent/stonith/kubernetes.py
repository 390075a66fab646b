"""The ``kubernetes`` hook: delete the old leader's pod with grace 0, optionally taint its node out-of-service.

Plain REST calls (no client library), in-cluster by default: ``https://$KUBERNETES_SERVICE_HOST:
$KUBERNETES_SERVICE_PORT`` with the service account's token, CA and namespace. ``api_url`` (+
``token_file``/``ca_file``) points it elsewhere.

Steps, all within the hook's timeout:

1. ``taint_node`` only: ``GET`` the pod to learn ``spec.nodeName``;
2. ``DELETE /api/v1/namespaces/<ns>/pods/<pod>?gracePeriodSeconds=0`` (body: ``DeleteOptions``
   with ``gracePeriodSeconds: 0``). 200/202 = deleted; **404 = already gone, counts as fenced** —
   only a Kubernetes ``Status`` saying NotFound for this pod, not any 404 (a wrong ``api_url``);
3. ``taint_node`` only: add ``node.kubernetes.io/out-of-service=nodeshutdown:NoExecute`` to the
   node with a merge patch guarded by the node's ``resourceVersion`` (retried on 409 conflict).

What this does and does not guarantee: a grace-0 delete removes the pod *object* at once; a kubelet
that still reaches the apiserver then kills the containers, but one cut off from it does not. The
out-of-service taint tells Kubernetes the node is down (volumes are detached, pods are not waited
for), so only set ``taint_node`` when a dead node is the likely cause. Pair it with the watchdog,
which reboots a stuck old leader on its own.

RBAC: ``pods: get, delete`` in the namespace; with ``taint_node`` also ``nodes: get, patch``.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote

from pgquorum.agent.stonith import httpcall
from pgquorum.agent.stonith.config import SA_CA, SA_NAMESPACE, SA_TOKEN, KubernetesHook
from pgquorum.agent.stonith.model import FenceRequest, HookFailure, Outcome, render
from pgquorum.agent.stonith.webhook import read_secret

TAINT_KEY = "node.kubernetes.io/out-of-service"
TAINT_VALUE = "nodeshutdown"
TAINT_EFFECT = "NoExecute"
CONFLICT_RETRIES = 3


class _Api:
    def __init__(self, base: str, token: bytes | None, ca_file: Path | None, deadline: float, where: str):
        self.base = base
        self.token = token
        self.ca_file = ca_file
        self.deadline = deadline
        self.where = where

    def call(
        self, method: str, path: str, body: dict[str, Any] | None = None, content_type: str = "application/json"
    ) -> tuple[int, dict[str, Any]]:
        """(status, JSON object); 2xx, 404 and 409 are returned, anything else raises ``HookFailure``."""
        headers = {"Accept": "application/json", "User-Agent": "pgquorum-stonith"}
        if self.token is not None:
            headers["Authorization"] = "Bearer " + self.token.decode(errors="replace")
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = content_type
        try:
            resp = httpcall.request(
                method,
                self.base + path,
                body=data,
                headers=headers,
                timeout=self.deadline - time.monotonic(),
                ca_file=self.ca_file,
            )
        except httpcall.HttpTimeout as exc:
            raise HookFailure(Outcome.TIMEOUT, f"{method} {path}: {exc}") from None
        except OSError as exc:
            raise HookFailure(Outcome.FAILED, f"{method} {path} at {self.base}: {exc}") from None
        try:
            parsed = json.loads(resp.body) if resp.body else {}
        except ValueError:
            parsed = {}
        if not isinstance(parsed, dict):
            parsed = {}
        if resp.status == 404 or resp.ok or resp.status == 409:
            return resp.status, parsed
        secrets = [self.token] if self.token is not None else []
        message = parsed.get("message")
        if isinstance(message, str) and message:
            resp = httpcall.HttpResponse(resp.status, message.encode())
        detail = resp.snippet(300, secrets)
        hint = {
            401: "; the token was refused (expired or wrong token_file?)",
            403: "; grant the agent's service account this permission (see the STONITH README for the RBAC)",
        }.get(resp.status, "")
        raise HookFailure(Outcome.FAILED, f"{method} {path} -> {resp.status}: {detail}{hint}")


def _endpoint(hook: KubernetesHook, environ: Mapping[str, str]) -> tuple[str, Path | None, Path | None]:
    """Base URL, token file and CA file to use."""
    if hook.api_url is not None:
        return hook.api_url, hook.token_file, hook.ca_file
    host = environ.get("KUBERNETES_SERVICE_HOST")
    port = environ.get("KUBERNETES_SERVICE_PORT") or "443"
    if not host:
        raise HookFailure(
            Outcome.FAILED,
            f"{hook.where}: not in a Kubernetes pod (KUBERNETES_SERVICE_HOST is unset); set api_url and token_file",
        )
    if ":" in host:  # an IPv6 service address
        host = f"[{host}]"
    return f"https://{host}:{port}", hook.token_file or SA_TOKEN, hook.ca_file or SA_CA


def _namespace(hook: KubernetesHook) -> str:
    if hook.namespace is not None:
        return hook.namespace
    try:
        ns = SA_NAMESPACE.read_text().strip()
    except OSError as exc:
        raise HookFailure(
            Outcome.FAILED, f"{hook.where}.namespace: not set and {SA_NAMESPACE} is unreadable ({exc.strerror})"
        ) from None
    if not ns:
        raise HookFailure(Outcome.FAILED, f"{hook.where}.namespace: not set and {SA_NAMESPACE} is empty")
    return ns


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


def _taint(api: _Api, node: str) -> str:
    path = f"/api/v1/nodes/{quote(node, safe='')}"
    for _ in range(CONFLICT_RETRIES):
        status, obj = api.call("GET", path)
        if status == 404:
            return f"node {node} not found, not tainted"
        taints = list((obj.get("spec") or {}).get("taints") or [])
        if any(t.get("key") == TAINT_KEY and t.get("effect") == TAINT_EFFECT for t in taints):
            return f"node {node} already tainted {TAINT_KEY}"
        taints.append({"key": TAINT_KEY, "value": TAINT_VALUE, "effect": TAINT_EFFECT})
        # The list replaces the node's taints: the resourceVersion makes a concurrent change fail with 409.
        patch = {
            "metadata": {"resourceVersion": (obj.get("metadata") or {}).get("resourceVersion")},
            "spec": {"taints": taints},
        }
        status, _ = api.call("PATCH", path, patch, content_type="application/merge-patch+json")
        if status == 404:
            return f"node {node} not found, not tainted"
        if status != 409:
            return f"node {node} tainted {TAINT_KEY}={TAINT_VALUE}:{TAINT_EFFECT}"
    raise HookFailure(Outcome.FAILED, f"PATCH {path}: conflict {CONFLICT_RETRIES} times in a row; node not tainted")


def run_kubernetes(hook: KubernetesHook, request: FenceRequest, environ: Mapping[str, str] | None = None) -> str:
    deadline = time.monotonic() + hook.timeout
    base, token_file, ca_file = _endpoint(hook, os.environ if environ is None else environ)
    token = read_secret(token_file, f"{hook.where}.token_file") if token_file is not None else None
    namespace = _namespace(hook)
    pod = render(hook.pod, request, f"{hook.where}.pod")
    api = _Api(base, token, ca_file if base.startswith("https:") else None, deadline, hook.where)
    pod_path = f"/api/v1/namespaces/{quote(namespace, safe='')}/pods/{quote(pod, safe='')}"
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
        text += "; " + (_taint(api, node) if node else "pod had no node yet, nothing to taint")
    return text
