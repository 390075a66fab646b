"""The pure parts of the pod-role labels: the label for each published role, the PATCH bodies
(the guarded demotion is a JSON-patch test + replace on the escaped key), the config section."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from pgquorum.agent.config import ConfigError, config_from_dict
from pgquorum.agent.podrole import (
    JSON_PATCH,
    ROLE_LABEL,
    KubernetesSettings,
    LabelChange,
    PodRole,
    demotion,
    parse_kubernetes,
    pod_role,
)

WITNESS = {
    "name": "w1",
    "cluster": "main",
    "witness": True,
    "etcd_endpoints": ["http://127.0.0.1:2379"],
    "api_listen": "127.0.0.1:8010",
}


@pytest.mark.parametrize(
    ("published", "label"),
    [
        ("leader", PodRole.PRIMARY),
        ("replica", PodRole.REPLICA),
        ("witness", PodRole.WITNESS),
        ("standby", PodRole.NONE),
        ("demoted", PodRole.NONE),
        ("stopped", PodRole.NONE),
        ("uninitialized", PodRole.NONE),
    ],
)
def test_only_a_writable_leader_is_primary(published: str, label: PodRole) -> None:
    assert pod_role(published) is label


def test_own_label_is_a_merge_patch_with_the_term() -> None:
    content_type, body = LabelChange("pg-1", PodRole.PRIMARY, 4).request()
    assert content_type == "application/merge-patch+json"
    assert body == {"metadata": {"labels": {ROLE_LABEL: "primary"}, "annotations": {"pgquorum.io/term": "4"}}}


def test_demotion_is_guarded_by_a_test_of_the_escaped_label() -> None:
    change = demotion("pg-0", 5)
    assert change.only_if is PodRole.PRIMARY and change.role is PodRole.NONE
    content_type, ops = change.request()
    assert content_type == JSON_PATCH
    assert ops == [
        {"op": "test", "path": "/metadata/labels/pgquorum.io~1role", "value": "primary"},
        {"op": "replace", "path": "/metadata/labels/pgquorum.io~1role", "value": "none"},
    ]


def test_the_section_defaults_to_the_member_name() -> None:
    assert parse_kubernetes(None, "pg-0") is None
    assert parse_kubernetes({}, "pg-0") == KubernetesSettings("pg-0")
    full = parse_kubernetes(
        {
            "pod": "db-1",
            "namespace": "prod",
            "role_label": "example.com/role",
            "api_url": "https://10.0.0.1:6443",
            "token_file": "/run/token",
            "ca_file": "/run/ca.crt",
        },
        "pg-0",
    )
    assert full == KubernetesSettings(
        "db-1", "prod", "example.com/role", "https://10.0.0.1:6443", Path("/run/token"), Path("/run/ca.crt")
    )


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("pg-0", "kubernetes: expected a mapping"),
        ({"pods": "x"}, "kubernetes.pods: unknown setting"),
        ({"pod": "PG_0"}, "kubernetes.pod: 'PG_0' is not a pod name"),
        ({"namespace": "a.b"}, "kubernetes.namespace: 'a.b' is not a namespace name"),
        ({"role_label": "bad key!"}, "kubernetes.role_label"),
        ({"api_url": "10.0.0.1:6443"}, "kubernetes.api_url: '10.0.0.1:6443' must be an http(s):// URL"),
        ({"pod": 3}, "kubernetes.pod: expected a string"),
    ],
)
def test_bad_settings_name_the_field(raw: object, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse_kubernetes(raw, "pg-0")


def test_the_agent_config_carries_it() -> None:
    cfg = config_from_dict({**WITNESS, "kubernetes": {"namespace": "db"}})
    assert cfg.kubernetes == KubernetesSettings("w1", "db")
    with pytest.raises(ConfigError, match=r"kubernetes\.pod"):
        config_from_dict({**WITNESS, "kubernetes": {"pod": "-bad"}})
