"""The objects the operator renders for a cluster, as plain data: the agents' ConfigMap across a
scale-down (a leaving member's config stays until its pod is gone)."""

from __future__ import annotations

from typing import Any

import yaml

from pgquorum.operator import manifests
from pgquorum.operator.spec import parse_spec

IDENT = manifests.Identity("db-ns", "db", "uid-1", ("http://etcd:2379",))


def shared(kind: str, instances: int = 3, witnesses: int = 0, present: tuple[str, ...] = ()) -> dict[str, Any]:
    cs = parse_spec({"etcd": {"endpoints": ["http://etcd:2379"]}, "instances": instances, "witnesses": witnesses}, "db")
    (obj,) = [m.body for m in manifests.target(cs, IDENT, present).shared if m.kind == kind]
    return dict(obj)


def test_the_config_map_holds_one_agent_config_per_member() -> None:
    data = shared("ConfigMap", 3, 1)["data"]
    assert sorted(data) == ["db-0.yaml", "db-1.yaml", "db-2.yaml", "db-w0.yaml"]
    assert yaml.safe_load(data["db-1.yaml"])["name"] == "db-1"


def test_a_member_still_present_after_a_scale_down_keeps_its_config_and_the_pdb_counts_only_the_wanted() -> None:
    present = ("db-0", "db-1", "db-2", "db-3", "db-4", "db-w1", "other-0")
    data = shared("ConfigMap", 3, 1, present)["data"]
    # db-3, db-4 and the witness db-w1 are leaving: their pods still mount their key
    assert sorted(data) == ["db-0.yaml", "db-1.yaml", "db-2.yaml", "db-3.yaml", "db-4.yaml", "db-w0.yaml", "db-w1.yaml"]
    assert yaml.safe_load(data["db-4.yaml"])["name"] == "db-4"
    assert shared("PodDisruptionBudget", 3, 1, present)["spec"]["minAvailable"] == 3  # of 4 voters wanted
    # gone: the key goes with it
    assert "db-4.yaml" not in shared("ConfigMap", 3, 1, ("db-0", "db-1", "db-2"))["data"]


def test_members_advertise_their_pod_ip_not_a_cached_dns_name() -> None:
    cs = parse_spec({"etcd": {"endpoints": ["http://etcd:2379"]}, "instances": 3, "witnesses": 1}, "db")
    for pod, kind in (("db-1", manifests.MemberKind.DATA), ("db-w0", manifests.MemberKind.WITNESS)):
        container = manifests.member_pod(cs, IDENT, pod, kind).body["spec"]["containers"][0]
        (env,) = [e for e in container["env"] if e["name"] == manifests.POD_IP_ENV]
        assert env["valueFrom"] == {"fieldRef": {"fieldPath": "status.podIP"}}
        config = yaml.safe_load(shared("ConfigMap", 3, 1)["data"][f"{pod}.yaml"])
        assert config["advertise_host_env"] == manifests.POD_IP_ENV


def test_every_object_the_operator_makes_is_valid_against_the_kubernetes_1_34_schemas() -> None:
    import kubernetes_validate

    spec = {
        "etcd": {"endpoints": ["http://etcd:2379"]},
        "instances": 3,
        "witnesses": 1,
        "stonith": {"kubernetes": {"deletePod": True, "taintNode": True}},
        "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}},
        "antiAffinity": "required",
    }
    target = manifests.target(parse_spec(spec, "db"), IDENT, ())
    objects = [m.body for m in target.shared] + [
        manifests.member_pod(parse_spec(spec, "db"), IDENT, pod, kind).body
        for pod, kind in (("db-0", manifests.MemberKind.DATA), ("db-w0", manifests.MemberKind.WITNESS))
    ]
    kinds = set()
    for obj in objects:
        try:
            kubernetes_validate.validate(obj, "1.34.0", strict=True)
        except kubernetes_validate.ValidationError as exc:
            raise AssertionError(f"{obj['kind']} {obj['metadata']['name']}: {exc.message}") from None
        kinds.add(obj["kind"])
    assert {"Pod", "Service", "ConfigMap", "PodDisruptionBudget", "Role", "RoleBinding"} <= kinds
