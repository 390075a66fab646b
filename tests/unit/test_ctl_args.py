"""ctl argument validation: where the cluster is, credentials, options before/after the command."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import pytest

from pgquorum.ctl.client import ApiClient, Auth, CtlError, UsageError, normalize_url
from pgquorum.ctl.discovery import load_auth, resolve_target
from pgquorum.ctl.main import build_parser, run


def ctl(capsys: pytest.CaptureFixture[str], *argv: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    try:
        rc = run(build_parser().parse_args(argv), env=env or {})
    except SystemExit as exc:
        rc = int(exc.code or 0)
    out, err = capsys.readouterr()
    return rc, out, err


def one_line(err: str) -> str:
    lines = err.splitlines()
    assert len(lines) == 1, f"expected one stderr line, got {lines!r}"
    assert "Traceback" not in err
    return lines[0]


def test_common_options_work_before_and_after_the_command() -> None:
    p = build_parser()
    a = p.parse_args(["--api", "h:1", "--json", "list"])
    b = p.parse_args(["list", "--api", "h:1", "--json"])
    c = p.parse_args(["config", "set", "ttl=5", "--api", "h:1", "--timeout", "2"])
    for args in (a, b):
        assert (args.api, args.json, args.ctl_command, args.timeout) == ("h:1", True, "list", 5.0)
    assert (c.api, c.timeout, c.assignments) == ("h:1", 2.0, ["ttl=5"])
    # an option after the command overrides the same option before it
    assert p.parse_args(["--timeout", "1", "list", "--timeout", "3"]).timeout == 3.0
    # defaults survive when given neither before nor after
    d = p.parse_args(["history"])
    assert (d.api, d.local, d.json, d.data_dir) == (None, False, False, None)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["failover"], "the following arguments are required: --candidate"),
        (["restart"], "the following arguments are required: MEMBER"),
        (["config"], "required: ACTION"),
        (["config", "set"], "the following arguments are required: KEY=VALUE"),
        (["--timeout", "0", "list"], "must be > 0"),
        (["--timeout", "soon", "list"], "expected seconds"),
        (["bogus"], "invalid choice"),
        (["switchover", "--bogus"], "unrecognized arguments"),
    ],
)
def test_usage_errors_are_one_line_exit_2(capsys: pytest.CaptureFixture[str], argv: list[str], message: str) -> None:
    rc, out, err = ctl(capsys, *argv)
    assert rc == 2 and out == ""
    line = one_line(err)
    assert message in line and line.startswith("pgquorumctl")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--api", "h:1", "--local", "list"], "--api and --local: choose one"),
        (["--api", "h:1", "--etcd", "http://e:1", "--cluster", "c", "list"], "--api and --etcd"),
        (["--cluster", "c", "list"], "--cluster is only used with --etcd"),
        (["--prefix", "p", "--api", "h:1", "list"], "--prefix is only used with --etcd"),
        (["--data-dir", "/x", "list"], "--data-dir is only used with --local"),
        (["--etcd", "http://e:1", "list"], "--etcd needs --cluster"),
        (["--etcd", "ftp://e:1", "--cluster", "c", "list"], "--etcd 'ftp://e:1': expected http(s)://host:port"),
        (["--api", ",", "list"], "--api: expected URL"),
        (["--api", "http://h:99999", "list"], "expected http(s)://host:port"),
        (["list"], "which cluster?"),
        (["--api", "h:1", "--token-file", "/t", "--user", "u", "list"], "choose one way to authenticate"),
        (["--api", "h:1", "--user", "u", "list"], "--user needs --password-file"),
        (["--api", "h:1", "--password-file", "/p", "list"], "--password-file needs --user"),
    ],
)
def test_discovery_and_auth_errors_exit_2(capsys: pytest.CaptureFixture[str], argv: list[str], message: str) -> None:
    rc, out, err = ctl(capsys, *argv)
    assert rc == 2 and out == ""
    assert message in one_line(err)


def test_missing_secret_files_exit_1(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    rc, _, err = ctl(capsys, "--api", "h:1", "--token-file", str(tmp_path / "nope"), "list")
    assert rc == 1 and "--token-file" in one_line(err) and "cannot read it" in err
    (tmp_path / "empty").write_text("\n")
    rc, _, err = ctl(capsys, "--api", "h:1", "--token-file", str(tmp_path / "empty"), "list")
    assert rc == 1 and "the file is empty" in one_line(err)


def test_confirmation_needs_a_terminal_or_force(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("y\n"))  # not a TTY: never read
    for argv in (
        ["switchover"],
        ["switchover", "--candidate", "pg2"],
        ["failover", "--candidate", "pg2"],
        ["restart", "pg1"],
        ["reinit", "pg2"],
    ):
        # the URL does not exist: the check happens before any request
        rc, out, err = ctl(capsys, "--api", "http://127.0.0.1:1", *argv)
        assert rc == 2 and out == ""
        line = one_line(err)
        assert "stdin is not a terminal" in line and "--force" in line, line


def test_config_edit_without_editor_or_terminal(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    rc, _, err = ctl(capsys, "--api", "http://127.0.0.1:1", "config", "edit")
    assert rc == 2 and "use 'config set KEY=VALUE ...'" in one_line(err)


def test_env_api_and_flags_precedence(tmp_path: Path) -> None:
    env = {"PGQUORUM_API": "http://a:1, b:2"}
    t = resolve_target(None, None, None, None, False, None, env, 1.0)
    assert t.urls == ("http://a:1", "b:2") and t.how == "$PGQUORUM_API"
    t = resolve_target("http://c:3", None, None, None, False, None, env, 1.0)
    assert t.urls == ("http://c:3",)
    assert ApiClient(["b:2/", "http://b:2", "https://x"]).urls == ["http://b:2", "https://x"]


def test_local_target_reads_cluster_json_and_token(tmp_path: Path) -> None:
    state = {
        "cluster": "local",
        "run_as": "postgres",
        "etcd_client_port": 1,
        "etcd_peer_port": 2,
        "members": [{"name": "pg1", "pg_port": 5, "api_port": 8008}, {"name": "pg2", "pg_port": 6, "api_port": 8009}],
    }
    (tmp_path / "cluster.json").write_text(json.dumps(state))
    t = resolve_target(None, None, None, None, True, tmp_path, {}, 1.0)
    assert t.urls == ("http://127.0.0.1:8008", "http://127.0.0.1:8009")
    assert t.cluster_name == "local" and t.local_token == tmp_path / "secrets" / "api-token"
    assert load_auth(None, None, None, {}, t.local_token) == Auth()  # no token file yet
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "api-token").write_text("s3cret\n")
    auth = load_auth(None, None, None, {}, t.local_token)
    assert auth.header() == "Bearer s3cret"
    # an explicit token wins over the local one
    (tmp_path / "mine").write_text("mine")
    assert load_auth(tmp_path / "mine", None, None, {}, t.local_token).token == "mine"
    with pytest.raises(CtlError, match="no local cluster in"):
        resolve_target(None, None, None, None, True, tmp_path / "missing", {}, 1.0)


def test_auth_sources(tmp_path: Path) -> None:
    (tmp_path / "tok").write_text("abc\n")
    (tmp_path / "pw").write_text("p:w\n")
    assert load_auth(None, None, None, {"PGQUORUM_TOKEN_FILE": str(tmp_path / "tok")}).token == "abc"
    basic = load_auth(None, "admin", tmp_path / "pw", {"PGQUORUM_TOKEN_FILE": str(tmp_path / "tok")})
    assert basic.header() == "Basic YWRtaW46cDp3"  # admin:p:w
    assert basic.source.startswith("--user admin")
    with pytest.raises(UsageError):
        load_auth(tmp_path / "tok", "admin", tmp_path / "pw", {})
    if os.geteuid() != 0:  # root reads anything
        (tmp_path / "locked").write_text("x")
        (tmp_path / "locked").chmod(0)
        assert load_auth(None, None, None, {}, tmp_path / "locked") == Auth()


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("127.0.0.1:8008", "http://127.0.0.1:8008"),
        ("http://h:1/", "http://h:1"),
        ("https://h", "https://h"),
        (" http://[::1]:8008 ", "http://[::1]:8008"),
    ],
)
def test_normalize_url(url: str, expected: str) -> None:
    assert normalize_url(url) == expected


@pytest.mark.parametrize("url", ["", "ftp://h:1", "http://", "http://h:0", "http://h:port"])
def test_normalize_url_rejects(url: str) -> None:
    with pytest.raises(UsageError):
        normalize_url(url)
