"""Security invariants of what the operator renders, as plain data from the pure functions: every
container of the operator's Deployment and of data and witness pods runs as a numeric non-root user
(the image's postgres, 999), cannot gain privileges, drops every capability, has a read-only root
filesystem (writable paths are emptyDirs and the data volume) and the runtime's seccomp profile;
nothing shares the host's namespaces. And the RBAC the operator renders stays least privilege: no
wildcards, the agents touch only their own cluster's pods, the operator never lists secrets, execs
into pods, touches nodes or escalates. tests/kube/test_rbac.py checks the same on the apiserver."""

from __future__ import annotations

from typing import Any

import pytest

from pgquorum.operator import manifests
from pgquorum.operator.install import cluster_role_rules, operator_objects
from pgquorum.operator.manifests import NODE_FENCER
from pgquorum.operator.observed import MemberKind
from pgquorum.operator.spec import MAX_INSTANCES, MAX_WITNESSES, parse_spec

IMAGE_UID = 999  # the Dockerfile's USER 999:999
IDENT = manifests.Identity("db-ns", "db", "uid-1", ("http://etcd:2379",))
SPEC = {"etcd": {"endpoints": ["http://etcd:2379"]}, "instances": 3, "witnesses": 1}


def member_pods(extra: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    cs = parse_spec({**SPEC, **(extra or {})}, "db")
    return [dict(t.pod.body) for t in manifests.target(cs, IDENT).members]


def operator_deployment() -> dict[str, Any]:
    (deployment,) = [o for o in operator_objects("pgquorum-system", "img:1") if o["kind"] == "Deployment"]
    return deployment


def pod_specs() -> list[tuple[str, dict[str, Any]]]:
    out = [("operator", operator_deployment()["spec"]["template"]["spec"])]
    out += [(p["metadata"]["name"], p["spec"]) for p in member_pods()]
    return out


def effective(pod: dict[str, Any], container: dict[str, Any], key: str) -> Any:
    """A securityContext field as the kubelet sees it: the container's, else the pod's."""
    own = container.get("securityContext") or {}
    return own[key] if key in own else (pod.get("securityContext") or {}).get(key)


def test_the_rendered_pods_are_the_ones_checked() -> None:
    kinds = sorted(p["metadata"]["labels"]["pgquorum.io/kind"] for p in member_pods())
    assert kinds == sorted([MemberKind.DATA.value] * 3 + [MemberKind.WITNESS.value])
    assert [name for name, _ in pod_specs()] == ["operator", "db-0", "db-1", "db-2", "db-w0"]


@pytest.mark.parametrize(("name", "pod"), pod_specs(), ids=[n for n, _ in pod_specs()])
def test_every_container_runs_non_root_without_privileges(name: str, pod: dict[str, Any]) -> None:
    containers = [*pod.get("initContainers", []), *pod["containers"]]
    assert containers
    for c in containers:
        where = f"{name}/{c['name']}"
        assert effective(pod, c, "runAsNonRoot") is True, where
        uid = effective(pod, c, "runAsUser")
        assert isinstance(uid, int) and not isinstance(uid, bool) and uid == IMAGE_UID, (where, uid)
        gid = effective(pod, c, "runAsGroup")
        assert isinstance(gid, int) and gid != 0, (where, gid)
        sc = c.get("securityContext") or {}
        assert sc.get("allowPrivilegeEscalation") is False, where
        assert sc.get("readOnlyRootFilesystem") is True, where
        assert sc.get("privileged") in (None, False), where
        assert (sc.get("capabilities") or {}).get("drop") == ["ALL"], where
        assert not (sc.get("capabilities") or {}).get("add"), where
        assert effective(pod, c, "seccompProfile") == {"type": "RuntimeDefault"}, where
        assert "procMount" not in sc, where
    for host in ("hostNetwork", "hostPID", "hostIPC"):
        assert host not in pod, (name, host)
    assert not any("hostPath" in v for v in pod.get("volumes", [])), name


@pytest.mark.parametrize(("name", "pod"), pod_specs()[1:], ids=[n for n, _ in pod_specs()[1:]])
def test_a_member_writes_only_to_its_volumes(name: str, pod: dict[str, Any]) -> None:
    """With a read-only root, every path the agent and PostgreSQL write is a mounted volume."""
    (c,) = pod["containers"]
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    writable = {p for p, m in mounts.items() if not m.get("readOnly")}
    expected = {"/tmp", "/var/run/postgresql"} | ({manifests.DATA_MOUNT} if "-w" not in name else set())
    assert writable == expected, (name, writable)
    for path in ("/tmp", "/var/run/postgresql"):
        assert "emptyDir" in volumes[mounts[path]["name"]], (name, path)
    for path in (manifests.CONFIG_MOUNT, manifests.SECRETS_MOUNT):
        assert mounts[path]["readOnly"] is True, (name, path)
    secret = next(v for v in volumes.values() if "secret" in v)["secret"]
    assert secret["defaultMode"] == 0o400  # the passwords and API token: readable by the agent only
    assert pod["securityContext"]["fsGroup"] == IMAGE_UID


def test_the_operator_writes_nowhere_and_runs_one_process_per_pod() -> None:
    pod = operator_deployment()["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert not c.get("volumeMounts") and not pod.get("volumes")
    assert pod["serviceAccountName"] == "pgquorum-operator"
    assert pod["enableServiceLinks"] is False


# -- the RBAC as rendered --------------------------------------------------------------------


def agent_role(extra: dict[str, Any] | None = None) -> dict[str, Any]:
    cs = parse_spec({**SPEC, **(extra or {})}, "db")
    (role,) = [m.body for m in manifests.target(cs, IDENT).shared if m.kind == "Role"]
    return dict(role)


def test_the_agents_role_names_only_this_clusters_pods() -> None:
    rules = agent_role()["rules"]
    data = [f"db-{i}" for i in range(MAX_INSTANCES)]
    witnesses = [f"db-w{i}" for i in range(MAX_WITNESSES)]
    assert rules == [
        {"apiGroups": [""], "resources": ["pods"], "resourceNames": data + witnesses, "verbs": ["get", "patch"]},
        {"apiGroups": [""], "resources": ["pods"], "resourceNames": data, "verbs": ["delete"]},
    ]
    # the same for every size: a scale-down never changes what a member on its way out may do
    assert agent_role({"instances": 5, "witnesses": 0})["rules"] == rules
    assert agent_role({"instances": 1, "witnesses": 0})["rules"] == rules


def test_without_delete_pod_the_agents_cannot_delete_pods() -> None:
    rules = agent_role({"stonith": {"kubernetes": {"deletePod": False}}})["rules"]
    assert [v for r in rules for v in r["verbs"]] == ["get", "patch"]


def test_the_agents_role_is_bound_to_the_agents_account_only() -> None:
    cs = parse_spec(SPEC, "db")
    shared = {m.kind: m.body for m in manifests.target(cs, IDENT).shared}
    assert shared["RoleBinding"]["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": "db-agent",
    }
    assert shared["RoleBinding"]["subjects"] == [{"kind": "ServiceAccount", "name": "db-agent", "namespace": "db-ns"}]
    assert all(p["spec"]["serviceAccountName"] == "db-agent" for p in member_pods())


def granted(rules: list[dict[str, Any]]) -> set[tuple[str, str, str]]:
    return {(g, r, v) for rule in rules for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]}


def test_the_operators_cluster_role_has_no_wildcards_and_no_dangerous_grants() -> None:
    # the one named grant: bind of the node-fencer ClusterRole (its own test below); the rest unnamed
    rules = [r for r in cluster_role_rules() if r.get("resourceNames") != [NODE_FENCER]]
    grants = granted(rules)
    assert not [g for g in grants if "*" in g]
    assert not any("resourceNames" in r or "nonResourceURLs" in r for r in rules)
    verbs = {v for _, _, v in grants}
    assert not verbs & {"escalate", "bind", "impersonate", "deletecollection", "update", "approve", "sign"}
    resources = {r for _, r, _ in grants}
    assert not {r for r in resources if "/" in r} - {"postgresclusters/status"}  # no exec, attach, token, ...
    assert not resources & {"nodes", "clusterroles", "persistentvolumes"}
    # the Secret is read by name and applied: never listed or watched (which would read them all)
    assert {v for g, r, v in grants if r == "secrets"} == {"get", "create", "patch"}
    # CRDs and namespaces are only watched; nothing but pods and PVCs is ever deleted
    assert {v for g, r, v in grants if r in ("customresourcedefinitions", "namespaces")} == {"list", "watch"}
    # nothing but pods, PVCs and the node-fencer bindings it made is ever deleted
    assert {r for g, r, v in grants if v == "delete"} == {"pods", "persistentvolumeclaims", "clusterrolebindings"}


def test_the_operator_holds_what_it_grants_the_agents() -> None:
    """RBAC refuses a Role granting more than its creator holds (the escalation check)."""
    have = granted(cluster_role_rules())
    assert granted(agent_role()["rules"]) <= have


def test_only_with_taint_node_are_the_agents_bound_to_the_node_fencer() -> None:
    def bindings(extra: dict[str, Any]) -> list[dict[str, Any]]:
        cs = parse_spec({**SPEC, **extra}, "db")
        return [dict(m.body) for m in manifests.target(cs, IDENT).shared if m.kind == "ClusterRoleBinding"]

    assert bindings({}) == []
    (binding,) = bindings({"stonith": {"kubernetes": {"deletePod": True, "taintNode": True}}})
    # cluster-scoped: named after namespace and cluster, found by labels, owned by nobody (no GC)
    assert binding["metadata"]["name"] == "pgquorum-node-fencer-db-ns-db"
    assert "namespace" not in binding["metadata"] and "ownerReferences" not in binding["metadata"]
    labels = binding["metadata"]["labels"]
    assert labels["pgquorum.io/cluster"] == "db" and labels["pgquorum.io/namespace"] == "db-ns"
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": NODE_FENCER}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "db-agent", "namespace": "db-ns"}]


def test_the_node_fencer_grants_nodes_get_and_patch_and_the_operator_may_bind_only_it() -> None:
    objects = {(o["kind"], o["metadata"]["name"]): o for o in operator_objects("pgquorum-system", "img")}
    assert objects[("ClusterRole", NODE_FENCER)]["rules"] == [
        {"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "patch"]}
    ]
    bind = [r for r in cluster_role_rules() if "bind" in r["verbs"]]
    assert bind == [
        {
            "apiGroups": ["rbac.authorization.k8s.io"],
            "resources": ["clusterroles"],
            "verbs": ["bind"],
            "resourceNames": [NODE_FENCER],
        }
    ]
    assert not any("nodes" in r["resources"] for r in cluster_role_rules())  # it never touches nodes itself
