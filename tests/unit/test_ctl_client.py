"""ctl commands against an in-process stub of the REST API contract (HTTP on loopback, no cluster).

Covers what the client decides by itself: which URL to try next, when a change is in doubt, what
is sent (bodies, credentials), what is printed (stdout, the one stderr line, warnings).
"""

from __future__ import annotations

import io
import json
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from pgquorum.ctl.main import build_parser, run

Handler = Callable[["Seen"], tuple[int, Any]]


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: Any


class Stub:
    """A tiny API: ``routes[(method, path)]`` is ``(status, body)`` or a function of the request."""

    def __init__(self) -> None:
        self.routes: dict[tuple[str, str], tuple[int, Any] | Handler] = {}
        self.seen: list[Seen] = []
        stub = self

        class H(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                req = Seen(self.command, self.path, dict(self.headers), json.loads(raw) if raw else None)
                stub.seen.append(req)
                route = stub.routes.get((self.command, self.path), (404, {"error": f"no route {self.path}"}))
                status, body = route(req) if callable(route) else route
                data = body if isinstance(body, bytes) else json.dumps(body).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except OSError:
                    pass

            do_GET = do_POST = do_PATCH = _handle

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.httpd.daemon_threads = True
        threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def calls(self, method: str | None = None) -> list[Seen]:
        return [s for s in self.seen if method is None or s.method == method]

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def stubs() -> Iterator[list[Stub]]:
    made = [Stub(), Stub()]
    yield made
    for s in made:
        s.close()


def dead_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def ctl(capsys: pytest.CaptureFixture[str], *argv: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    try:
        rc = run(build_parser().parse_args(argv), env=env or {})
    except SystemExit as exc:
        rc = int(exc.code or 0)
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return rc, out, err


def one_line(err: str) -> str:
    lines = err.splitlines()
    assert len(lines) == 1, f"expected one stderr line, got {lines!r}"
    return lines[0]


def cluster_body(member_urls: dict[str, str]) -> dict[str, Any]:
    members = [
        {
            "name": name,
            "role": "leader" if i == 0 else "replica",
            "state": "running" if i == 0 else "streaming",
            "term": 3,
            "timeline": 2,
            "lsn": 1000,
            "lag_bytes": 0 if i == 0 else 2048,
            "api_url": url,
            "conn_url": f"postgres://127.0.0.1:{5432 + i}/postgres",
            "nofailover": False,
        }
        for i, (name, url) in enumerate(member_urls.items())
    ]
    return {"leader": "pg1", "term": 3, "initialized": True, "members": members}


# -- reads and URL fallback --------------------------------------------------------------------------


def test_list_human_and_json_skip_a_dead_url(capsys: pytest.CaptureFixture[str], stubs: list[Stub]) -> None:
    a = stubs[0]
    body = cluster_body({"pg1": a.url, "pg2": "http://127.0.0.1:2"})
    a.routes[("GET", "/cluster")] = (200, body)
    rc, out, err = ctl(capsys, "--api", f"{dead_url()},{a.url}", "list")
    assert rc == 0 and err == ""
    lines = out.splitlines()
    assert lines[0] == "cluster: leader pg1, term 3"
    assert lines[2].split()[:3] == ["pg1", "leader", "running"]
    assert lines[3].split() == ["pg2", "replica", "streaming", "3", "2", "2", "KiB", "127.0.0.1:5433"]
    rc, out, _ = ctl(capsys, "list", "--json", "--api", a.url)
    assert rc == 0 and json.loads(out) == body


def test_503_and_error_bodies_move_on_to_the_next_member(capsys: pytest.CaptureFixture[str], stubs: list[Stub]) -> None:
    a, b = stubs
    a.routes[("GET", "/cluster")] = (200, {"error": "etcd unreachable from this member", "members": []})
    a.routes[("GET", "/history")] = (503, {"error": "etcd unreachable"})
    b.routes[("GET", "/cluster")] = (200, cluster_body({"pg1": b.url}))
    b.routes[("GET", "/history")] = (200, {"history": []})
    rc, out, _ = ctl(capsys, "--api", f"{a.url},{b.url}", "list")
    assert rc == 0 and "leader pg1" in out
    rc, out, _ = ctl(capsys, "--api", f"{a.url},{b.url}", "history")
    assert rc == 0 and out.strip() == "no leadership changes recorded"
    assert len(a.calls()) == 2


def test_nobody_answers_one_line_with_every_url(capsys: pytest.CaptureFixture[str], stubs: list[Stub]) -> None:
    a = stubs[0]
    a.routes[("GET", "/cluster")] = (503, {"error": "not ready", "field": None})
    dead = dead_url()
    rc, out, err = ctl(capsys, "--api", f"{dead},{a.url}", "list")
    assert rc == 1 and out == ""
    line = one_line(err)
    assert line == (
        f"pgquorumctl: GET /cluster: no member API answered; tried {dead} (connection refused); "
        f"{a.url} (HTTP 503: not ready)"
    )


def test_a_slow_get_moves_on_but_a_slow_post_is_in_doubt(capsys: pytest.CaptureFixture[str], stubs: list[Stub]) -> None:
    a, b = stubs

    def slow(req: Seen) -> tuple[int, Any]:
        time.sleep(1.0)
        return 200, {"message": "late"}

    a.routes[("GET", "/history")] = slow
    a.routes[("POST", "/failover")] = slow
    b.routes[("GET", "/history")] = (200, {"history": []})
    b.routes[("POST", "/failover")] = (200, {"message": "done"})
    urls = f"{a.url},{b.url}"
    rc, _, _ = ctl(capsys, "--api", urls, "--timeout", "0.3", "history")
    assert rc == 0
    rc, out, err = ctl(
        capsys, "--api", urls, "--timeout", "0.3", "--wait-timeout", "0.3", "failover", "--candidate", "pg2", "--force"
    )
    assert rc == 1 and out == ""
    line = one_line(err)
    assert f"POST {a.url}/failover: no answer within 0.3s" in line and "may or may not have been applied" in line
    assert b.calls("POST") == [], "a change in doubt must not be sent to another member"


def test_history_table_and_json_passthrough(capsys: pytest.CaptureFixture[str], stubs: list[Stub]) -> None:
    a = stubs[0]
    entry = {
        "term": 1,
        "timeline": 1,
        "new_leader": "pg1",
        "old_leader": None,
        "reason": "bootstrap",
        "at": 1_700_000_000.0,
        "durations": {},
        "future_field": 1,
    }
    a.routes[("GET", "/history")] = (200, {"history": [entry]})
    rc, out, _ = ctl(capsys, "--api", a.url, "history")
    assert rc == 0 and out.splitlines()[1].split()[:2] == ["1", "1"] and "bootstrap" in out
    rc, out, _ = ctl(capsys, "--api", a.url, "history", "--json")
    assert json.loads(out) == {"history": [entry]}


def test_malformed_answers_are_one_line(capsys: pytest.CaptureFixture[str], stubs: list[Stub]) -> None:
    a = stubs[0]
    a.routes[("GET", "/cluster")] = (200, {"members": "x"})
    a.routes[("GET", "/history")] = (200, b"<html>hello</html>")
    rc, _, err = ctl(capsys, "--api", a.url, "list")
    assert rc == 1 and "unexpected answer: 'members' is not a list of objects" in one_line(err)
    rc, _, err = ctl(capsys, "--api", a.url, "history")
    assert rc == 1 and "not a JSON object" in one_line(err)


# -- changes -----------------------------------------------------------------------------------------


def test_switchover_force_sends_the_contract_body_with_the_token(
    capsys: pytest.CaptureFixture[str], stubs: list[Stub], tmp_path: Path
) -> None:
    a = stubs[0]
    a.routes[("POST", "/switchover")] = (
        200,
        {"message": "switched over to pg2 (term 4)", "details": {"term": 4, "took": "1.2s"}},
    )
    (tmp_path / "token").write_text("t0ken\n")
    rc, out, err = ctl(
        capsys, "--api", a.url, "switchover", "--candidate", "pg2", "--force", "--token-file", str(tmp_path / "token")
    )
    assert rc == 0 and err == ""
    assert out.splitlines() == ["switched over to pg2 (term 4)", "  term: 4", "  took: 1.2s"]
    (post,) = a.calls("POST")
    assert post.body == {"candidate": "pg2", "scheduled_at": None, "wait": True}
    assert post.headers["Authorization"] == "Bearer t0ken"
    assert post.headers["Content-Type"] == "application/json"


def test_scheduled_switchover_sends_utc_iso_and_does_not_wait(
    capsys: pytest.CaptureFixture[str], stubs: list[Stub]
) -> None:
    a = stubs[0]
    a.routes[("POST", "/switchover")] = (202, {"message": "switchover scheduled"})
    rc, out, _ = ctl(capsys, "--api", a.url, "switchover", "--scheduled", "2099-06-01T03:00+02:00", "--force")
    assert rc == 0 and out.strip() == "accepted: switchover scheduled"
    assert a.calls("POST")[0].body == {"candidate": None, "scheduled_at": "2099-06-01T01:00:00+00:00", "wait": False}
    rc, out, _ = ctl(capsys, "--api", a.url, "switchover", "--no-wait", "--force", "--json")
    assert json.loads(out) == {"message": "switchover scheduled"}
    assert a.calls("POST")[1].body == {"candidate": None, "scheduled_at": None, "wait": False}


def test_interactive_confirmation(
    capsys: pytest.CaptureFixture[str], stubs: list[Stub], monkeypatch: pytest.MonkeyPatch
) -> None:
    a = stubs[0]
    a.routes[("GET", "/cluster")] = (200, cluster_body({"pg1": a.url, "pg2": a.url}))
    a.routes[("POST", "/switchover")] = (200, {"message": "ok"})
    monkeypatch.setattr(sys, "stdin", Tty("n\n"))
    rc, out, err = ctl(capsys, "--api", a.url, "switchover", "--candidate", "pg2")
    assert rc == 1 and out == ""
    assert "Switch over from leader pg1 (term 3) to pg2 (replica, lag 2 KiB) now? [y/N]" in err
    assert err.splitlines()[-1].endswith("switchover: not confirmed; nothing was changed")
    assert a.calls("POST") == []
    monkeypatch.setattr(sys, "stdin", Tty("yes\n"))
    rc, out, _ = ctl(capsys, "--api", a.url, "switchover", "--candidate", "pg2")
    assert rc == 0 and out.strip() == "ok" and len(a.calls("POST")) == 1


def test_failover_prints_the_warning_prominently(
    capsys: pytest.CaptureFixture[str], stubs: list[Stub], monkeypatch: pytest.MonkeyPatch
) -> None:
    a = stubs[0]
    a.routes[("GET", "/cluster")] = (200, cluster_body({"pg1": a.url, "pg2": a.url}))
    warning = "pg2 was 2048 bytes behind the last leader position: those writes are lost"
    a.routes[("POST", "/failover")] = (200, {"message": "pg2 is the leader (term 4)", "warning": warning})
    rc, out, err = ctl(capsys, "--api", a.url, "failover", "--candidate", "pg2", "--force")
    assert rc == 0 and out.strip() == "pg2 is the leader (term 4)"
    assert one_line(err) == f"WARNING: {warning}"
    assert a.calls("POST")[0].body == {"candidate": "pg2", "wait": True}
    # interactive: the prompt explains the risks first
    monkeypatch.setattr(sys, "stdin", Tty("y\n"))
    rc, _, err = ctl(capsys, "--api", a.url, "failover", "--candidate", "pg2", "--no-wait")
    assert rc == 0
    assert "'switchover' hands over without losing data" in err and "pg2 lags 2 KiB behind" in err
    assert a.calls("POST")[1].body == {"candidate": "pg2", "wait": False}


def test_refusals_show_error_field_and_status(capsys: pytest.CaptureFixture[str], stubs: list[Stub]) -> None:
    a = stubs[0]
    a.routes[("POST", "/failover")] = (409, {"error": "pg9 is not a member", "field": "candidate"})
    rc, out, err = ctl(capsys, "--api", a.url, "failover", "--candidate", "pg9", "--force")
    assert rc == 1 and out == ""
    assert one_line(err) == (
        f"pgquorumctl: refused by the cluster: pg9 is not a member (field: candidate) "
        f"(HTTP 409 from POST {a.url}/failover)"
    )


def test_auth_failures_hint_at_credentials(
    capsys: pytest.CaptureFixture[str], stubs: list[Stub], tmp_path: Path
) -> None:
    a = stubs[0]
    a.routes[("POST", "/switchover")] = (401, {"error": "authentication required"})
    rc, _, err = ctl(capsys, "--api", a.url, "switchover", "--force")
    assert rc == 1 and "--token-file PATH" in one_line(err)
    assert "Authorization" not in a.calls("POST")[0].headers
    (tmp_path / "pw").write_text("secret\n")
    rc, _, err = ctl(
        capsys, "--api", a.url, "switchover", "--force", "--user", "admin", "--password-file", str(tmp_path / "pw")
    )
    assert rc == 1 and "check the credentials from --user admin" in one_line(err)
    assert a.calls("POST")[1].headers["Authorization"] == "Basic YWRtaW46c2VjcmV0"


def test_an_agent_without_the_route(capsys: pytest.CaptureFixture[str], stubs: list[Stub]) -> None:
    a = stubs[0]
    html = b"<!DOCTYPE HTML><html><body><h1>Error response</h1><p>Error code: 501</p></body></html>"
    a.routes[("POST", "/failover")] = (501, html)
    rc, _, err = ctl(capsys, "--api", a.url, "failover", "--candidate", "pg2", "--force")
    assert rc == 1 and "does not support POST /failover" in one_line(err)


def test_restart_and_reinit_go_to_that_member_only(capsys: pytest.CaptureFixture[str], stubs: list[Stub]) -> None:
    a, b = stubs
    a.routes[("GET", "/cluster")] = (200, cluster_body({"pg1": a.url, "pg2": b.url}))
    b.routes[("POST", "/restart")] = (202, {"message": "restart requested"})
    b.routes[("POST", "/reinitialize")] = (409, {"error": "pg1 is the leader: reinitialize a replica"})
    rc, out, _ = ctl(capsys, "--api", a.url, "restart", "pg2", "--force")
    assert rc == 0 and out.strip() == "accepted: restart requested"
    assert a.calls("POST") == [] and b.calls("POST")[0].body == {}
    rc, _, err = ctl(capsys, "--api", a.url, "reinit", "pg2", "--force")
    assert rc == 1 and "reinitialize a replica" in one_line(err)
    rc, _, err = ctl(capsys, "--api", a.url, "restart", "pg7", "--force")
    assert rc == 1 and one_line(err) == "pgquorumctl: pg7: no such member in the cluster (members: pg1, pg2)"


# -- dynamic configuration -------------------------------------------------------------------------


@pytest.fixture
def config_api(stubs: list[Stub]) -> Stub:
    a = stubs[0]
    state: dict[str, Any] = {"ttl": 3, "loop_wait": 1, "postgresql": {"parameters": {"work_mem": "4MB"}}, "old": 1}

    def patch(req: Seen) -> tuple[int, Any]:
        def merge(target: dict[str, Any], p: dict[str, Any]) -> None:
            for k, v in p.items():
                if v is None:
                    target.pop(k, None)
                elif isinstance(v, dict) and isinstance(target.get(k), dict):
                    merge(target[k], v)
                else:
                    target[k] = v

        if req.body.get("ttl") == 0:
            return 400, {"error": "ttl must be >= 1", "field": "ttl"}
        merge(state, req.body)
        return 200, {"config": state}

    a.routes[("GET", "/config")] = lambda req: (200, {"config": state})
    a.routes[("PATCH", "/config")] = patch
    return a


def test_config_show(capsys: pytest.CaptureFixture[str], config_api: Stub) -> None:
    rc, out, _ = ctl(capsys, "--api", config_api.url, "config", "show")
    assert rc == 0 and out == "loop_wait: 1\nold: 1\npostgresql:\n  parameters:\n    work_mem: 4MB\nttl: 3\n"
    rc, out, _ = ctl(capsys, "--api", config_api.url, "config", "show", "--json")
    assert json.loads(out)["config"]["ttl"] == 3


def test_config_set(capsys: pytest.CaptureFixture[str], config_api: Stub) -> None:
    rc, out, err = ctl(
        capsys, "--api", config_api.url, "config", "set", "ttl=5", "postgresql.parameters.work_mem=8MB", "old=null"
    )
    assert rc == 0 and err == ""
    assert config_api.calls("PATCH")[0].body == {
        "ttl": 5,
        "postgresql": {"parameters": {"work_mem": "8MB"}},
        "old": None,
    }
    assert out.splitlines() == ["- old (was 1)", '~ postgresql.parameters.work_mem: "4MB" -> "8MB"', "~ ttl: 3 -> 5"]
    rc, _, err = ctl(capsys, "--api", config_api.url, "config", "set", "ttl=0")
    assert rc == 1 and "bad request: ttl must be >= 1 (field: ttl)" in one_line(err)


def editor(tmp_path: Path, code: str) -> dict[str, str]:
    """An $EDITOR that runs ``code`` on the file's text (variable ``text``)."""
    script = tmp_path / "editor.py"
    script.write_text(
        "import sys, pathlib\np = pathlib.Path(sys.argv[1])\ntext = p.read_text()\n" + code + "\np.write_text(text)\n"
    )
    return {"EDITOR": f"{sys.executable} {script}"}


def test_config_edit_sends_only_the_changes(
    capsys: pytest.CaptureFixture[str], config_api: Stub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    env = editor(tmp_path, "text = text.replace('ttl: 3', 'ttl: 6').replace('old: 1\\n', '') + 'new_key: [1]\\n'")
    rc, out, err = ctl(capsys, "--api", config_api.url, "config", "edit", env=env)
    assert rc == 0 and err == ""
    assert config_api.calls("PATCH")[0].body == {"ttl": 6, "old": None, "new_key": [1]}
    assert out.splitlines() == ["+ new_key: [1]", "- old (was 1)", "~ ttl: 3 -> 6"]
    assert list((tmp_path / "tmp").iterdir()) == [], "the temporary file is removed after a successful edit"
    rc, out, _ = ctl(capsys, "--api", config_api.url, "config", "edit", env=editor(tmp_path, "pass"))
    assert rc == 0 and out.strip() == "no changes" and len(config_api.calls("PATCH")) == 1


def test_config_edit_failures_change_nothing(
    capsys: pytest.CaptureFixture[str], config_api: Stub, tmp_path: Path
) -> None:
    rc, _, err = ctl(capsys, "--api", config_api.url, "config", "edit", env=editor(tmp_path, "text += 'bad: [\\n'"))
    assert rc == 1
    line = one_line(err)
    assert "not valid YAML" in line and "your edit is kept in " in line
    kept = Path(line.rsplit("your edit is kept in ", 1)[1])
    assert kept.read_text().endswith("bad: [\n")
    kept.unlink()
    rc, _, err = ctl(capsys, "--api", config_api.url, "config", "edit", env=editor(tmp_path, "text = '- a list\\n'"))
    assert rc == 1 and "expected a mapping" in one_line(err)
    Path(err.rsplit("your edit is kept in ", 1)[1].strip()).unlink()
    rc, _, err = ctl(capsys, "--api", config_api.url, "config", "edit", env=editor(tmp_path, "text = '# nothing\\n'"))
    assert rc == 1 and "the file is empty" in one_line(err)
    rc, _, err = ctl(capsys, "--api", config_api.url, "config", "edit", env=editor(tmp_path, "sys.exit(3)"))
    assert rc == 1 and "the editor exited with status 3" in one_line(err)
    rc, _, err = ctl(capsys, "--api", config_api.url, "config", "edit", env={"EDITOR": "/nonexistent/editor"})
    assert rc == 1 and "cannot run the editor" in one_line(err)
    rc, _, err = ctl(capsys, "--api", config_api.url, "config", "edit", env=editor(tmp_path, "text = 'ttl: 0\\n'"))
    assert rc == 1 and "ttl must be >= 1" in one_line(err) and "your edit is kept in" in err
    Path(err.rsplit("your edit is kept in ", 1)[1].strip()).unlink()
    assert config_api.calls("PATCH")[0].body["ttl"] == 0  # the only PATCH: refused by the API


def test_pgquorum_ctl_is_the_same_command(capsys: pytest.CaptureFixture[str], stubs: list[Stub]) -> None:
    from pgquorum.cli import main as pgquorum_main

    a = stubs[0]
    a.routes[("GET", "/cluster")] = (200, cluster_body({"pg1": a.url}))
    assert pgquorum_main(["ctl", "--api", a.url, "list", "--json"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["leader"] == "pg1" and err == ""
    assert pgquorum_main(["ctl", "--api", dead_url(), "list"]) == 1
    assert one_line(capsys.readouterr().err).startswith("pgquorum ctl: GET /cluster: no member API answered")
