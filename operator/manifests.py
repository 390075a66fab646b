"""The objects a PostgresCluster renders to: a pure function of its typed spec and identity. Pods
are managed directly (as CloudNativePG does), so the operator chooses which member goes when — a
StatefulSet would delete the highest ordinal even when it is the primary.

Names (cluster ``main``): pods ``main-0``.., witnesses ``main-w0``.., PVCs ``<pod>-data``; Services
``main`` (headless: every member's DNS name ``<pod>.main``), ``main-rw`` (the pod labelled
``pgquorum.io/role=primary`` by its own agent), ``main-ro`` (replicas), ``main-r`` (any data member);
ConfigMap ``main-config`` (one agent config per member), Secret ``main-secrets``; ServiceAccount,
Role and RoleBinding ``main-agent``; PodDisruptionBudget ``main`` (a majority of voters stays up).
With ``taintNode`` the agents also need nodes (cluster-scoped, so no Role can grant it): a
ClusterRoleBinding ``pgquorum-node-fencer-<namespace>-main`` of the shipped ClusterRole
``pgquorum-node-fencer`` (nodes get, patch). A cluster-scoped object cannot be owned by a
namespaced one, so no garbage collection takes it: the operator deletes it when taintNode goes
off and when the cluster is deleted.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from pgquorum.agent.config import ApiSettings, PostgresSettings, SyncSettings, Timing
from pgquorum.agent.config_render import (
    WITNESS,
    ClusterSettings,
    DataMember,
    MemberSettings,
    Witness,
    render_agent_config,
)
from pgquorum.agent.podrole import KubernetesSettings
from pgquorum.agent.stonith import Hook
from pgquorum.agent.stonith.config import DEFAULT_TIMEOUTS, KubernetesHook, Policy
from pgquorum.operator.crd import GROUP, KIND, VERSION
from pgquorum.operator.observed import (
    CLUSTER_LABEL,
    KIND_LABEL,
    MEMBER_LABEL,
    NAMESPACE_LABEL,
    ROLE_LABEL,
    SPEC_HASH_ANNOTATION,
    MemberKind,
)
from pgquorum.operator.reconcile import Manifest, MemberTarget, Target
from pgquorum.operator.spec import MAX_INSTANCES, MAX_WITNESSES, AntiAffinity, ClusterSpec, PvcRetention

PG_PORT = 5432
API_PORT = 8008
DATA_MOUNT = "/var/lib/postgresql/data"
CONFIG_MOUNT = "/etc/pgquorum/config"
SECRETS_MOUNT = "/etc/pgquorum/secrets"
ETCD_PREFIX = "pgquorum"
UID = 999  # the image's postgres user
PG_BIN = "/usr/lib/postgresql/15/bin"
CONFIG_HASH_ANNOTATION = "pgquorum.io/config-hash"
NODE_FENCER = "pgquorum-node-fencer"  # the ClusterRole the operator's install ships: nodes get, patch


@dataclass(frozen=True)
class Identity:
    """Who the cluster is: namespace, name, uid (for ownerReferences: deleting the resource
    deletes what it made), and the etcd endpoints its agents use."""

    namespace: str
    name: str
    uid: str
    etcd_endpoints: tuple[str, ...]

    @property
    def agents_cluster(self) -> str:
        """The agents' ``cluster`` key in etcd: namespaced, as one etcd may serve many namespaces
        ('_' cannot appear in Kubernetes names, so it cannot collide)."""
        return f"{self.namespace}_{self.name}"

    def owner(self) -> dict[str, Any]:
        return {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": KIND,
            "name": self.name,
            "uid": self.uid,
            "controller": True,
            "blockOwnerDeletion": True,
        }

    def labels(self, **extra: str) -> dict[str, str]:
        return {
            "app.kubernetes.io/name": "pgquorum",
            "app.kubernetes.io/instance": self.name,
            CLUSTER_LABEL: self.name,
            **extra,
        }

    # names
    def member(self, i: int) -> str:
        return f"{self.name}-{i}"

    def witness(self, i: int) -> str:
        return f"{self.name}-w{i}"

    @property
    def headless(self) -> str:
        return self.name

    @property
    def secret(self) -> str:
        return f"{self.name}-secrets"

    @property
    def config(self) -> str:
        return f"{self.name}-config"

    @property
    def agent_account(self) -> str:
        return f"{self.name}-agent"

    @property
    def node_fencer_binding(self) -> str:
        return f"{NODE_FENCER}-{self.namespace}-{self.name}"

    def dns(self, pod: str) -> str:
        return f"{pod}.{self.headless}.{self.namespace}.svc"

    def api_url(self, pod: str) -> str:
        return f"http://{self.dns(pod)}:{API_PORT}"


POD_IP_ENV = "PGQUORUM_POD_IP"  # the member pod's IP (downward API), its advertised host


def spec_hash(body: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _manifest(body: dict[str, Any]) -> Manifest:
    """Stamp the hash of the body (without the stamp) onto it."""
    h = spec_hash(body)
    meta = body["metadata"]
    meta["annotations"] = {**meta.get("annotations", {}), SPEC_HASH_ANNOTATION: h}
    return Manifest(body["kind"], meta["name"], body, h)


def _meta(ident: Identity, name: str, **labels: str) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": ident.namespace,
        "labels": ident.labels(**labels),
        "ownerReferences": [ident.owner()],
    }


# -- agent configuration --------------------------------------------------------------------------


def agent_config(spec: ClusterSpec, ident: Identity, pod: str, witness: bool) -> dict[str, object]:
    """The member's agent configuration, by the one renderer every launcher uses."""
    cluster = ClusterSettings(
        cluster=ident.agents_cluster,
        etcd_endpoints=ident.etcd_endpoints,
        timing=Timing(spec.timing.ttl, spec.timing.loop_wait, spec.timing.retry_timeout, spec.timing.safety_margin),
        api=ApiSettings(auth_token_file=Path(SECRETS_MOUNT, "api-token")),
        quorum_votes=spec.quorum_votes,
        etcd_prefix=ETCD_PREFIX,
    )
    role: DataMember | Witness = WITNESS
    if not witness:
        hooks: tuple[Hook, ...] = ()
        if spec.stonith.delete_pod:
            hooks = (
                KubernetesHook(
                    name="delete-old-primary-pod",
                    where="stonith[0]",
                    policy=Policy.BEST_EFFORT,
                    timeout=DEFAULT_TIMEOUTS["kubernetes"],
                    namespace=ident.namespace,
                    taint_node=spec.stonith.taint_node,
                ),
            )
        role = DataMember(
            postgres=PostgresSettings(
                data_dir=Path(DATA_MOUNT, "pgdata"),
                bin_dir=Path(PG_BIN),
                listen_host="0.0.0.0",
                connect_host=ident.dns(pod),
                port=PG_PORT,
                superuser_password_file=Path(SECRETS_MOUNT, "superuser"),
                replication_password_file=Path(SECRETS_MOUNT, "replication"),
                parameters=dict(spec.parameters),
                maximum_lag_on_failover=spec.maximum_lag_on_failover,
            ),
            synchronous=SyncSettings(
                spec.synchronous.mode.value, spec.synchronous.k, spec.synchronous.durability.value
            ),
            stonith=hooks,
        )
    member = MemberSettings(
        name=pod,
        api_listen=f"0.0.0.0:{API_PORT}",
        role=role,
        api_url=ident.api_url(pod),
        kubernetes=KubernetesSettings(pod=pod, namespace=ident.namespace),
        advertise_host_env=POD_IP_ENV,
    )
    return render_agent_config(cluster, member)


# -- the objects ----------------------------------------------------------------------------------


def _service(ident: Identity, name: str, selector: Mapping[str, str], headless: bool = False) -> Manifest:
    spec: dict[str, Any] = {
        "selector": {CLUSTER_LABEL: ident.name, **selector},
        "ports": [{"name": "postgres", "port": PG_PORT, "targetPort": PG_PORT}],
    }
    if headless:
        spec.update(clusterIP="None", publishNotReadyAddresses=True)  # peers resolve each other while starting
        spec["ports"].append({"name": "api", "port": API_PORT, "targetPort": API_PORT})
    return _manifest({"apiVersion": "v1", "kind": "Service", "metadata": _meta(ident, name), "spec": spec})


def agent_pod_names(ident: Identity) -> tuple[list[str], list[str]]:
    """Every pod name the cluster can ever have: (data members, witnesses), up to the spec's limits.
    The agents' Role names them all, not only today's members, so a scale-down never leaves a member
    on its way out unable to relabel its pod, nor the new leader unable to demote or fence it."""
    return [ident.member(i) for i in range(MAX_INSTANCES)], [ident.witness(i) for i in range(MAX_WITNESSES)]


def shared_objects(
    spec: ClusterSpec,
    ident: Identity,
    members: Sequence[str],
    witnesses: Sequence[str],
    leaving: Sequence[str] = (),
) -> list[Manifest]:
    """``leaving``: pods of this cluster still present but no longer wanted (scale-down); their agent
    config stays in the ConfigMap until they are gone, or the kubelet's refresh of the mounted
    ConfigMap fails for the terminating pod (FailedMount events)."""
    data_names, witness_names = agent_pod_names(ident)
    # the agents' calls: each relabels its own pod, a new leader demotes (patch) and fences (get,
    # delete) the old leader's pod — always a pod of this cluster, never another pod of the namespace
    rules: list[dict[str, Any]] = [
        {
            "apiGroups": [""],
            "resources": ["pods"],
            "resourceNames": data_names + witness_names,
            "verbs": ["get", "patch"],
        }
    ]
    if spec.stonith.delete_pod:  # only a data member ever leads, so only a data member is fenced
        rules.append({"apiGroups": [""], "resources": ["pods"], "resourceNames": data_names, "verbs": ["delete"]})
    configs = {f"{p}.yaml": yaml.safe_dump(agent_config(spec, ident, p, False), sort_keys=False) for p in members}
    configs.update(
        {f"{w}.yaml": yaml.safe_dump(agent_config(spec, ident, w, True), sort_keys=False) for w in witnesses}
    )
    for pod in leaving:
        if pod in data_names or pod in witness_names:
            witness = pod in witness_names
            configs.setdefault(f"{pod}.yaml", yaml.safe_dump(agent_config(spec, ident, pod, witness), sort_keys=False))
    voters = len(members) + len(witnesses)
    out = [
        _manifest({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": _meta(ident, ident.agent_account)}),
        _manifest(
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "Role",
                "metadata": _meta(ident, ident.agent_account),
                "rules": rules,
            }
        ),
        _manifest(
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "RoleBinding",
                "metadata": _meta(ident, ident.agent_account),
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": ident.agent_account},
                "subjects": [{"kind": "ServiceAccount", "name": ident.agent_account, "namespace": ident.namespace}],
            }
        ),
        _manifest({"apiVersion": "v1", "kind": "ConfigMap", "metadata": _meta(ident, ident.config), "data": configs}),
        _service(ident, ident.headless, {}, headless=True),
        _service(ident, f"{ident.name}-rw", {KIND_LABEL: MemberKind.DATA.value, ROLE_LABEL: "primary"}),
        _service(ident, f"{ident.name}-ro", {KIND_LABEL: MemberKind.DATA.value, ROLE_LABEL: "replica"}),
        _service(ident, f"{ident.name}-r", {KIND_LABEL: MemberKind.DATA.value}),
        _manifest(
            {
                "apiVersion": "policy/v1",
                "kind": "PodDisruptionBudget",
                "metadata": _meta(ident, ident.name),
                # voluntary evictions (drains) keep a majority of the voting members
                "spec": {"minAvailable": voters // 2 + 1, "selector": {"matchLabels": {CLUSTER_LABEL: ident.name}}},
            }
        ),
    ]
    if spec.stonith.taint_node:
        out.append(node_fencer_binding(ident))
    return out


def node_fencer_binding(ident: Identity) -> Manifest:
    """The agents' grant to taint the old leader's node (see the module docstring)."""
    return _manifest(
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {
                "name": ident.node_fencer_binding,
                "labels": ident.labels(**{NAMESPACE_LABEL: ident.namespace}),
            },
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": NODE_FENCER},
            "subjects": [{"kind": "ServiceAccount", "name": ident.agent_account, "namespace": ident.namespace}],
        }
    )


def _affinity(spec: ClusterSpec, ident: Identity) -> dict[str, Any]:
    term = {"labelSelector": {"matchLabels": {CLUSTER_LABEL: ident.name}}, "topologyKey": "kubernetes.io/hostname"}
    if spec.anti_affinity is AntiAffinity.REQUIRED:
        return {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [term]}}
    return {
        "podAntiAffinity": {
            "preferredDuringSchedulingIgnoredDuringExecution": [{"weight": 100, "podAffinityTerm": term}]
        }
    }


def member_pod(spec: ClusterSpec, ident: Identity, pod: str, kind: MemberKind) -> Manifest:
    witness = kind is MemberKind.WITNESS
    mounts = [
        {"name": "config", "mountPath": CONFIG_MOUNT, "readOnly": True},
        {"name": "secrets", "mountPath": SECRETS_MOUNT, "readOnly": True},
        {"name": "run", "mountPath": "/var/run/postgresql"},
        {"name": "tmp", "mountPath": "/tmp"},
    ]
    volumes: list[dict[str, Any]] = [
        {
            "name": "config",
            "configMap": {"name": ident.config, "items": [{"key": f"{pod}.yaml", "path": "agent.yaml"}]},
        },
        {"name": "secrets", "secret": {"secretName": ident.secret, "defaultMode": 0o400}},
        {"name": "run", "emptyDir": {}},
        {"name": "tmp", "emptyDir": {}},
    ]
    if not witness:
        mounts.append({"name": "data", "mountPath": DATA_MOUNT})
        volumes.append({"name": "data", "persistentVolumeClaim": {"claimName": f"{pod}-data"}})
    probe_path = "/liveness" if witness else "/readiness"
    container: dict[str, Any] = {
        "name": "agent",
        "image": spec.image,
        "imagePullPolicy": "IfNotPresent",
        "args": ["agent", "--config", f"{CONFIG_MOUNT}/agent.yaml"],
        # the address peers and replicas use (advertise_host_env): the IP, not a cached DNS name
        "env": [{"name": POD_IP_ENV, "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}],
        "ports": [{"name": "api", "containerPort": API_PORT}]
        + ([] if witness else [{"name": "postgres", "containerPort": PG_PORT}]),
        "readinessProbe": {
            "httpGet": {"path": probe_path, "port": API_PORT},
            "periodSeconds": 2,
            "failureThreshold": 1,
        },
        "livenessProbe": {
            "httpGet": {"path": "/liveness", "port": API_PORT},
            "periodSeconds": 5,
            "failureThreshold": 6,
            "initialDelaySeconds": 10,
        },
        "volumeMounts": mounts,
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        },
    }
    if spec.resources:
        container["resources"] = dict(spec.resources)
    body: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            **_meta(
                ident, pod, **{MEMBER_LABEL: pod, KIND_LABEL: kind.value, ROLE_LABEL: "witness" if witness else "none"}
            ),
            # the agent reads its config at start: a changed one is rolled out like a changed pod
            "annotations": {CONFIG_HASH_ANNOTATION: spec_hash(agent_config(spec, ident, pod, witness))},
        },
        "spec": {
            "hostname": pod,
            "subdomain": ident.headless,
            "serviceAccountName": ident.agent_account,
            "enableServiceLinks": False,
            "terminationGracePeriodSeconds": 30,
            "securityContext": {
                "runAsNonRoot": True,
                "runAsUser": UID,
                "runAsGroup": UID,
                "fsGroup": UID,
                "seccompProfile": {"type": "RuntimeDefault"},
            },
            "affinity": _affinity(spec, ident),
            "containers": [container],
            "volumes": volumes,
        },
    }
    return _manifest(body)


def member_pvc(spec: ClusterSpec, ident: Identity, pod: str) -> Manifest:
    pvc_spec: dict[str, Any] = {
        "accessModes": ["ReadWriteOnce"],
        "resources": {"requests": {"storage": spec.storage.size}},
    }
    if spec.storage.storage_class_name:
        pvc_spec["storageClassName"] = spec.storage.storage_class_name
    meta = _meta(ident, f"{pod}-data", **{MEMBER_LABEL: pod})
    if spec.pvc_retention is PvcRetention.RETAIN:
        meta.pop("ownerReferences")  # deleting the cluster keeps the data
    return _manifest({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": meta, "spec": pvc_spec})


def target(spec: ClusterSpec, ident: Identity, present: Sequence[str] = ()) -> Target:
    """What the cluster should consist of; ``present``: the names of its pods that exist now."""
    members = [ident.member(i) for i in range(spec.instances)]
    witnesses = [ident.witness(i) for i in range(spec.witnesses)]
    leaving = [p for p in present if p not in members and p not in witnesses]
    k_needed = spec.synchronous.k + 1 if spec.synchronous.quorum_required else 1
    return Target(
        shared=tuple(shared_objects(spec, ident, members, witnesses, leaving)),
        members=tuple(
            [
                MemberTarget(
                    p, MemberKind.DATA, member_pod(spec, ident, p, MemberKind.DATA), member_pvc(spec, ident, p)
                )
                for p in members
            ]
            + [
                MemberTarget(w, MemberKind.WITNESS, member_pod(spec, ident, w, MemberKind.WITNESS), None)
                for w in witnesses
            ]
        ),
        delete_pvcs=spec.pvc_retention is PvcRetention.DELETE,
        min_data_members=k_needed,
        promotion_needs_quorum=spec.synchronous.quorum_required,
    )
