"""The PostgresCluster spec: the CRD's defaults are the typed model's (and the agent's), and every
rule the CRD enforces at apply time is enforced by ``parse_spec`` too, with a message naming the
field and the fix. Plain data: the CRD is read as the dict the chart will dump."""

from __future__ import annotations

import re
from dataclasses import fields
from decimal import Decimal
from typing import Any

import pytest

from pgquorum.agent.config import DURABILITIES, SYNC_MODES, PostgresSettings, Timing
from pgquorum.agent.postgres.conf import RESERVED
from pgquorum.agent.quorum.sync import Durability
from pgquorum.operator.crd import GROUP, KIND, PLURAL, VERSION, postgrescluster_crd
from pgquorum.operator.spec import (
    AntiAffinity,
    ClusterSpec,
    EtcdSpec,
    PvcRetention,
    SpecError,
    StorageSpec,
    SwitchoverRequest,
    SyncMode,
    TimingSpec,
    check_update,
    parse_spec,
    quantity,
)

ETCD = {"endpoints": ["http://etcd:2379"]}


def version() -> dict[str, Any]:
    versions: list[dict[str, Any]] = postgrescluster_crd()["spec"]["versions"]
    assert len(versions) == 1
    return versions[0]


def root_schema() -> dict[str, Any]:
    schema: dict[str, Any] = version()["schema"]["openAPIV3Schema"]
    return schema


def spec_schema() -> dict[str, Any]:
    schema: dict[str, Any] = root_schema()["properties"]["spec"]
    return schema


def defaulted(schema: dict[str, Any], value: dict[str, Any]) -> dict[str, Any]:
    """What the apiserver stores: an absent property with a default gets it, then objects recurse."""
    out = dict(value)
    for key, prop in schema.get("properties", {}).items():
        if key not in out and "default" in prop:
            out[key] = prop["default"]
        if key in out and prop.get("type") == "object" and isinstance(out[key], dict):
            out[key] = defaulted(prop, out[key])
    return out


def walk(schema: dict[str, Any], path: str = "spec") -> list[tuple[str, dict[str, Any]]]:
    found = [(path, schema)]
    for key, prop in schema.get("properties", {}).items():
        found += walk(prop, f"{path}.{key}")
    if isinstance(schema.get("items"), dict):
        found += walk(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        found += walk(schema["additionalProperties"], f"{path}.*")
    return found


# -- the CRD's identity --------------------------------------------------------------------------


def test_the_resource_is_pgquorum_io_v1alpha1_postgresclusters_with_a_status_subresource() -> None:
    crd = postgrescluster_crd()
    assert (GROUP, VERSION, KIND, PLURAL) == ("pgquorum.io", "v1alpha1", "PostgresCluster", "postgresclusters")
    assert crd["metadata"]["name"] == "postgresclusters.pgquorum.io"
    assert crd["spec"]["scope"] == "Namespaced" and crd["spec"]["names"]["shortNames"] == ["pgq"]
    assert version()["subresources"] == {"status": {}}
    columns = [c["name"] for c in version()["additionalPrinterColumns"]]
    assert columns == ["Instances", "Ready", "Leader", "Term", "Phase", "Age"]


# -- defaults: one meaning -----------------------------------------------------------------------


def test_the_crd_defaults_are_the_dataclass_defaults() -> None:
    stored = defaulted(spec_schema(), {"etcd": ETCD})
    expected = ClusterSpec(EtcdSpec(("http://etcd:2379",)))
    assert parse_spec(stored, "db") == expected
    assert parse_spec({"etcd": ETCD}, "db") == expected
    # field by field, so a default the parser and the CRD both got wrong the same way still shows
    assert stored["instances"] == expected.instances == 3
    assert stored["witnesses"] == expected.witnesses == 0
    assert stored["image"] == expected.image
    assert stored["quorumVotes"] is expected.quorum_votes is True
    assert stored["storage"] == {"size": StorageSpec().size}
    assert stored["antiAffinity"] == AntiAffinity.PREFERRED and stored["pvcRetention"] == PvcRetention.RETAIN
    assert stored["stonith"] == {"kubernetes": {"deletePod": True, "taintNode": False}}


def test_the_defaults_are_the_agents_own() -> None:
    stored = defaulted(spec_schema(), {"etcd": ETCD})
    agent = Timing()
    assert stored["timing"] == {
        "ttl": agent.ttl,
        "loopWait": agent.loop_wait,
        "retryTimeout": agent.retry_timeout,
        "safetyMargin": agent.safety_margin,
    }
    assert TimingSpec().agent() == agent
    lag = next(f.default for f in fields(PostgresSettings) if f.name == "maximum_lag_on_failover")
    assert stored["maximumLagOnFailover"] == lag
    assert stored["synchronous"] == {"mode": "off", "k": 1, "durability": "required"}
    sync = spec_schema()["properties"]["synchronous"]["properties"]
    assert tuple(sync["mode"]["enum"]) == SYNC_MODES == tuple(m.value for m in SyncMode)
    assert tuple(sync["durability"]["enum"]) == DURABILITIES == tuple(d.value for d in Durability)


@pytest.mark.parametrize("section", ["timing", "synchronous", "stonith", "storage"])
def test_a_sections_own_default_equals_its_fields_defaults(section: str) -> None:
    """The apiserver checks a section's default as written (rules included) before filling the fields:
    both spellings of the default must agree."""
    schema = spec_schema()["properties"][section]
    assert defaulted(schema, {}) == defaulted(schema, schema["default"])


def test_every_rule_message_names_a_field() -> None:
    rules = [
        (path, rule) for path, node in walk(root_schema(), "") for rule in node.get("x-kubernetes-validations", [])
    ]
    assert len(rules) >= 17
    for path, rule in rules:
        assert rule["message"].startswith(("spec.", "metadata.name")), (path, rule)
        fixes = ("add ", "use ", "set ", "lower ", "raise ", "remove ", "create ", "choose ", "e.g. ", "need")
        assert any(f in rule["message"] for f in fixes), (path, rule)  # and says what to do


def test_every_string_list_and_map_in_the_spec_is_bounded_for_cel_cost() -> None:
    for path, node in walk(spec_schema()):
        if node.get("type") == "string" and "enum" not in node:
            assert "maxLength" in node, path
        if node.get("type") == "array":
            assert "maxItems" in node, path
        if isinstance(node.get("additionalProperties"), dict):
            assert "maxProperties" in node, path


def test_the_status_conditions_are_metav1_conditions() -> None:
    status = root_schema()["properties"]["status"]["properties"]
    cond = status["conditions"]["items"]
    assert set(cond["required"]) == {"type", "status", "lastTransitionTime", "reason", "message"}
    assert status["conditions"]["x-kubernetes-list-map-keys"] == ["type"]
    assert set(status["members"]["items"]["properties"]) == {"name", "role", "pod", "node", "lsn", "lagBytes", "ready"}
    assert set(status["quorum"]["properties"]) == {"provable", "reason"}
    assert {"time", "from", "to", "reason", "durations"} <= set(status["lastFailover"]["properties"])


# -- the rules, accepted -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "spec",
    [
        {"instances": 1},  # one voter: nothing to fail over to, but consistent
        {"instances": 2, "witnesses": 1},
        {"instances": 2, "quorumVotes": False},  # lease-only: etcd decides, no majority of voters needed
        {"instances": 4},  # 4 voters keep a majority of 3 after one loss
        {"instances": 3, "witnesses": 2},
        {"instances": 3, "synchronous": {"mode": "quorum", "k": 2}},  # k = instances - 1
        {"instances": 2, "witnesses": 1, "synchronous": {"mode": "quorum", "k": 1, "durability": "preferred"}},
        {"instances": 1, "synchronous": {"mode": "off", "k": 5}},  # k unused while mode is off
        {"timing": {"ttl": 3, "loopWait": 1, "retryTimeout": 1}},  # loopWait + 2 * retryTimeout == ttl
        {"timing": {"ttl": 10, "loopWait": 2, "retryTimeout": 3, "safetyMargin": 7.9}},
        {"parameters": {"work_mem": "64MB", "pg_stat_statements.max": "1000"}},
        {"resources": {"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"cpu": 1, "memory": "1Gi"}}},
        {"storage": {"size": "0.5Gi", "storageClassName": "local-path"}},
        {"stonith": {"kubernetes": {"deletePod": True, "taintNode": True}}},
        {"stonith": {"kubernetes": {"deletePod": False}}},
        {"etcd": {"bundled": True}},
        {"switchover": {"target": "db-2"}},
        {"switchover": {"target": "db-0", "at": "2026-12-04T01:00:00+01:00"}},
        {"antiAffinity": "required", "pvcRetention": "Delete"},
    ],
)
def test_a_good_spec_is_accepted(spec: dict[str, Any]) -> None:
    parse_spec({"etcd": ETCD, **spec}, "db")


def test_the_typed_view() -> None:
    cs = parse_spec(
        {
            "etcd": {"bundled": True},
            "instances": 5,
            "witnesses": 1,
            "synchronous": {"mode": "quorum", "k": 2},
            "timing": {"ttl": 10, "loopWait": 2},
            "resources": {"limits": {"cpu": 2}},
            "switchover": {"target": "db-4", "at": "2026-12-04T01:00:00Z"},
            "pvcRetention": "Delete",
        },
        "db",
    )
    assert cs.etcd == EtcdSpec((), bundled=True)
    assert cs.synchronous.quorum and cs.synchronous.quorum_required and cs.synchronous.k == 2
    assert cs.timing == TimingSpec(10, 2.0, 1.0, 0.5) and cs.voters == 6
    assert cs.resources == {"limits": {"cpu": "2"}}  # the apiserver keeps an int; pods get the quantity text
    assert cs.switchover == SwitchoverRequest("db-4", "2026-12-04T01:00:00Z")
    assert cs.pvc_retention is PvcRetention.DELETE
    assert parse_spec({"etcd": ETCD, "quorumVotes": False, "instances": 2}).voters == 0


# -- the rules, refused --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "field", "fix"),
    [
        ({"instances": 2}, "spec.witnesses", "add a witness (witnesses: 1) or use instances: 3"),
        ({"instances": 1, "witnesses": 1}, "spec.witnesses", "add instances or remove witnesses"),
        ({"instances": 2, "witnesses": 2}, "spec.witnesses", "add instances or remove witnesses"),
        ({"witnesses": 1, "quorumVotes": False}, "spec.witnesses", "need quorumVotes: true"),
        ({"instances": 0}, "spec.instances", "between 1 and 9"),
        ({"instances": 10}, "spec.instances", "between 1 and 9"),
        ({"instances": "3"}, "spec.instances", "whole number"),
        ({"witnesses": 3}, "spec.witnesses", "between 0 and 2"),
        ({"instances": 3, "synchronous": {"mode": "quorum", "k": 3}}, "spec.synchronous.k", "lower k to at most 2"),
        ({"instances": 1, "synchronous": {"mode": "quorum"}}, "spec.synchronous.k", "use mode: off"),
        ({"synchronous": {"k": 0}}, "spec.synchronous.k", ">= 1"),
        ({"synchronous": {"k": 1.5}}, "spec.synchronous.k", "whole number"),
        ({"synchronous": {"mode": "sync"}}, "spec.synchronous.mode", "off, quorum"),
        ({"synchronous": {"durability": "maybe"}}, "spec.synchronous.durability", "required, preferred"),
        ({"synchronous": {"kk": 1}}, "spec.synchronous.kk", "unknown field"),
        ({"timing": {"ttl": 3, "loopWait": 2}}, "spec.timing", "Raise ttl or lower loopWait / retryTimeout"),
        ({"timing": {"ttl": 4, "safetyMargin": 3}}, "spec.timing.safetyMargin", "Lower safetyMargin or raise ttl"),
        ({"timing": {"safetyMargin": 0.1}}, "spec.timing.safetyMargin", ">= 0.2"),
        ({"timing": {"ttl": 1}}, "spec.timing.ttl", ">= 2"),
        ({"timing": {"ttl": 2.5}}, "spec.timing.ttl", "whole number"),
        ({"timing": {"loopWait": 0}}, "spec.timing.loopWait", "> 0"),
        ({"timing": {"retryTimeout": -1}}, "spec.timing.retryTimeout", "> 0"),
        ({"parameters": {"port": "5433"}}, "spec.parameters.port", "managed by pgquorum"),
        ({"parameters": {"synchronous_standby_names": "*"}}, "spec.parameters.synchronous_standby_names", "remove"),
        ({"parameters": {"Port": "5433"}}, "spec.parameters.Port", "lower case"),
        ({"parameters": {"work_mem": 64}}, "spec.parameters", "strings"),
        ({"storage": {"size": "lots"}}, "spec.storage.size", "like 10Gi"),
        ({"storage": {"size": "0"}}, "spec.storage.size", "positive"),
        ({"storage": {"storageClassName": "Fast_SSD"}}, "spec.storage.storageClassName", "kubectl get storageclass"),
        ({"resources": {"requests": {"cpu": "2"}, "limits": {"cpu": "1"}}}, "spec.resources.requests.cpu", "lower"),
        ({"resources": {"requests": {"memory": "lots"}}}, "spec.resources.requests.memory", "e.g. 500m"),
        ({"resources": {"claims": []}}, "spec.resources.claims", "unknown field"),
        ({"maximumLagOnFailover": -1}, "spec.maximumLagOnFailover", ">= 0"),
        ({"stonith": {"kubernetes": {"deletePod": False, "taintNode": True}}}, "taintNode", "set deletePod: true"),
        ({"etcd": {}}, "spec.etcd", "set exactly one of endpoints"),
        ({"etcd": {"endpoints": ["http://etcd:2379"], "bundled": True}}, "spec.etcd", "exactly one"),
        ({"etcd": {"endpoints": ["etcd:2379"]}}, "spec.etcd.endpoints[0]", "http://etcd:2379"),
        ({"quorumVotes": "yes"}, "spec.quorumVotes", "true or false"),
        ({"antiAffinity": "always"}, "spec.antiAffinity", "required, preferred"),
        ({"pvcRetention": "delete"}, "spec.pvcRetention", "Retain, Delete"),
        ({"switchover": {"target": "db-3"}}, "spec.switchover.target", "use one of db-0 .. db-2"),
        ({"switchover": {"target": "other-1"}}, "spec.switchover.target", "use one of db-0"),
        ({"switchover": {}}, "spec.switchover.target", "required"),
        ({"switchover": {"target": "db-1", "at": "tomorrow"}}, "spec.switchover.at", "RFC 3339"),
        ({"replicas": 3}, "spec.replicas", "unknown field"),
    ],
)
def test_a_bad_spec_is_refused_naming_the_field_and_the_fix(spec: dict[str, Any], field: str, fix: str) -> None:
    with pytest.raises(SpecError) as caught:
        parse_spec({"etcd": ETCD, **spec}, "db")
    message = str(caught.value)
    assert field in message and fix in message, message


def test_every_reserved_postgres_setting_of_the_agent_is_refused() -> None:
    for name in RESERVED:
        with pytest.raises(SpecError, match=re.escape(f"spec.parameters.{name}: managed by pgquorum")):
            parse_spec({"etcd": ETCD, "parameters": {name: "x"}})


@pytest.mark.parametrize("name", ["1db", "Db", "db-", "db.x", "a" * 61])
def test_a_cluster_name_that_cannot_name_its_services_and_pods_is_refused(name: str) -> None:
    with pytest.raises(SpecError, match=r"metadata\.name: .* choose another name"):
        parse_spec({"etcd": ETCD}, name)


def test_the_longest_name_is_accepted() -> None:
    parse_spec({"etcd": ETCD}, "a" * 60)


# -- updates ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"storage": {"storageClassName": "fast"}}, "spec.storage.storageClassName: is immutable"),
        ({"storage": {}}, "spec.storage.storageClassName: is immutable"),
        ({"storage": {"storageClassName": "standard", "size": "1Gi"}}, "spec.storage.size: may only grow"),
        ({"etcd": {"bundled": True}}, "spec.etcd: is immutable"),
        ({"quorumVotes": False, "instances": 3}, "spec.quorumVotes: is immutable"),
    ],
)
def test_an_update_of_an_immutable_field_is_refused(change: dict[str, Any], field: str) -> None:
    old = parse_spec({"etcd": ETCD, "storage": {"storageClassName": "standard", "size": "2Gi"}})
    new = parse_spec({"etcd": ETCD, "storage": {"storageClassName": "standard", "size": "2Gi"}, **change})
    with pytest.raises(SpecError, match=field):
        check_update(old, new)


def test_an_update_of_what_may_change_is_accepted() -> None:
    old = parse_spec({"etcd": ETCD, "storage": {"size": "2Gi"}})
    check_update(old, parse_spec({"etcd": ETCD, "storage": {"size": "2048Mi"}, "instances": 5, "witnesses": 1}))
    check_update(old, parse_spec({"etcd": ETCD, "storage": {"size": "3Gi"}, "timing": {"ttl": 10}}))


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("1Gi", Decimal(2**30)),
        ("500m", Decimal("0.5")),
        ("2", Decimal(2)),
        ("1.5k", Decimal(1500)),
        ("1e3", Decimal(1000)),
    ],
)
def test_quantities(text: str, value: Decimal) -> None:
    assert quantity(text) == value


def test_a_malformed_quantity_is_an_error() -> None:
    with pytest.raises(ValueError):
        quantity("1 Gi")
