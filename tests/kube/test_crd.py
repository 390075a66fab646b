"""The PostgresCluster CRD on the real apiserver: a minimal resource gets every default (the ones the
operator's parser applies); each bad one is refused by ``kubectl apply`` with a message naming the
field and the fix (schema and CEL rules, and the transition rules of immutable fields); the printer
columns show. The operator's parser refuses the same resources (its second line of defence)."""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml

from pgquorum.kube.cluster import Kubectl, LocalKube
from pgquorum.operator.cli import peering_crds
from pgquorum.operator.crd import NAME, postgrescluster_crd
from pgquorum.operator.spec import SpecError, check_update, parse_spec

pytestmark = pytest.mark.kube

ETCD = {"endpoints": ["http://etcd:2379"]}


@pytest.fixture(scope="module")
def crd(kube: LocalKube) -> Kubectl:
    k = kube.kubectl
    docs = yaml.safe_dump_all([postgrescluster_crd(), *peering_crds()])
    k.run(["apply", "--server-side", "--force-conflicts", "-f", "-"], stdin=docs)
    k.run(["wait", "--for=condition=Established", f"crd/{NAME}", "--timeout=60s"], timeout=70)
    return k


def cluster(name: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "pgquorum.io/v1alpha1", "kind": "PostgresCluster", "metadata": {"name": name}, "spec": spec}


def apply(k: Kubectl, ns: str, obj: dict[str, Any]) -> tuple[int, str]:
    out = k.run(["-n", ns, "apply", "-f", "-"], stdin=json.dumps(obj), check=False)
    return out.returncode, out.stderr


def test_a_minimal_cluster_gets_every_default_and_the_operator_reads_it_the_same(crd: Kubectl, ns: str) -> None:
    code, err = apply(crd, ns, cluster("db", etcd=ETCD))
    assert code == 0, err
    spec = crd.json(["-n", ns, "get", "pgq", "db"])["spec"]
    assert spec == {
        "etcd": ETCD,
        "instances": 3,
        "witnesses": 0,
        "image": spec["image"],  # the build's image reference, checked against the parser below
        "storage": {"size": "1Gi"},
        "synchronous": {"mode": "off", "k": 1, "durability": "required"},
        "timing": {"ttl": 3, "loopWait": 1, "retryTimeout": 1, "safetyMargin": 0.5},
        "quorumVotes": True,
        "maximumLagOnFailover": 1048576,
        "stonith": {"kubernetes": {"deletePod": True, "taintNode": False}},
        "antiAffinity": "preferred",
        "pvcRetention": "Retain",
    }
    # what the apiserver defaulted is what the operator's parser defaults: one meaning
    assert parse_spec(spec, "db") == parse_spec({"etcd": ETCD}, "db")
    table = crd.run(["-n", ns, "get", "pgq"]).stdout.splitlines()
    assert table[0].split() == ["NAME", "INSTANCES", "READY", "LEADER", "TERM", "PHASE", "AGE"]
    assert table[1].split()[:2] == ["db", "3"]


def test_a_full_cluster_is_accepted_as_written(crd: Kubectl, ns: str) -> None:
    spec: dict[str, Any] = {
        "etcd": {"bundled": True},
        "instances": 2,
        "witnesses": 1,
        "parameters": {"work_mem": "64MB", "pg_stat_statements.max": "1000"},
        "storage": {"size": "2Gi", "storageClassName": "local-path"},
        "resources": {"requests": {"cpu": "500m", "memory": "256Mi"}, "limits": {"cpu": 1, "memory": "256Mi"}},
        "synchronous": {"mode": "quorum", "k": 1, "durability": "preferred"},
        "timing": {"ttl": 10, "loopWait": 2, "retryTimeout": 4, "safetyMargin": 1.5},
        "stonith": {"kubernetes": {"deletePod": True, "taintNode": True}},
        "antiAffinity": "required",
        "pvcRetention": "Delete",
        "switchover": {"target": "db-1", "at": "2026-12-04T01:00:00Z"},
    }
    code, err = apply(crd, ns, cluster("db", **spec))
    assert code == 0, err
    stored = crd.json(["-n", ns, "get", "pgq", "db"])["spec"]
    assert {k: stored[k] for k in spec} == spec
    parse_spec(stored, "db")


# (name, spec, the field the message names, the fix it gives); every rule of the CRD at least once
BAD: list[tuple[str, dict[str, Any], str, str]] = [
    ("db", {"instances": 2}, "spec.witnesses", "add a witness (witnesses: 1) or use instances: 3"),
    ("db", {"instances": 1, "witnesses": 1}, "spec.witnesses", "add a witness"),
    ("db", {"instances": 2, "witnesses": 2}, "spec.witnesses", "add instances or remove witnesses"),
    ("db", {"instances": 3, "witnesses": 1, "quorumVotes": False}, "spec.witnesses", "need quorumVotes: true"),
    ("db", {"instances": 0}, "spec.instances", "should be greater than or equal to 1"),
    ("db", {"witnesses": 3}, "spec.witnesses", "should be less than or equal to 2"),
    ("db", {"instances": 3, "synchronous": {"mode": "quorum", "k": 3}}, "spec.synchronous.k", "lower k or raise"),
    ("db", {"instances": 1, "synchronous": {"mode": "quorum"}}, "spec.synchronous.k", "lower k or raise instances"),
    ("db", {"synchronous": {"mode": "sync"}}, "spec.synchronous.mode", 'supported values: "off", "quorum"'),
    ("db", {"synchronous": {"durability": "x"}}, "spec.synchronous.durability", '"required", "preferred"'),
    ("db", {"timing": {"ttl": 3, "loopWait": 2}}, "spec.timing", "raise ttl or lower loopWait / retryTimeout"),
    ("db", {"timing": {"ttl": 4, "safetyMargin": 3}}, "spec.timing.safetyMargin", "lower safetyMargin or raise"),
    ("db", {"timing": {"safetyMargin": 0.1}}, "spec.timing.safetyMargin", "greater than or equal to 0.2"),
    ("db", {"timing": {"ttl": 1}}, "spec.timing.ttl", "greater than or equal to 2"),
    ("db", {"timing": {"loopWait": 0}}, "spec.timing.loopWait", "should be greater than 0"),
    ("db", {"parameters": {"port": "5433"}}, "spec.parameters", "managed by pgquorum"),
    ("db", {"parameters": {"Work_Mem": "4MB"}}, "spec.parameters", "lower case, e.g. work_mem"),
    ("db", {"storage": {"size": "lots"}}, "spec.storage.size", "should match"),
    ("db", {"storage": {"size": "0"}}, "spec.storage.size", "must be more than 0, e.g. 10Gi"),
    ("db", {"resources": {"requests": {"cpu": "2"}, "limits": {"cpu": 1}}}, "spec.resources", "lower the request"),
    ("db", {"resources": {"limits": {"cpu": "lots"}}}, "spec.resources.limits.cpu", "should match"),
    (
        "db",
        {"stonith": {"kubernetes": {"deletePod": False, "taintNode": True}}},
        "spec.stonith.kubernetes.taintNode",
        "set deletePod: true or taintNode: false",
    ),
    ("db", {"etcd": {}}, "spec.etcd", "set exactly one of endpoints"),
    ("db", {"etcd": {"endpoints": ["http://etcd:2379"], "bundled": True}}, "spec.etcd", "set exactly one"),
    ("db", {"etcd": {"endpoints": ["etcd:2379"]}}, "spec.etcd.endpoints[0]", "should match"),
    ("db", {"antiAffinity": "always"}, "spec.antiAffinity", '"required", "preferred"'),
    ("db", {"pvcRetention": "delete"}, "spec.pvcRetention", '"Retain", "Delete"'),
    ("db", {"switchover": {"target": "db-3"}}, "spec.switchover.target", "use one of db-0 .. db-(instances - 1)"),
    ("db", {"switchover": {"target": "other-1"}}, "spec.switchover.target", "is not a data member of db"),
    ("db", {"switchover": {"target": "db-01"}}, "spec.switchover.target", "use one of db-0"),
    ("db", {"switchover": {"target": "db-1", "at": "tomorrow"}}, "spec.switchover.at", "date-time"),
    ("1db", {}, "metadata.name", "starting with a letter"),
    ("a" * 61, {}, "metadata.name", "at most 60"),
]


@pytest.mark.parametrize(("name", "spec", "field", "fix"), BAD, ids=[f"{b[2]}-{i}" for i, b in enumerate(BAD)])
def test_a_bad_resource_is_refused_at_apply_time_naming_the_field_and_the_fix(
    crd: Kubectl, ns: str, name: str, spec: dict[str, Any], field: str, fix: str
) -> None:
    body = {"etcd": ETCD, **spec}
    code, err = apply(crd, ns, cluster(name, **body))
    assert code != 0, f"accepted: {body}"
    assert f"{field}: " in err and fix in err, err
    # the operator refuses it too (a resource stored before the CRD had the rule)
    with pytest.raises(SpecError):
        parse_spec(body, name)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"storage": {"storageClassName": "fast", "size": "2Gi"}}, "spec.storage.storageClassName is immutable"),
        ({"storage": {"size": "2Gi"}}, "spec.storage.storageClassName is immutable"),  # unset is a change too
        ({"storage": {"storageClassName": "standard", "size": "1Gi"}}, "keep at least 2Gi"),
        ({"etcd": {"endpoints": ["http://other:2379"]}}, "spec.etcd is immutable"),
        ({"etcd": {"bundled": True}}, "spec.etcd is immutable"),
        ({"quorumVotes": False}, "spec.quorumVotes is immutable"),
    ],
)
def test_an_update_of_an_immutable_field_is_refused(
    crd: Kubectl, ns: str, change: dict[str, Any], message: str
) -> None:
    first: dict[str, Any] = {"etcd": ETCD, "storage": {"storageClassName": "standard", "size": "2Gi"}}
    code, err = apply(crd, ns, cluster("db", **first))
    assert code == 0, err
    code, err = apply(crd, ns, cluster("db", **{**first, **change}))
    assert code != 0 and message in err, err
    with pytest.raises(SpecError):
        check_update(parse_spec(first), parse_spec({**first, **change}))


def test_an_update_of_what_may_change_is_accepted(crd: Kubectl, ns: str) -> None:
    first: dict[str, Any] = {"etcd": ETCD, "storage": {"storageClassName": "standard", "size": "2Gi"}}
    code, err = apply(crd, ns, cluster("db", **first))
    assert code == 0, err
    later = {**first, "storage": {"storageClassName": "standard", "size": "3Gi"}, "instances": 5, "witnesses": 1}
    code, err = apply(crd, ns, cluster("db", **later, timing={"ttl": 10}, switchover={"target": "db-4"}))
    assert code == 0, err
    check_update(parse_spec(first), parse_spec(later))
