"""The ``api`` section of the agent configuration (ApiSettings): fields named in every error."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pgquorum.agent.config import ApiSettings, ConfigError, config_from_dict, default_bin_dir


def good(**over: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "name": "pg1",
        "cluster": "main",
        "etcd_endpoints": ["http://127.0.0.1:2379"],
        "api_listen": "127.0.0.1:8008",
        "postgres": {"data_dir": "/var/lib/pgquorum/pg1", "bin_dir": default_bin_dir()},
    }
    data.update(over)
    return data


def test_default_is_no_auth() -> None:
    cfg = config_from_dict(good())
    assert cfg.api == ApiSettings()
    assert config_from_dict(good(api=None)).api == ApiSettings()


def test_token_and_basic() -> None:
    cfg = config_from_dict(good(api={"auth_token_file": "/etc/pgquorum/token"}))
    assert cfg.api.auth_token_file == Path("/etc/pgquorum/token")
    cfg = config_from_dict(good(api={"username": "admin", "password_file": "/etc/pgquorum/pw"}))
    assert cfg.api.username == "admin" and cfg.api.password_file == Path("/etc/pgquorum/pw")
    assert cfg.api_listen == "127.0.0.1:8008" and cfg.api_url == "http://127.0.0.1:8008"


@pytest.mark.parametrize(
    ("api", "needle"),
    [
        ("token", "api: expected a mapping"),
        ({"token_file": "/x"}, "api.token_file: unknown setting"),
        ({"auth_token_file": 5}, "api.auth_token_file: expected a non-empty string"),
        ({"auth_token_file": ""}, "api.auth_token_file: expected a non-empty string"),
        ({"username": "admin"}, "api.password_file: required when api.username is set"),
        ({"password_file": "/x"}, "api.username: required when api.password_file is set"),
        ({"username": "ad:min", "password_file": "/x"}, "api.username: 'ad:min' may not contain ':'"),
        ({"username": ["a"], "password_file": "/x"}, "api.username: expected a non-empty string"),
    ],
)
def test_bad_api_settings_name_the_field(api: Any, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        config_from_dict(good(api=api))
