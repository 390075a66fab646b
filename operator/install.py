"""The operator's own objects (what the Helm chart installs): its ServiceAccount, least-privilege
ClusterRole and binding, and a Deployment of two replicas (kopf peering keeps one active).

Why each permission (every verb is one the operator or kopf calls; tests/kube/test_rbac.py checks
the list on the apiserver): kopf watches PostgresClusters and merge-patches their annotations and
status; the operator lists each cluster's objects by label and writes them with server-side apply
(which needs create for a new object), deletes member pods and PVCs (the other objects go with
their owner, by garbage collection), reads and writes the cluster's Secret by name (never lists
secrets); RBAC lets a Role grant only what its creator holds, hence pods get/patch/delete (the
agents' Role). kopf posts core events, watches CRDs (and namespaces, with --namespace patterns) to
find what it serves, and patches its peering object (created by the installer, not by kopf).
With ``taintNode`` a cluster's agents need nodes get/patch: the install ships that as the ClusterRole
``pgquorum-node-fencer``, and the operator binds it per cluster (``bind`` on that one ClusterRole
only, so it cannot bind anything else cluster-wide; the ClusterRoleBinding list is filtered by label).
"""

from __future__ import annotations

from typing import Any

from pgquorum.operator.crd import GROUP, PLURAL
from pgquorum.operator.manifests import NODE_FENCER

NAME = "pgquorum-operator"
PEERING = "pgquorum"


def cluster_role_rules() -> list[dict[str, Any]]:
    applied = ["get", "list", "create", "patch"]
    return [
        {"apiGroups": [GROUP], "resources": [PLURAL], "verbs": ["get", "list", "watch", "patch"]},
        {"apiGroups": [GROUP], "resources": [f"{PLURAL}/status"], "verbs": ["patch"]},
        {"apiGroups": [""], "resources": ["pods", "persistentvolumeclaims"], "verbs": [*applied, "delete"]},
        {"apiGroups": [""], "resources": ["services", "configmaps", "serviceaccounts"], "verbs": applied},
        {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "create", "patch"]},
        {"apiGroups": [""], "resources": ["events"], "verbs": ["create"]},
        {"apiGroups": ["policy"], "resources": ["poddisruptionbudgets"], "verbs": applied},
        {"apiGroups": ["rbac.authorization.k8s.io"], "resources": ["roles", "rolebindings"], "verbs": applied},
        # taintNode: one ClusterRoleBinding per cluster, of the node-fencer ClusterRole alone
        {
            "apiGroups": ["rbac.authorization.k8s.io"],
            "resources": ["clusterrolebindings"],
            "verbs": [*applied, "delete"],
        },
        {
            "apiGroups": ["rbac.authorization.k8s.io"],
            "resources": ["clusterroles"],
            "verbs": ["bind"],
            "resourceNames": [NODE_FENCER],
        },
        {"apiGroups": ["apiextensions.k8s.io"], "resources": ["customresourcedefinitions"], "verbs": ["list", "watch"]},
        {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["list", "watch"]},
        {
            "apiGroups": ["kopf.dev"],
            "resources": ["clusterkopfpeerings", "kopfpeerings"],
            "verbs": ["list", "watch", "patch"],
        },
    ]


def operator_objects(
    namespace: str, image: str, replicas: int = 2, bundled_etcd: str | None = None
) -> list[dict[str, Any]]:
    labels = {"app.kubernetes.io/name": NAME}
    env = [{"name": "PGQUORUM_BUNDLED_ETCD", "value": bundled_etcd}] if bundled_etcd else []
    return [
        # the peering object the replicas meet on (kopf waits for it: without it no replica acts)
        {"apiVersion": "kopf.dev/v1", "kind": "ClusterKopfPeering", "metadata": {"name": PEERING}},
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": NAME, "namespace": namespace}},
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": NAME},
            "rules": cluster_role_rules(),
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": NODE_FENCER},
            # the agents' STONITH hook with taintNode: read the old leader's node, add the taint
            "rules": [{"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "patch"]}],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": NAME},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": NAME},
            "subjects": [{"kind": "ServiceAccount", "name": NAME, "namespace": namespace}],
        },
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": NAME, "namespace": namespace, "labels": labels},
            "spec": {
                "replicas": replicas,
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {
                        "serviceAccountName": NAME,
                        "enableServiceLinks": False,
                        "securityContext": {
                            "runAsNonRoot": True,
                            "runAsUser": 999,
                            "runAsGroup": 999,
                            "seccompProfile": {"type": "RuntimeDefault"},
                        },
                        "containers": [
                            {
                                "name": "operator",
                                "image": image,
                                "imagePullPolicy": "IfNotPresent",
                                "args": ["operator", "run", "--liveness", "http://0.0.0.0:8080/healthz"],
                                "env": env,
                                "ports": [{"name": "health", "containerPort": 8080}],
                                "livenessProbe": {
                                    "httpGet": {"path": "/healthz", "port": 8080},
                                    "periodSeconds": 10,
                                    "failureThreshold": 6,
                                },
                                "securityContext": {
                                    "allowPrivilegeEscalation": False,
                                    "readOnlyRootFilesystem": True,
                                    "capabilities": {"drop": ["ALL"]},
                                },
                                "resources": {
                                    "requests": {"cpu": "50m", "memory": "96Mi"},
                                    "limits": {"memory": "256Mi"},
                                },
                            }
                        ],
                    },
                },
            },
        },
    ]
