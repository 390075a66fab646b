"""The operator's I/O for one PostgresCluster: read what exists (apiserver, etcd), perform the steps
the pure reconcile returned, write the status. Thin on purpose: every decision is made elsewhere.

Objects are written with server-side apply (field manager ``pgquorum-operator``), so re-applying is
idempotent and fields other managers own (the role label the agents set on their pods) are kept.
"""

from __future__ import annotations

import base64
import logging
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode

from pgquorum.agent.dcs.base import DCSError
from pgquorum.agent.dcs.etcd import EtcdDCS
from pgquorum.agent.kubeapi import KubeApi, KubeApiError
from pgquorum.ctl.client import ApiClient, Auth, CtlError
from pgquorum.operator.observed import (
    CLUSTER_LABEL,
    NAMESPACE_LABEL,
    SPEC_HASH_ANNOTATION,
    Observed,
    PodView,
    PvcView,
)
from pgquorum.operator.reconcile import CLUSTER_SCOPED, Manifest, Step, StepKind

log = logging.getLogger("pgquorum.operator")

FIELD_MANAGER = "pgquorum-operator"
APPLY_PATCH = "application/apply-patch+yaml"  # JSON is YAML
CALL_TIMEOUT = 10.0
SECRET_KEYS = ("superuser", "replication", "api-token")

# kind -> (API path prefix, plural); namespaced kinds the operator keeps for each cluster
RESOURCES: dict[str, tuple[str, str]] = {
    "Pod": ("/api/v1", "pods"),
    "PersistentVolumeClaim": ("/api/v1", "persistentvolumeclaims"),
    "Service": ("/api/v1", "services"),
    "ConfigMap": ("/api/v1", "configmaps"),
    "Secret": ("/api/v1", "secrets"),
    "ServiceAccount": ("/api/v1", "serviceaccounts"),
    "Role": ("/apis/rbac.authorization.k8s.io/v1", "roles"),
    "RoleBinding": ("/apis/rbac.authorization.k8s.io/v1", "rolebindings"),
    "PodDisruptionBudget": ("/apis/policy/v1", "poddisruptionbudgets"),
    "ClusterRoleBinding": ("/apis/rbac.authorization.k8s.io/v1", "clusterrolebindings"),  # cluster-scoped
}
KEPT = (
    "PersistentVolumeClaim",
    "Service",
    "ConfigMap",
    "ServiceAccount",
    "Role",
    "RoleBinding",
    "PodDisruptionBudget",
    "ClusterRoleBinding",
)


class ExecutorError(Exception):
    """A call failed; the next reconcile retries (kopf's temporary error)."""


@dataclass(frozen=True)
class EtcdTarget:
    endpoints: tuple[str, ...]
    prefix: str
    cluster: str  # the agents' ``cluster`` setting


class ClusterIO:
    def __init__(self, api: KubeApi, namespace: str, name: str) -> None:
        self.api = api
        self.namespace = namespace
        self.name = name

    # -- reading ---------------------------------------------------------------------------

    def _path(self, kind: str, name: str | None = None) -> str:
        prefix, plural = RESOURCES[kind]
        if kind in CLUSTER_SCOPED:
            path = f"{prefix}/{plural}"
        else:
            path = f"{prefix}/namespaces/{quote(self.namespace, safe='')}/{plural}"
        return path if name is None else f"{path}/{quote(name, safe='')}"

    def _call(
        self, method: str, path: str, body: Any = None, content_type: str = "application/json"
    ) -> tuple[int, dict[str, Any]]:
        try:
            return self.api.call(method, path, body, timeout=CALL_TIMEOUT, content_type=content_type)
        except KubeApiError as exc:
            raise ExecutorError(str(exc)) from None

    def _list(self, kind: str) -> list[dict[str, Any]]:
        selector = f"{CLUSTER_LABEL}={self.name}"
        if kind in CLUSTER_SCOPED:  # across namespaces: this cluster's namespace too
            selector += f",{NAMESPACE_LABEL}={self.namespace}"
        query = urlencode({"labelSelector": selector})
        status, body = self._call("GET", f"{self._path(kind)}?{query}")
        if status != 200:
            raise ExecutorError(f"list {kind}: {status} {body.get('message', '')}")
        items: list[dict[str, Any]] = body.get("items") or []
        return items

    def observe(self, etcd: EtcdTarget) -> tuple[Observed, dict[tuple[str, str], str | None]]:
        pods = tuple(PodView.from_object(p) for p in self._list("Pod"))
        pvc_objects = self._list("PersistentVolumeClaim")
        existing: dict[tuple[str, str], str | None] = {}
        for kind in KEPT:
            for obj in pvc_objects if kind == "PersistentVolumeClaim" else self._list(kind):
                meta = obj.get("metadata") or {}
                existing[(kind, str(meta.get("name")))] = (meta.get("annotations") or {}).get(SPEC_HASH_ANNOTATION)
        pvcs = tuple(PvcView.from_object(p) for p in pvc_objects)
        dcs = self._dcs(etcd)
        try:
            state = dcs.get_cluster()
            history = tuple(dcs.get_history())
            return Observed(pods=pods, pvcs=pvcs, etcd=state, history=history), existing
        except DCSError as exc:
            return Observed(pods=pods, pvcs=pvcs, etcd=None, etcd_error=f"etcd: {exc}"), existing
        finally:
            dcs.close()

    @staticmethod
    def _dcs(etcd: EtcdTarget) -> EtcdDCS:
        return EtcdDCS(
            list(etcd.endpoints), prefix=etcd.prefix, cluster=etcd.cluster, member="operator", ttl=10, timeout=2.0
        )

    def read_secret(self, name: str) -> dict[str, str] | None:
        status, body = self._call("GET", self._path("Secret", name))
        if status == 404:
            return None
        return {k: base64.b64decode(v).decode() for k, v in (body.get("data") or {}).items()}

    # -- writing ---------------------------------------------------------------------------

    def apply(self, manifest: Manifest) -> None:
        query = urlencode({"fieldManager": FIELD_MANAGER, "force": "true"})
        status, body = self._call(
            "PATCH", f"{self._path(manifest.kind, manifest.name)}?{query}", dict(manifest.body), APPLY_PATCH
        )
        if status == 409:
            raise ExecutorError(f"apply {manifest.kind} {manifest.name}: conflict: {body.get('message', '')}")

    def ensure_secret(self, name: str, labels: Mapping[str, str], owner: Mapping[str, Any]) -> dict[str, str]:
        """The cluster's generated secrets: created once with random values, never rewritten (a new
        password would lock the members out of each other)."""
        have = self.read_secret(name)
        if have is not None and all(k in have for k in SECRET_KEYS):
            return have
        values = {k: (have or {}).get(k) or secrets.token_urlsafe(32) for k in SECRET_KEYS}
        body = {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {
                "name": name,
                "namespace": self.namespace,
                "labels": dict(labels),
                "ownerReferences": [dict(owner)],
            },
            "type": "Opaque",
            "stringData": values,
        }
        self.apply(Manifest("Secret", name, body, ""))
        log.info(
            "generated secrets",
            extra={"event": "secrets_created", "namespace": self.namespace, "cluster": self.name, "secret": name},
        )
        return values

    def delete(self, kind: str, name: str, grace: int | None = None) -> None:
        path = self._path(kind, name)
        if grace is not None:
            path += f"?gracePeriodSeconds={grace}"
        status, body = self._call("DELETE", path)
        if status >= 300 and status != 404:  # 404: gone already
            raise ExecutorError(f"delete {kind} {name}: {status} {body.get('message', '')}")

    def delete_cluster_objects(self) -> None:
        """What no garbage collection takes: the cluster-scoped objects made for this cluster."""
        for kind in sorted(CLUSTER_SCOPED):
            for obj in self._list(kind):
                self.delete(kind, str(obj["metadata"]["name"]))

    def execute(self, steps: Sequence[Step], etcd: EtcdTarget, api_urls: Mapping[str, str], api_token: str) -> None:
        for step in steps:
            log.info(
                "reconcile step",
                extra={
                    "event": step.kind.value,
                    "namespace": self.namespace,
                    "cluster": self.name,
                    "object": step.name,
                    "reason": step.reason,
                },
            )
            if step.kind is StepKind.APPLY:
                assert step.manifest is not None
                self.apply(step.manifest)
            elif step.kind is StepKind.DELETE_POD:
                self.delete("Pod", step.name)
            elif step.kind is StepKind.DELETE_PVC:
                self.delete("PersistentVolumeClaim", step.name)
            elif step.kind is StepKind.DELETE_CLUSTER_OBJECT:
                self.delete("ClusterRoleBinding", step.name)
            elif step.kind is StepKind.RETIRE_VOTER:
                dcs = self._dcs(etcd)
                try:
                    if not dcs.retire_voter(step.name):
                        log.info(
                            "vote kept: the member's key is back",
                            extra={"event": "retire_skipped", "member": step.name},
                        )
                except DCSError as exc:
                    raise ExecutorError(f"retire {step.name}'s vote: {exc}") from None
                finally:
                    dcs.close()
            elif step.kind is StepKind.SWITCHOVER:
                assert step.target is not None
                urls = [api_urls[n] for n in (step.name, step.target) if n in api_urls]
                client = ApiClient(urls, Auth(token=api_token, source="the cluster's api-token secret"), timeout=5.0)
                try:
                    client.switchover(step.target, None, wait=False)
                except CtlError as exc:
                    raise ExecutorError(f"switchover {step.name} -> {step.target}: {exc}") from None

    def patch_status(self, group: str, version: str, plural: str, status: Mapping[str, Any]) -> None:
        ns, name = quote(self.namespace, safe=""), quote(self.name, safe="")
        path = f"/apis/{group}/{version}/namespaces/{ns}/{plural}/{name}/status"
        self._call("PATCH", path, {"status": dict(status)}, "application/merge-patch+json")
