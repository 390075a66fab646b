"""API authentication: bearer token or HTTP Basic from secret files; 401 vs 403; secure by default."""

from __future__ import annotations

import base64
import logging
import os
from pathlib import Path

import pytest

from pgquorum.agent.api.auth import Authenticator, SecretFile
from pgquorum.agent.config import ApiSettings, ConfigError

TOKEN = "tok-0123456789abcdef-XYZ"
PASSWORD = "correct horse battery staple"


def secret(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text + "\n")
    path.chmod(0o600)
    return path


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@pytest.fixture
def both(tmp_path: Path) -> Authenticator:
    return Authenticator.from_settings(
        ApiSettings(
            auth_token_file=secret(tmp_path, "token", TOKEN),
            username="admin",
            password_file=secret(tmp_path, "password", PASSWORD),
        )
    )


def test_nothing_configured_refuses_everything_with_a_hint() -> None:
    auth = Authenticator.from_settings(ApiSettings())
    assert not auth.configured
    for header in (None, f"Bearer {TOKEN}", basic("admin", PASSWORD)):
        result = auth.check(header)
        assert result.status == 403
        assert result.error is not None and "set api.auth_token_file" in result.error


def test_bearer_token(both: Authenticator) -> None:
    ok = both.check(f"Bearer {TOKEN}")
    assert ok.ok and ok.principal == "token"
    assert both.check(f"bearer   {TOKEN}  ").ok  # scheme is case-insensitive; spaces tolerated
    wrong = both.check(f"Bearer {TOKEN}x")
    assert wrong.status == 403 and wrong.error == "invalid credentials"
    assert both.check("Bearer " + TOKEN[:-1]).status == 403


def test_basic_auth(both: Authenticator) -> None:
    ok = both.check(basic("admin", PASSWORD))
    assert ok.ok and ok.principal == "user:admin"
    assert both.check(basic("admin", PASSWORD + "!")).status == 403
    assert both.check(basic("root", PASSWORD)).status == 403
    assert both.check("Basic " + base64.b64encode(b"admin").decode()).status == 403  # no colon
    assert both.check("Basic %%%not-base64").status == 403
    assert both.check("Basic " + base64.b64encode(b"\xff:\xfe").decode()).status == 403


@pytest.mark.parametrize("header", [None, "", "   ", "Bearer", "Bearer   ", "Digest abc", "Negotiate xyz", TOKEN])
def test_missing_or_unsupported_credentials_are_401_with_challenges(both: Authenticator, header: str | None) -> None:
    result = both.check(header)
    assert result.status == 401
    assert result.error is not None and TOKEN not in result.error
    assert both.challenges() == ['Bearer realm="pgquorum"', 'Basic realm="pgquorum", charset="UTF-8"']


def test_only_the_configured_scheme_is_accepted(tmp_path: Path) -> None:
    token_only = Authenticator.from_settings(ApiSettings(auth_token_file=secret(tmp_path, "t", TOKEN)))
    assert token_only.challenges() == ['Bearer realm="pgquorum"']
    assert token_only.check(basic("admin", PASSWORD)).status == 401
    basic_only = Authenticator.from_settings(
        ApiSettings(username="admin", password_file=secret(tmp_path, "p", PASSWORD))
    )
    assert basic_only.check(f"Bearer {TOKEN}").status == 401
    assert basic_only.check(basic("admin", PASSWORD)).ok


def test_secret_files_are_checked_at_start(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"api.auth_token_file: cannot read .*missing"):
        Authenticator.from_settings(ApiSettings(auth_token_file=tmp_path / "missing"))
    with pytest.raises(ConfigError, match=r"api\.auth_token_file: .* is empty"):
        Authenticator.from_settings(ApiSettings(auth_token_file=secret(tmp_path, "empty", "  ")))
    with pytest.raises(ConfigError, match="shorter than 16 characters") as info:
        Authenticator.from_settings(ApiSettings(auth_token_file=secret(tmp_path, "short", "abc123")))
    assert "abc123" not in str(info.value)
    with pytest.raises(ConfigError, match=r"api\.password_file: cannot read"):
        Authenticator.from_settings(ApiSettings(username="admin", password_file=tmp_path / "nope"))


def test_rotation_and_fail_closed(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = secret(tmp_path, "token", TOKEN)
    auth = Authenticator(SecretFile(path, "api.auth_token_file", 16))
    assert auth.check(f"Bearer {TOKEN}").ok
    new = "rotated-" + TOKEN
    path.write_text(new + "\n")
    os.utime(path, ns=(1, 1))  # make sure the stamp differs even within one mtime tick
    assert auth.check(f"Bearer {new}").ok
    assert auth.check(f"Bearer {TOKEN}").status == 403
    path.unlink()
    with caplog.at_level(logging.INFO, logger="pgquorum.api"):
        assert auth.check(f"Bearer {new}").status == 403  # unreadable: refuse, never fall back
        assert auth.check(f"Bearer {new}").status == 403
    assert [r.getMessage() for r in caplog.records].count(
        "API secret unusable: refusing mutating requests until it is fixed"
    ) == 1
    path.write_text(new)
    assert auth.check(f"Bearer {new}").ok
    for record in caplog.records:
        assert new not in str(record.__dict__) and TOKEN not in str(record.__dict__)


def test_secret_is_kept_only_as_a_digest(tmp_path: Path) -> None:
    holder = SecretFile(secret(tmp_path, "token", TOKEN), "api.auth_token_file", 16)
    assert TOKEN.encode() not in repr(vars(holder)).encode()


def test_world_readable_secret_file_is_warned_about(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = secret(tmp_path, "token", TOKEN)
    path.chmod(0o644)
    with caplog.at_level(logging.WARNING, logger="pgquorum.api"):
        SecretFile(path, "api.auth_token_file", 16)
    assert any(getattr(r, "event", None) == "api_secret_permissions" for r in caplog.records)
