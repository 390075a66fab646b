"""Configuration: every bad input is refused with a message naming the field and the fix."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from pgquorum.agent.config import ConfigError, Timing, config_from_dict, default_bin_dir, load_config, validate_timing


def good(**over: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "name": "pg1",
        "cluster": "main",
        "etcd_endpoints": ["http://127.0.0.1:2379"],
        "api_listen": "127.0.0.1:8008",
        "postgres": {"data_dir": "/var/lib/pgquorum/pg1", "bin_dir": default_bin_dir(), "port": 5433},
    }
    data.update(over)
    return data


def test_defaults_are_valid_and_fast() -> None:
    cfg = config_from_dict(good())
    assert cfg.timing == Timing()
    assert cfg.timing.ttl <= 3 and cfg.timing.fence_after() < cfg.timing.ttl
    assert cfg.api_url == "http://127.0.0.1:8008"
    assert cfg.postgres.port == 5433


@pytest.mark.parametrize(
    ("timing", "needle"),
    [
        ({"ttl": 3, "loop_wait": 2, "retry_timeout": 1}, "loop_wait + 2 * retry_timeout must be <= ttl"),
        ({"ttl": 20, "loop_wait": 1, "retry_timeout": 3}, None),  # Patroni's most aggressive: accepted
        ({"ttl": 3.5}, "whole seconds"),
        ({"ttl": 1, "loop_wait": 0.2, "retry_timeout": 0.2}, "at least 2 seconds"),
        ({"ttl": 3, "safety_margin": 2.5}, "safety_margin: must be < ttl - loop_wait"),
        ({"ttl": 3, "safety_margin": 0.1}, "safety_margin: must be >= 0.2"),
        ({"loop_wait": -1}, "timing.loop_wait: must be > 0"),
        ({"loop_wait": "soon"}, "timing.loop_wait: cannot use 'soon'"),
        ({"lease": 3}, "timing.lease: unknown setting"),
    ],
)
def test_timing_rules(timing: dict[str, Any], needle: str | None) -> None:
    if needle is None:
        config_from_dict(good(timing=timing))
        return
    with pytest.raises(ConfigError, match=needle.replace("+", r"\+").replace("*", r"\*")):
        config_from_dict(good(timing=timing))


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"name": None}, "name: required"),
        ({"name": "Bad Name"}, "name: 'Bad Name' may only hold"),
        ({"etcd_endpoints": []}, "etcd_endpoints: expected a list"),
        ({"etcd_endpoints": ["127.0.0.1:2379"]}, "is not an http"),
        ({"api_listen": "8008"}, "api_listen: '8008' must be host:port"),
        ({"postgres": {"data_dir": "/x", "port": 70000}}, "postgres.port: cannot use 70000"),
        ({"postgres": {"data_dir": "/x", "bin_dir": "/nowhere"}}, "postgres.bin_dir: /nowhere has no 'postgres'"),
        ({"postgres": {"port": 5432}}, "postgres.data_dir: required"),
        ({"postgres": {"data_dir": "/x", "colour": "blue"}}, "postgres.colour: unknown setting"),
        ({"ttl": 3}, "ttl: unknown setting"),
        ({"nofailover": "yes"}, "nofailover: expected true or false"),
    ],
)
def test_bad_fields_are_named(change: dict[str, Any], needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        config_from_dict(good(**change))


def test_load_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read it"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_validate_timing_directly() -> None:
    validate_timing(Timing())
    with pytest.raises(ConfigError):
        validate_timing(Timing(ttl=2, loop_wait=1, retry_timeout=1))


def test_a_wildcard_listen_host_needs_the_host_others_connect_to(tmp_path: Path) -> None:
    base = {
        "name": "pg-0",
        "cluster": "main",
        "etcd_endpoints": ["http://127.0.0.1:2379"],
        "api_listen": "0.0.0.0:8008",
        "postgres": {"data_dir": str(tmp_path), "listen_host": "0.0.0.0"},
    }
    with pytest.raises(ConfigError, match=r"postgres\.connect_host: required when listen_host is '0\.0\.0\.0'"):
        config_from_dict(base)
    cfg = config_from_dict({**base, "postgres": {**base["postgres"], "connect_host": "pg-0.main.db.svc"}})  # type: ignore[dict-item]
    assert cfg.postgres.advertised_host == "pg-0.main.db.svc"
    assert config_from_dict({**base, "postgres": {"data_dir": str(tmp_path)}}).postgres.advertised_host == "127.0.0.1"


def test_the_advertised_host_comes_from_the_environment_when_named() -> None:
    from pgquorum.agent.config import with_advertised_host

    data = good(api_listen="0.0.0.0:8008", api_url="http://pg1.db.ns.svc:8008", advertise_host_env="POD_IP")
    data["postgres"] = {**data["postgres"], "listen_host": "0.0.0.0", "connect_host": "pg1.db.ns.svc"}
    cfg = with_advertised_host(config_from_dict(data), {"POD_IP": "10.244.1.7"})
    assert cfg.api_url == "http://10.244.1.7:8008" and cfg.postgres.connect_host == "10.244.1.7"
    v6 = with_advertised_host(config_from_dict(data), {"POD_IP": "fd00::7"})
    assert v6.api_url == "http://[fd00::7]:8008" and v6.postgres.connect_host == "fd00::7"
    # not named: nothing read from the environment
    plain = config_from_dict(good())
    assert with_advertised_host(plain, {"POD_IP": "10.0.0.1"}) == plain


@pytest.mark.parametrize(
    ("environ", "var", "says"),
    [
        ({}, "POD_IP", "advertise_host_env: the environment variable POD_IP is unset or empty"),
        ({"POD_IP": " "}, "POD_IP", "unset or empty"),
        ({"POD_IP": "a/b"}, "POD_IP", "'a/b'"),
        ({}, "POD-IP", "not an environment variable name"),
    ],
)
def test_a_missing_advertised_host_is_refused_naming_the_setting(environ: dict[str, str], var: str, says: str) -> None:
    from pgquorum.agent.config import with_advertised_host

    with pytest.raises(ConfigError, match=re.escape(says)):
        with_advertised_host(config_from_dict(good(advertise_host_env=var)), environ)
