"""render_agent_config: what a launcher renders, the agent's loader accepts and reads back as given."""

from __future__ import annotations

import re
import stat
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import yaml

from pgquorum.agent.config import (
    WITNESS_POSTGRES,
    AgentConfig,
    ApiSettings,
    ConfigError,
    PostgresSettings,
    SyncSettings,
    Timing,
    config_from_dict,
    default_bin_dir,
    load_config,
)
from pgquorum.agent.config_render import (
    WITNESS,
    ClusterSettings,
    DataMember,
    MemberSettings,
    render_agent_config,
    write_agent_config,
)
from pgquorum.agent.podrole import KubernetesSettings
from pgquorum.agent.stonith import parse_hooks
from pgquorum.agent.watchdog import WatchdogConfig, WatchdogMode

CLUSTER = ClusterSettings(
    cluster="main",
    etcd_endpoints=("http://10.0.0.14:2379", "http://10.0.0.15:2379"),
    api=ApiSettings(auth_token_file=Path("/srv/pgq/secrets/api-token")),
)
POSTGRES = PostgresSettings(
    data_dir=Path("/srv/pgq/pg1/pgdata"),
    bin_dir=Path(default_bin_dir()),
    listen_host="10.0.0.11",
    port=5433,
    superuser_password_file=Path("/srv/pgq/secrets/superuser"),
    replication_password_file=Path("/srv/pgq/secrets/replication"),
    parameters={"shared_buffers": "32MB", "max_connections": "50"},
)


def data_member(**role: Any) -> MemberSettings:
    return MemberSettings("pg1", "10.0.0.11:8008", DataMember(POSTGRES, **role))


def load(cluster: ClusterSettings, member: MemberSettings) -> AgentConfig:
    """Through YAML text, as the agent reads it."""
    return config_from_dict(yaml.safe_load(yaml.safe_dump(render_agent_config(cluster, member), sort_keys=False)))


def test_data_member_round_trip() -> None:
    cfg = load(CLUSTER, data_member())
    assert (cfg.name, cfg.cluster, cfg.witness) == ("pg1", "main", False)
    assert cfg.etcd_endpoints == CLUSTER.etcd_endpoints
    assert (cfg.api_listen, cfg.api_url) == ("10.0.0.11:8008", "http://10.0.0.11:8008")
    assert cfg.api == CLUSTER.api
    assert cfg.postgres == POSTGRES
    assert cfg.timing == Timing()
    assert cfg.synchronous == SyncSettings() and cfg.quorum_votes and cfg.stonith == ()
    assert cfg.watchdog == WatchdogConfig()


def test_defaults_are_left_to_the_agent_and_timing_is_written_in_full() -> None:
    doc = render_agent_config(CLUSTER, data_member())
    assert doc["postgres"] == {
        "data_dir": "/srv/pgq/pg1/pgdata",
        "bin_dir": default_bin_dir(),
        "listen_host": "10.0.0.11",
        "port": 5433,
        "superuser_password_file": "/srv/pgq/secrets/superuser",
        "replication_password_file": "/srv/pgq/secrets/replication",
        "parameters": {"shared_buffers": "32MB", "max_connections": "50"},
    }
    assert doc["timing"] == {"ttl": 3.0, "loop_wait": 1.0, "retry_timeout": 1.0, "safety_margin": 0.5}
    assert not {"synchronous", "quorum_votes", "stonith", "watchdog", "api_url", "etcd_prefix"} & set(doc)


def test_witness_round_trip() -> None:
    member = MemberSettings("w1", "10.0.0.17:8008", WITNESS)
    doc = render_agent_config(CLUSTER, member)
    assert doc == {
        "name": "w1",
        "cluster": "main",
        "witness": True,
        "etcd_endpoints": ["http://10.0.0.14:2379", "http://10.0.0.15:2379"],
        "api_listen": "10.0.0.17:8008",
        "api": {"auth_token_file": "/srv/pgq/secrets/api-token"},
        "timing": {"ttl": 3.0, "loop_wait": 1.0, "retry_timeout": 1.0, "safety_margin": 0.5},
    }
    cfg = load(CLUSTER, member)
    assert cfg.witness and cfg.quorum_votes and cfg.postgres == WITNESS_POSTGRES


def test_quorum_commit_and_lease_only_mode() -> None:
    sync = SyncSettings(mode="quorum", k=2, durability="preferred")
    assert load(CLUSTER, data_member(synchronous=sync)).synchronous == sync
    cfg = load(replace(CLUSTER, quorum_votes=False), data_member())
    assert cfg.quorum_votes is False


def test_stonith_hooks_round_trip() -> None:
    hooks = parse_hooks(
        [
            # placeholders in the command: the loader would turn append_args off unless it is written out
            {"type": "exec", "name": "gate", "command": ["/bin/fence", "{old_leader}"], "append_args": True},
            {"type": "exec", "command": "/bin/audit --all", "env": {"SITE": "b"}, "policy": "best-effort"},
            {"type": "webhook", "url": "https://fencer.example/fence", "token_file": "/srv/token", "timeout": 2},
            {"type": "local-kill", "data_dir": "/srv/pgq"},
            {"type": "kubernetes", "namespace": "db", "taint_node": True},
        ]
    )
    assert load(CLUSTER, data_member(stonith=hooks)).stonith == hooks


def test_custom_timing_round_trip() -> None:
    timing = Timing(ttl=30, loop_wait=10, retry_timeout=10, safety_margin=2)
    assert load(replace(CLUSTER, timing=timing), data_member()).timing == timing


def test_pod_settings_round_trip() -> None:
    """What the operator renders: every address, an etcd prefix, the pod, a watchdog."""
    pg = replace(POSTGRES, listen_host="0.0.0.0", connect_host="pg-1.pg.db.svc", maximum_lag_on_failover=0)
    watchdog = WatchdogConfig(mode=WatchdogMode.AUTOMATIC, timeout=2)
    member = MemberSettings(
        "pg-1",
        "0.0.0.0:8008",
        DataMember(pg, nofailover=True, watchdog=watchdog),
        api_url="http://pg-1.pg.db.svc:8008",
        kubernetes=KubernetesSettings(pod="pg-1", namespace="db"),
    )
    cfg = load(replace(CLUSTER, etcd_prefix="pgq-db", log_level="DEBUG"), member)
    assert cfg.postgres == pg and cfg.nofailover and cfg.watchdog == watchdog
    assert cfg.api_url == "http://pg-1.pg.db.svc:8008"
    assert cfg.kubernetes == KubernetesSettings(pod="pg-1", namespace="db")
    assert (cfg.etcd_prefix, cfg.log_level) == ("pgq-db", "DEBUG")


@pytest.mark.parametrize(
    ("cluster", "member", "needle"),
    [
        (CLUSTER, replace(data_member(), name=""), "name: required setting is missing"),
        (
            replace(CLUSTER, timing=Timing(ttl=3, loop_wait=2, retry_timeout=1)),
            data_member(),
            "timing: loop_wait + 2 * retry_timeout must be <= ttl",
        ),
        (replace(CLUSTER, etcd_endpoints=()), data_member(), "etcd_endpoints: expected a list"),
        (
            replace(CLUSTER, quorum_votes=False),
            MemberSettings("w1", "10.0.0.17:8008", WITNESS),
            "quorum_votes: a witness only exists to vote",
        ),
    ],
)
def test_bad_input_fails_with_the_loaders_message(
    cluster: ClusterSettings, member: MemberSettings, needle: str
) -> None:
    with pytest.raises(ConfigError, match=re.escape(needle)):
        load(cluster, member)


def test_write_validates_first_then_writes_a_private_file(tmp_path: Path) -> None:
    path = tmp_path / "agent.yaml"
    with pytest.raises(ConfigError, match="name: required setting is missing"):
        write_agent_config(path, render_agent_config(CLUSTER, replace(data_member(), name="")))
    assert not path.exists()
    write_agent_config(path, render_agent_config(CLUSTER, data_member()))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_config(path) == load(CLUSTER, data_member())
