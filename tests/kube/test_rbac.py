"""RBAC least privilege on the real apiserver, for the operator's ClusterRole (``operator/install.py``)
and the agents' Role (``operator/manifests.py``), with the calls each makes written out below as
plain data, read from the code:

- the operator: ``operator/executor.py`` (list each cluster's objects by label, server-side apply,
  delete pods and PVCs, read its Secret by name) and kopf 1.45 (watch PostgresClusters cluster-wide,
  merge-patch their annotations and ``/status``, post core events, watch CRDs, patch the
  ClusterKopfPeering; namespaces only with ``--namespace`` patterns, KopfPeerings only namespaced);
- the agents: ``agent/podrole.py`` (merge-patch its own pod's role label, JSON-patch the old leader's
  pod out of ``-rw``) and ``agent/stonith/kubernetes.py`` (get and delete the old leader's pod; with
  ``taint_node`` get and patch its node).

Each is asked as a SelfSubjectAccessReview impersonating the service account (what ``kubectl auth
can-i --as`` does, in one batch). The per-cluster objects are the pure functions' output applied to
a test namespace for fake clusters (no operator needed for them). Then behaviour: a pod holding the
agent's mounted token is refused with 403 by the apiserver for what it must not do; the agent's own
labeling and STONITH code works on its cluster's pods and fails on another's; the operator cannot
grant what it does not hold; the rendered pods pass Pod Security ``restricted``; the live operator
and a data member it made run non-root with no capabilities, no new privileges, seccomp and a
read-only root; and the live operator, given this ClusterRole, makes a cluster without one refusal.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kube_support import apply, busybox_pod, etcd_pod, ready_endpoints, wait_for

from pgquorum.agent.kubeapi import KubeApi
from pgquorum.agent.podrole import ROLE_LABEL, PodLabeler, PodRole
from pgquorum.agent.stonith.config import DEFAULT_TIMEOUTS, KubernetesHook, Policy
from pgquorum.agent.stonith.kubernetes import run_kubernetes
from pgquorum.agent.stonith.model import FenceRequest, HookFailure
from pgquorum.kube.cluster import Kubectl, LocalKube
from pgquorum.kube.images import PGQUORUM_IMAGE
from pgquorum.operator import manifests
from pgquorum.operator.install import NAME as OPERATOR
from pgquorum.operator.install import operator_objects
from pgquorum.operator.spec import parse_spec

pytestmark = pytest.mark.kube

NS = "NS"  # the namespace of a PostgresCluster (the test's)
ALL = "*"  # every namespace: a list or watch across the cluster
CLUSTER = ""  # a cluster-scoped resource
ELSEWHERE = "kube-system"  # a namespace with no PostgresCluster of ours

# (verb, resource[.group][/subresource], where[, name])
Call = tuple[str, ...]

OPERATOR_CALLS: list[Call] = [
    # kopf: the watch of every PostgresCluster (a list, then a watch), its annotations (progress,
    # diff base: merge and JSON patches of the object) and the status subresource
    ("list", "postgresclusters.pgquorum.io", ALL),
    ("watch", "postgresclusters.pgquorum.io", ALL),
    ("patch", "postgresclusters.pgquorum.io", NS, "db"),
    ("patch", "postgresclusters.pgquorum.io/status", NS, "db"),
    # kopf: kopf.event() and its own handler events, core v1
    ("create", "events", NS),
    # kopf: CRDs watched to notice resources come and go; namespaces with --namespace patterns
    ("list", "customresourcedefinitions.apiextensions.k8s.io", CLUSTER),
    ("watch", "customresourcedefinitions.apiextensions.k8s.io", CLUSTER),
    ("list", "namespaces", CLUSTER),
    ("watch", "namespaces", CLUSTER),
    # kopf peering: watched, keep-alives merge-patched (cluster-wide; KopfPeering with --namespace)
    ("list", "clusterkopfpeerings.kopf.dev", CLUSTER),
    ("watch", "clusterkopfpeerings.kopf.dev", CLUSTER),
    ("patch", "clusterkopfpeerings.kopf.dev", CLUSTER, "pgquorum"),
    ("list", "kopfpeerings.kopf.dev", NS),
    ("watch", "kopfpeerings.kopf.dev", NS),
    ("patch", "kopfpeerings.kopf.dev", NS, "pgquorum"),
    # executor.observe: each kind it keeps, listed by the cluster's label
    *[
        ("list", r, NS)
        for r in (
            "pods",
            "persistentvolumeclaims",
            "services",
            "configmaps",
            "serviceaccounts",
            "roles.rbac.authorization.k8s.io",
            "rolebindings.rbac.authorization.k8s.io",
            "poddisruptionbudgets.policy",
        )
    ],
    # executor.apply: server-side apply (PATCH; a new object also needs create)
    *[
        (verb, r, NS, name)
        for r, name in (
            ("pods", "db-0"),
            ("persistentvolumeclaims", "db-0-data"),
            ("services", "db-rw"),
            ("configmaps", "db-config"),
            ("secrets", "db-secrets"),
            ("serviceaccounts", "db-agent"),
            ("roles.rbac.authorization.k8s.io", "db-agent"),
            ("rolebindings.rbac.authorization.k8s.io", "db-agent"),
            ("poddisruptionbudgets.policy", "db"),
        )
        for verb in ("create", "patch")
    ],
    # executor.read_secret, executor.delete (members' pods and PVCs only)
    ("get", "secrets", NS, "db-secrets"),
    ("delete", "pods", NS, "db-2"),
    ("delete", "persistentvolumeclaims", NS, "db-2-data"),
    # taintNode: the cluster's node-fencer ClusterRoleBinding, listed by label, applied, deleted
    ("list", "clusterrolebindings.rbac.authorization.k8s.io", CLUSTER),
    ("create", "clusterrolebindings.rbac.authorization.k8s.io", CLUSTER),
    ("patch", "clusterrolebindings.rbac.authorization.k8s.io", CLUSTER, "pgquorum-node-fencer-ns-db"),
    ("delete", "clusterrolebindings.rbac.authorization.k8s.io", CLUSTER, "pgquorum-node-fencer-ns-db"),
    ("bind", "clusterroles.rbac.authorization.k8s.io", CLUSTER, "pgquorum-node-fencer"),
]

OPERATOR_DENIED: list[Call] = [
    # secrets: by name only; never enumerated (a list or watch reads every secret), never deleted
    ("list", "secrets", ALL),
    ("watch", "secrets", ALL),
    ("list", "secrets", NS),
    ("delete", "secrets", NS, "db-secrets"),
    # no way into a pod's processes or onto its node
    ("create", "pods/exec", NS, "db-0"),
    ("get", "pods/exec", NS, "db-0"),  # the websocket upgrade
    ("create", "pods/attach", NS, "db-0"),
    ("create", "pods/portforward", NS, "db-0"),
    ("patch", "pods/ephemeralcontainers", NS, "db-0"),
    ("create", "pods/eviction", NS, "db-0"),
    ("get", "nodes", CLUSTER),
    ("list", "nodes", CLUSTER),
    ("patch", "nodes", CLUSTER, "node1"),
    ("delete", "nodes", CLUSTER, "node1"),
    ("get", "nodes/proxy", CLUSTER, "node1"),
    ("create", "persistentvolumes", CLUSTER),
    ("delete", "persistentvolumes", CLUSTER),
    # no privilege beyond its own: RBAC's escalation check holds (no escalate, impersonate, and bind
    # of the node-fencer ClusterRole alone), no ClusterRoles, no tokens minted for its accounts
    ("escalate", "roles.rbac.authorization.k8s.io", NS),
    ("bind", "roles.rbac.authorization.k8s.io", NS),
    ("escalate", "clusterroles.rbac.authorization.k8s.io", CLUSTER),
    ("bind", "clusterroles.rbac.authorization.k8s.io", CLUSTER, "cluster-admin"),
    ("bind", "clusterroles.rbac.authorization.k8s.io", CLUSTER, "admin"),
    ("bind", "clusterroles.rbac.authorization.k8s.io", CLUSTER),
    ("create", "clusterroles.rbac.authorization.k8s.io", CLUSTER),
    ("patch", "clusterroles.rbac.authorization.k8s.io", CLUSTER, "pgquorum-node-fencer"),
    ("impersonate", "users", CLUSTER),
    ("impersonate", "groups", CLUSTER),
    ("impersonate", "serviceaccounts", NS),
    ("create", "serviceaccounts/token", NS, "db-agent"),
    ("create", "certificatesigningrequests.certificates.k8s.io", CLUSTER),
    # namespaces and CRDs: read only
    ("create", "namespaces", CLUSTER),
    ("patch", "namespaces", CLUSTER, "default"),
    ("delete", "namespaces", CLUSTER, "default"),
    ("create", "customresourcedefinitions.apiextensions.k8s.io", CLUSTER),
    ("patch", "customresourcedefinitions.apiextensions.k8s.io", CLUSTER, "postgresclusters.pgquorum.io"),
    ("update", "customresourcedefinitions.apiextensions.k8s.io", CLUSTER, "postgresclusters.pgquorum.io"),
    ("delete", "customresourcedefinitions.apiextensions.k8s.io", CLUSTER, "postgresclusters.pgquorum.io"),
    ("create", "mutatingwebhookconfigurations.admissionregistration.k8s.io", CLUSTER),
    ("create", "validatingadmissionpolicies.admissionregistration.k8s.io", CLUSTER),
    # the users' resources: never created or deleted; no workloads of other kinds
    ("create", "postgresclusters.pgquorum.io", NS),
    ("delete", "postgresclusters.pgquorum.io", NS, "db"),
    ("create", "deployments.apps", NS),
    ("create", "statefulsets.apps", NS),
    ("create", "daemonsets.apps", NS),
    ("create", "jobs.batch", NS),
    # what garbage collection removes (ownerReferences) is never deleted by the operator itself
    ("delete", "services", NS, "db-rw"),
    ("delete", "configmaps", NS, "db-config"),
    ("delete", "roles.rbac.authorization.k8s.io", NS, "db-agent"),
    ("delete", "rolebindings.rbac.authorization.k8s.io", NS, "db-agent"),
    ("deletecollection", "pods", NS),
    # kopf creates no peering object (the installer does)
    ("create", "clusterkopfpeerings.kopf.dev", CLUSTER),
    ("delete", "clusterkopfpeerings.kopf.dev", CLUSTER, "pgquorum"),
]

# The agents of cluster "db" (deletePod: true, the default); the namespace also holds cluster
# "other", whose pods are other-0, ...
AGENT_CALLS: list[Call] = [
    ("patch", "pods", NS, "db-0"),  # its own role label (each member, data or witness)
    ("patch", "pods", NS, "db-8"),  # the last member the spec allows (instances <= 9)
    ("patch", "pods", NS, "db-w0"),
    ("patch", "pods", NS, "db-w1"),
    ("patch", "pods", NS, "db-1"),  # the new leader demotes the old leader's pod
    ("get", "pods", NS, "db-1"),  # STONITH: the old leader's pod (its node, with taint_node)
    ("delete", "pods", NS, "db-1"),  # STONITH: deleted with grace 0
]

AGENT_DENIED: list[Call] = [
    # another cluster's pods in the same namespace, and any other pod
    ("patch", "pods", NS, "other-0"),
    ("delete", "pods", NS, "other-0"),
    ("get", "pods", NS, "other-0"),
    ("patch", "pods", NS, "db-9"),  # not a name the spec can give
    ("delete", "pods", NS, "db-w0"),  # a witness never leads, so is never fenced
    ("patch", "pods", ELSEWHERE, "db-0"),
    ("list", "pods", NS),
    ("watch", "pods", NS),
    ("list", "pods", ALL),
    ("create", "pods", NS),
    ("delete", "pods", NS),  # a collection delete
    ("deletecollection", "pods", NS),
    ("create", "pods/exec", NS, "db-1"),
    ("create", "pods/attach", NS, "db-1"),
    ("patch", "pods/ephemeralcontainers", NS, "db-1"),
    ("patch", "pods/status", NS, "db-1"),
    ("create", "pods/eviction", NS, "db-1"),
    # what the operator writes for it: the agent reads its mounted copies
    ("get", "secrets", NS, "db-secrets"),
    ("list", "secrets", NS),
    ("get", "configmaps", NS, "db-config"),
    ("patch", "configmaps", NS, "db-config"),
    ("patch", "postgresclusters.pgquorum.io", NS, "db"),
    ("patch", "postgresclusters.pgquorum.io/status", NS, "db"),
    ("create", "roles.rbac.authorization.k8s.io", NS),
    ("create", "rolebindings.rbac.authorization.k8s.io", NS),
    ("patch", "roles.rbac.authorization.k8s.io", NS, "db-agent"),
    ("create", "serviceaccounts/token", NS, "db-agent"),
    ("create", "events", NS),  # the agent posts no events
    # nodes: only with taintNode (see test_taint_node_lets_the_agents_taint_nodes)
    ("get", "nodes", CLUSTER, "node1"),
    ("patch", "nodes", CLUSTER, "node1"),
    ("list", "nodes", CLUSTER),
]

# deletePod: false -> the agents fence nobody
NO_DELETE_CALLS: list[Call] = [("patch", "pods", NS, "keep-0"), ("patch", "pods", NS, "keep-1")]
NO_DELETE_DENIED: list[Call] = [("delete", "pods", NS, "keep-1"), ("delete", "pods", NS, "keep-0")]

# taintNode: true -> the STONITH hook also gets and patches the old leader's node
TAINT_CALLS: list[Call] = [
    ("get", "pods", NS, "taint-1"),
    ("delete", "pods", NS, "taint-1"),
    ("get", "nodes", CLUSTER, "node1"),
    ("patch", "nodes", CLUSTER, "node1"),
]

FAKE_CLUSTERS = {
    "db": {},
    "other": {},
    "keep": {"stonith": {"kubernetes": {"deletePod": False}}},
    "taint": {"stonith": {"kubernetes": {"deletePod": True, "taintNode": True}}},
}


# -- helpers ----------------------------------------------------------------------------------


def account(ns: str, name: str) -> str:
    return f"system:serviceaccount:{ns}:{name}"


def attributes(call: Call, ns: str) -> dict[str, str]:
    verb, what, where, *name = call
    resource, _, sub = what.partition("/")
    plural, _, group = resource.partition(".")
    attrs = {"verb": verb, "group": group, "resource": plural, "namespace": ns if where == NS else ""}
    if where not in (NS, ALL, CLUSTER):
        attrs["namespace"] = where
    if sub:
        attrs["subresource"] = sub
    if name:
        attrs["name"] = name[0]
    return attrs


def review(k: Kubectl, user: str, calls: list[Call], ns: str) -> dict[Call, tuple[bool, str]]:
    """Each call as a SelfSubjectAccessReview of ``user`` (impersonated): allowed, and why."""
    items = [
        {
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SelfSubjectAccessReview",
            "spec": {"resourceAttributes": attributes(c, ns)},
        }
        for c in calls
    ]
    out = k.run(
        ["create", f"--as={user}", "-o", "json", "-f", "-"],
        stdin=json.dumps({"apiVersion": "v1", "kind": "List", "items": items}),
    ).stdout
    decoder, i, answers = json.JSONDecoder(), 0, []
    while i < len(out):
        if out[i].isspace():
            i += 1
            continue
        obj, i = decoder.raw_decode(out, i)
        answers.append(obj)
    assert len(answers) == len(calls)
    result = {}
    for call, answer in zip(calls, answers, strict=True):
        asked = {a: v for a, v in attributes(call, ns).items() if v}  # the server leaves out empty fields
        assert answer["spec"]["resourceAttributes"] == asked  # in order, one for one
        status = answer["status"]
        result[call] = (bool(status.get("allowed")), str(status.get("reason") or status.get("evaluationError") or ""))
    return result


def assert_allowed(k: Kubectl, user: str, calls: list[Call], ns: str) -> None:
    got = review(k, user, calls, ns)
    refused = [c for c, (ok, _) in got.items() if not ok]
    assert not refused, f"{user} is refused calls it makes: {refused}"


def assert_denied(k: Kubectl, user: str, calls: list[Call], ns: str) -> None:
    got = review(k, user, calls, ns)
    allowed = {c: why for c, (ok, why) in got.items() if ok}
    assert not allowed, f"{user} may make calls it must not: {allowed}"


def rendered(ns: str, name: str, spec: dict[str, Any]) -> list[dict[str, Any]]:
    """The objects the operator renders for a cluster, without ownerReferences (there is no
    PostgresCluster behind these: garbage collection would take them)."""
    cs = parse_spec({"etcd": {"endpoints": ["http://etcd:2379"]}, **spec}, name)
    ident = manifests.Identity(ns, name, str(uuid.uuid4()), ("http://etcd:2379",))
    target = manifests.target(cs, ident)
    out = []
    for m in [*target.shared, *(t.pod for t in target.members)]:
        body = json.loads(json.dumps(m.body))
        body["metadata"].pop("ownerReferences", None)
        out.append(body)
    return out


AGENT_RBAC_KINDS = ("ServiceAccount", "Role", "RoleBinding", "ClusterRoleBinding")


def agent_rbac(ns: str, name: str, spec: dict[str, Any]) -> list[dict[str, Any]]:
    return [o for o in rendered(ns, name, spec) if o["kind"] in AGENT_RBAC_KINDS]


# -- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rbac_ns(kube: LocalKube) -> Iterator[str]:
    """A namespace with the agents' ServiceAccount, Role and RoleBinding of each fake cluster, as
    the pure functions render them."""
    k = kube.kubectl
    ns = f"rbac-{uuid.uuid4().hex[:6]}"
    k.run(["create", "namespace", ns])
    cluster_scoped = []
    for name, spec in FAKE_CLUSTERS.items():
        for obj in agent_rbac(ns, name, spec):
            apply(k, ns, obj)
            if "namespace" not in obj["metadata"]:
                cluster_scoped.append(f"{obj['kind'].lower()}/{obj['metadata']['name']}")
    yield ns
    k.run(["delete", "namespace", ns, "--wait=false"], check=False)
    if cluster_scoped:  # what the operator's delete handler does for a real cluster
        k.run(["delete", "--ignore-not-found", *cluster_scoped], check=False)


@pytest.fixture(scope="module")
def operator_user(operator: str) -> str:
    return account(operator, OPERATOR)


# -- the operator -----------------------------------------------------------------------------


def test_the_operator_may_make_every_call_it_makes(kube: LocalKube, rbac_ns: str, operator_user: str) -> None:
    assert_allowed(kube.kubectl, operator_user, OPERATOR_CALLS, rbac_ns)


def test_the_operator_may_not(kube: LocalKube, rbac_ns: str, operator_user: str) -> None:
    assert_denied(kube.kubectl, operator_user, OPERATOR_DENIED, rbac_ns)


def test_the_operator_cannot_grant_what_it_does_not_hold(kube: LocalKube, rbac_ns: str, operator_user: str) -> None:
    """RBAC's escalation check, for real: the operator creates Roles and RoleBindings (the agents'),
    but only with permissions it holds itself."""
    k = kube.kubectl

    def create(obj: dict[str, Any]) -> tuple[int, str]:
        out = k.run(["-n", rbac_ns, "create", f"--as={operator_user}", "-f", "-"], stdin=json.dumps(obj), check=False)
        return out.returncode, out.stderr

    def role(name: str, rules: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": {"name": name},
            "rules": rules,
        }

    def binding(name: str, kind: str, role_name: str) -> dict[str, Any]:
        return {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {"name": name},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": kind, "name": role_name},
            "subjects": [{"kind": "ServiceAccount", "name": "nobody", "namespace": rbac_ns}],
        }

    # what the agents get: held, so granted
    held = role("held", [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "patch", "delete"]}])
    assert create(held) == (0, "")
    assert create(binding("held", "Role", "held")) == (0, "")
    # more than it holds: refused
    for name, rules in (
        ("secrets", [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["list"]}]),
        ("exec", [{"apiGroups": [""], "resources": ["pods/exec"], "verbs": ["create"]}]),
        ("wild", [{"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}]),
    ):
        code, err = create(role(name, rules))
        assert code != 0 and "not currently held" in err, (name, err)
    for cluster_role in ("admin", "cluster-admin", "edit"):
        code, err = create(binding(f"to-{cluster_role}", "ClusterRole", cluster_role))
        assert code != 0 and "not currently held" in err, (cluster_role, err)
    left = k.json(["-n", rbac_ns, "get", "roles,rolebindings"])["items"]
    made = sorted(o["metadata"]["name"] for o in left if o["metadata"]["name"] in ("held", "secrets", "exec", "wild"))
    assert made == ["held", "held"]  # the Role and the RoleBinding granted, nothing else


# -- the agents ------------------------------------------------------------------------------


def test_the_agents_may_make_every_call_they_make(kube: LocalKube, rbac_ns: str) -> None:
    assert_allowed(kube.kubectl, account(rbac_ns, "db-agent"), AGENT_CALLS, rbac_ns)


def test_the_agents_may_not(kube: LocalKube, rbac_ns: str) -> None:
    assert_denied(kube.kubectl, account(rbac_ns, "db-agent"), AGENT_DENIED, rbac_ns)


def test_without_delete_pod_the_agents_fence_nobody(kube: LocalKube, rbac_ns: str) -> None:
    user = account(rbac_ns, "keep-agent")
    assert_allowed(kube.kubectl, user, NO_DELETE_CALLS, rbac_ns)
    assert_denied(kube.kubectl, user, NO_DELETE_DENIED, rbac_ns)


def test_taint_node_lets_the_agents_taint_nodes(kube: LocalKube, rbac_ns: str) -> None:
    assert_allowed(kube.kubectl, account(rbac_ns, "taint-agent"), TAINT_CALLS, rbac_ns)


def test_without_taint_node_the_agents_cannot_touch_nodes(kube: LocalKube, rbac_ns: str) -> None:
    for name in ("db", "keep"):
        user = account(rbac_ns, f"{name}-agent")
        assert_denied(kube.kubectl, user, [c for c in AGENT_DENIED if c[1] == "nodes"], rbac_ns)


# A pod with the agent's service account token calls the apiserver the way the agent does (in
# cluster, https://kubernetes.default.svc, the mounted token and CA); {ns} and {node} are filled in.
LABEL_REPLICA = {"metadata": {"labels": {ROLE_LABEL: "replica"}}}
IN_POD_CALLS: dict[str, tuple[str, str, Any]] = {
    "relabel its own pod": ("PATCH", "/api/v1/namespaces/{ns}/pods/db-0", LABEL_REPLICA),
    "list the namespace's secrets": ("GET", "/api/v1/namespaces/{ns}/secrets", None),
    "read the cluster's secret": ("GET", "/api/v1/namespaces/{ns}/secrets/db-secrets", None),
    "relabel another cluster's pod": ("PATCH", "/api/v1/namespaces/{ns}/pods/other-0", LABEL_REPLICA),
    "delete another cluster's pod": ("DELETE", "/api/v1/namespaces/{ns}/pods/other-0", None),
    "list the namespace's pods": ("GET", "/api/v1/namespaces/{ns}/pods", None),
    "list every pod": ("GET", "/api/v1/pods", None),
    "patch its node": ("PATCH", "/api/v1/nodes/{node}", {"metadata": {"labels": {"pwned": "yes"}}}),
    "post an event": ("POST", "/api/v1/namespaces/{ns}/events", {"metadata": {"generateName": "x"}}),
    "exec into another pod": ("POST", "/api/v1/namespaces/{ns}/pods/other-0/exec?command=id&stdout=true", None),
}  # fmt: skip
IN_POD_EXPECTED = {name: 200 if name == "relabel its own pod" else 403 for name in IN_POD_CALLS}

IN_POD_SCRIPT = """
import json, os, ssl, urllib.error, urllib.request
sa = "/var/run/secrets/kubernetes.io/serviceaccount"
token = open(sa + "/token").read().strip()
ctx = ssl.create_default_context(cafile=sa + "/ca.crt")
fill = {"ns": open(sa + "/namespace").read().strip(), "node": os.environ["NODE"]}
def call(method, path, body):
    data = None if body is None else json.dumps(body).encode()
    headers = {"Authorization": "Bearer " + token, "Accept": "application/json"}
    if body is not None:
        headers["Content-Type"] = "application/json" if method == "POST" else "application/merge-patch+json"
    req = urllib.request.Request("https://kubernetes.default.svc" + path.format(**fill), data, headers, method=method)
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=10) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code
calls = json.loads(os.environ["CALLS"])
print(json.dumps({name: call(*c) for name, c in calls.items()}))
"""


def test_a_pod_with_the_agents_token_is_refused_what_the_agent_may_not_do(
    kube: LocalKube, rbac_ns: str, operator: str
) -> None:
    k = kube.kubectl  # (the operator fixture loads this checkout's image into the nodes)
    other = busybox_pod("other-0", "sleep 3600")
    other["metadata"]["labels"] = {"pgquorum.io/cluster": "other", ROLE_LABEL: "primary"}
    apply(k, rbac_ns, other)
    k.run(["-n", rbac_ns, "wait", "--for=condition=Ready", "pod/other-0", "--timeout=120s"], timeout=130)
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "db-0", "labels": {"pgquorum.io/cluster": "db", ROLE_LABEL: "none"}},
        "spec": {
            "serviceAccountName": "db-agent",
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 1,
            "securityContext": {"runAsNonRoot": True, "runAsUser": 999, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [
                {
                    "name": "agent",
                    "image": PGQUORUM_IMAGE,
                    "imagePullPolicy": "IfNotPresent",
                    "command": ["python3", "-c", IN_POD_SCRIPT],
                    "env": [
                        {"name": "CALLS", "value": json.dumps(IN_POD_CALLS)},
                        {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
                    ],
                    "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
                }
            ],
        },
    }
    apply(k, rbac_ns, pod)

    def finished() -> str | None:
        phase = k.json(["-n", rbac_ns, "get", "pod", "db-0"])["status"].get("phase")
        return phase if phase in ("Succeeded", "Failed") else None

    phase = wait_for("the agent-token pod to finish", finished, timeout=120)
    logs = k.run(["-n", rbac_ns, "logs", "db-0"]).stdout
    assert phase == "Succeeded", logs
    got = json.loads(logs.strip().splitlines()[-1])
    assert got == IN_POD_EXPECTED
    # and nothing happened to what it was refused
    left = k.json(["-n", rbac_ns, "get", "pod", "other-0"])["metadata"]
    assert left["labels"][ROLE_LABEL] == "primary" and left.get("deletionTimestamp") is None
    assert k.json(["-n", rbac_ns, "get", "pod", "db-0"])["metadata"]["labels"][ROLE_LABEL] == "replica"


def test_the_agents_own_code_demotes_and_fences_its_clusters_pods_only(
    kube: LocalKube, rbac_ns: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """PodLabeler and the kubernetes STONITH hook, as the agent runs them, with the agent's token."""
    k = kube.kubectl
    for name, cluster in (("db-5", "db"), ("db-6", "db"), ("other-1", "other")):
        pod = busybox_pod(name, "sleep 3600")
        pod["metadata"]["labels"] = {"pgquorum.io/cluster": cluster, ROLE_LABEL: "primary"}
        apply(k, rbac_ns, pod)
    token = k.run(["-n", rbac_ns, "create", "token", "db-agent", "--duration=1h"]).stdout.strip()
    token_file = tmp_path / "token"
    token_file.write_text(token)
    ca = kube.plan.pki_dir / "ca.crt"
    api = KubeApi(kube.plan.server_url, token.encode(), ca, "pgquorum-test")

    def role(pod: str) -> str | None:
        labels: dict[str, str] = k.json(["-n", rbac_ns, "get", "pod", pod])["metadata"].get("labels", {})
        return labels.get(ROLE_LABEL)

    caplog.set_level(logging.INFO, logger="pgquorum.podrole")
    labeler = PodLabeler(api, rbac_ns, "db-5")
    labeler.start()
    try:
        labeler.demote("other-1", 2)  # refused: retried in the background, never applied
        labeler.demote("db-6", 2)
        labeler.publish(PodRole.PRIMARY, 2)
        wait_for("db-6 demoted", lambda: role("db-6") == "none", timeout=20)
        wait_for("db-5 labelled primary", lambda: role("db-5") == "primary", timeout=20)
        time.sleep(1)
    finally:
        labeler.stop()
    assert role("other-1") == "primary"
    refusals = [r for r in caplog.records if getattr(r, "event", None) == "pod_role_failed"]
    assert refusals and all(r.pod == "other-1" and "403" in r.error for r in refusals)  # type: ignore[attr-defined]

    def hook(taint: bool = False) -> KubernetesHook:
        return KubernetesHook(
            name="delete-old-primary-pod",
            where="stonith[0]",
            policy=Policy.BEST_EFFORT,
            timeout=DEFAULT_TIMEOUTS["kubernetes"],
            namespace=rbac_ns,
            taint_node=taint,
            api_url=kube.plan.server_url,
            token_file=token_file,
            ca_file=ca,
        )

    def fence(old: str) -> str:
        return run_kubernetes(hook(), FenceRequest(cluster=f"{rbac_ns}_db", old_leader=old, new_leader="db-5", term=3))

    assert fence("db-6") == f"pod {rbac_ns}/db-6 deleted with grace 0"
    with pytest.raises(HookFailure, match=r"403"):
        fence("other-1")
    assert k.json(["-n", rbac_ns, "get", "pod", "other-1"])["metadata"].get("deletionTimestamp") is None
    wait_for("db-6 gone", lambda: k.run(["-n", rbac_ns, "get", "pod", "db-6"], check=False).returncode != 0)


# -- the pods' security context ---------------------------------------------------------------


def test_the_rendered_pods_pass_pod_security_restricted(kube: LocalKube) -> None:
    k = kube.kubectl
    ns = f"psa-{uuid.uuid4().hex[:6]}"
    k.run(["create", "namespace", ns])
    try:
        k.run(["label", "namespace", ns, "pod-security.kubernetes.io/enforce=restricted"])
        objs = rendered(ns, "db", {"instances": 2, "witnesses": 1})
        for sa in ("db-agent", OPERATOR):
            apply(k, ns, {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": sa}})
        (deployment,) = [o for o in operator_objects(ns, PGQUORUM_IMAGE) if o["kind"] == "Deployment"]
        template = deployment["spec"]["template"]
        pods = [o for o in objs if o["kind"] == "Pod"]
        pods.append(
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": "operator", **template["metadata"]},
                "spec": template["spec"],
            }
        )
        assert sorted(p["metadata"]["name"] for p in pods) == ["db-0", "db-1", "db-w0", "operator"]
        for pod in pods:
            out = k.run(["-n", ns, "create", "--dry-run=server", "-f", "-"], stdin=json.dumps(pod), check=False)
            assert out.returncode == 0, (pod["metadata"]["name"], out.stderr)
        # the namespace does enforce: a pod without our securityContext is refused
        plain = busybox_pod("plain", "true")
        out = k.run(["-n", ns, "create", "--dry-run=server", "-f", "-"], stdin=json.dumps(plain), check=False)
        assert out.returncode != 0 and "violates PodSecurity" in out.stderr, out.stderr
    finally:
        k.run(["delete", "namespace", ns, "--wait=false"], check=False)


PROCESS_CHECK = "id -u; id -g; touch /probe 2>&1; grep -E '^(CapEff|CapBnd|NoNewPrivs|Seccomp):' /proc/1/status"


def assert_confined(k: Kubectl, ns: str, pod: dict[str, Any], container: str) -> None:
    """The pod's spec says it, and its PID 1 is so: uid/gid 999, no capabilities, no new privileges,
    a seccomp filter, a root filesystem it cannot write."""
    name = pod["metadata"]["name"]
    spec = pod["spec"]
    (c,) = [c for c in spec["containers"] if c["name"] == container]
    sc, psc = c.get("securityContext") or {}, spec.get("securityContext") or {}
    assert psc.get("runAsNonRoot") is True and psc.get("runAsUser") == 999, (name, psc)
    assert sc.get("allowPrivilegeEscalation") is False and sc.get("readOnlyRootFilesystem") is True, (name, sc)
    assert sc.get("capabilities", {}).get("drop") == ["ALL"], (name, sc)
    out = k.run(["-n", ns, "exec", name, "-c", container, "--", "sh", "-c", PROCESS_CHECK], check=False).stdout
    lines = out.strip().splitlines()
    assert lines[:2] == ["999", "999"], (name, out)
    assert "Read-only file system" in lines[2], (name, out)
    status = dict(line.split(":\t", 1) for line in lines[3:])
    assert status == {"CapEff": "0000000000000000", "CapBnd": "0000000000000000", "NoNewPrivs": "1", "Seccomp": "2"}, (
        name,
        out,
    )


def test_the_live_operator_runs_confined(kube: LocalKube, operator: str) -> None:
    k = kube.kubectl
    pods = k.json(["-n", operator, "get", "pods", "-l", f"app.kubernetes.io/name={OPERATOR}"])["items"]
    running = [p for p in pods if p["status"].get("phase") == "Running" and not p["metadata"].get("deletionTimestamp")]
    assert running, [p["metadata"]["name"] for p in pods]
    for pod in running:
        assert pod["spec"]["serviceAccountName"] == OPERATOR
        assert_confined(k, operator, pod, "operator")


def test_the_live_operator_makes_a_cluster_with_these_rules(kube: LocalKube, operator: str) -> None:
    """A PostgresCluster of one, made by the running operator under the ClusterRole above: it gets
    the agents' Role past RBAC's escalation check, the agent labels its pod under that Role (``-rw``
    selects it), the data member runs confined, and no call of the operator was refused."""
    k = kube.kubectl
    ns = f"rbac-db-{uuid.uuid4().hex[:6]}"
    k.run(["create", "namespace", ns])
    try:
        endpoint = etcd_pod(k, ns)
        body = {
            "apiVersion": "pgquorum.io/v1alpha1",
            "kind": "PostgresCluster",
            "metadata": {"name": "db"},
            "spec": {
                "instances": 1,
                "etcd": {"endpoints": [endpoint]},
                "parameters": {"shared_buffers": "16MB"},
                "stonith": {"kubernetes": {"deletePod": True, "taintNode": True}},  # the node-fencer binding too
            },
        }
        k.run(["-n", ns, "apply", "-f", "-"], stdin=json.dumps(body))
        try:
            wait_for("-rw on db-0", lambda: ready_endpoints(k, ns) == ["db-0"], timeout=240)
        except AssertionError:
            print(k.run(["-n", ns, "get", "pods,roles,pgq", "-o", "wide"], check=False).stdout)
            print(k.run(["-n", ns, "logs", "db-0", "--tail=40"], check=False).stdout)
            raise
        (expected,) = [o for o in agent_rbac(ns, "db", {}) if o["kind"] == "Role"]
        assert k.json(["-n", ns, "get", "role", "db-agent"])["rules"] == expected["rules"]  # this checkout's rules
        assert_confined(k, ns, k.json(["-n", ns, "get", "pod", "db-0"]), "agent")
        agent_logs = k.run(["-n", ns, "logs", "db-0"]).stdout
        assert "pod_role_failed" not in agent_logs and " 403" not in agent_logs
        # taintNode: the agents' account bound to the node-fencer ClusterRole (cluster-scoped, past
        # the escalation check by the operator's bind on that one ClusterRole) ...
        binding = k.json(["get", "clusterrolebinding", f"pgquorum-node-fencer-{ns}-db"])
        assert binding["roleRef"]["name"] == "pgquorum-node-fencer"
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "db-agent", "namespace": ns}]
        assert_allowed(
            k, account(ns, "db-agent"), [("get", "nodes", CLUSTER, "node1"), ("patch", "nodes", CLUSTER, "node1")], ns
        )
        # ... and, owned by nobody, deleted by the operator's delete handler with the cluster
        k.run(["-n", ns, "delete", "pgq", "db", "--wait=true", "--timeout=60s"], timeout=70)
        left = k.json(["get", "clusterrolebindings", "-l", f"pgquorum.io/cluster=db,pgquorum.io/namespace={ns}"])
        assert not left["items"], [b["metadata"]["name"] for b in left["items"]]
    finally:
        k.run(["delete", "namespace", ns, "--wait=false"], check=False)
    logs = k.run(["-n", operator, "logs", "-l", f"app.kubernetes.io/name={OPERATOR}", "--tail=-1", "--prefix"]).stdout
    # this cluster's lines (other tests' namespaces may be going away meanwhile)
    refused = [line for line in logs.splitlines() if ns in line and ("forbidden" in line.lower() or " 403" in line)]
    assert not refused, refused[:10]
