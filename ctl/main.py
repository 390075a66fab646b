"""The ``pgquorumctl`` commands (also ``pgquorum ctl``).

Human output by default, ``--json`` for scripts. Any failure: exit code 1 (2 for a wrong command
line, 130 when interrupted) and exactly one line on stderr; never a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn

import yaml

from pgquorum.ctl import format as fmt
from pgquorum.ctl.client import (
    DEFAULT_TIMEOUT,
    WAIT_TIMEOUT,
    Accepted,
    ApiClient,
    Auth,
    ClusterView,
    CtlError,
    MemberView,
    UsageError,
)
from pgquorum.ctl.discovery import ENV_API, ENV_TOKEN_FILE, Target, load_auth, resolve_target
from pgquorum.ctl.parse import merge_patch, parse_assignments, parse_scheduled

PROG = "pgquorumctl"
Json = dict[str, Any]


class CtlParser(argparse.ArgumentParser):
    """Usage errors are one line on stderr (exit 2), also when nested under ``pgquorum ctl``."""

    def error(self, message: str) -> NoReturn:
        print(f"{self.prog}: error: {message} (see '{self.prog} --help')", file=sys.stderr)
        raise SystemExit(2)


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text!r}")
    return value


def _add_common(p: argparse.ArgumentParser, suppress: bool) -> None:
    """Options accepted before *and* after the command (``pgquorumctl --local list --json``)."""

    def d(value: Any) -> Any:
        return argparse.SUPPRESS if suppress else value

    g = p.add_argument_group("finding the cluster (one of)")
    g.add_argument("--api", default=d(None), metavar="URL[,URL...]", help=f"member API URLs (or ${ENV_API})")
    g.add_argument("--etcd", default=d(None), metavar="URL[,URL...]", help="etcd endpoints; needs --cluster")
    g.add_argument("--cluster", default=d(None), metavar="NAME", help="cluster name in etcd (with --etcd)")
    g.add_argument("--prefix", default=d(None), metavar="P", help="etcd key prefix (default pgquorum)")
    g.add_argument("--local", action="store_true", default=d(False), help="the local cluster ('pgquorum local')")
    g.add_argument("--data-dir", type=Path, default=d(None), metavar="DIR", help="local cluster directory")
    a = p.add_argument_group("credentials (mutating commands)")
    a.add_argument(
        "--token-file", type=Path, default=d(None), metavar="PATH", help=f"bearer token (or ${ENV_TOKEN_FILE})"
    )
    a.add_argument("--user", default=d(None), metavar="NAME", help="HTTP basic auth user (with --password-file)")
    a.add_argument("--password-file", type=Path, default=d(None), metavar="PATH", help="HTTP basic auth password")
    o = p.add_argument_group("output and timeouts")
    o.add_argument("--json", action="store_true", default=d(False), help="machine-readable output")
    o.add_argument("--timeout", type=_positive, default=d(DEFAULT_TIMEOUT), metavar="S", help="per-request timeout (5)")
    o.add_argument(
        "--wait-timeout",
        type=_positive,
        default=d(WAIT_TIMEOUT),
        metavar="S",
        help="how long switchover/failover wait for the result (120)",
    )


def configure_parser(p: argparse.ArgumentParser) -> None:
    """Add the ctl options and commands to ``p`` (``pgquorumctl`` itself, or ``pgquorum ctl``)."""
    p.set_defaults(ctl_prog=p.prog)
    _add_common(p, suppress=False)
    sub = p.add_subparsers(dest="ctl_command", required=True, metavar="COMMAND", parser_class=CtlParser)

    def command(name: str, help: str) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help, description=help)
        _add_common(sp, suppress=True)
        return sp

    command("list", "members with role, state, term, timeline, lag and host")
    sw = command("switchover", "planned handover of leadership (no data loss)")
    sw.add_argument("--candidate", metavar="NAME", help="the new leader (default: the best replica)")
    sw.add_argument("--scheduled", metavar="ISO8601", help="when, e.g. 2030-06-01T03:00+02:00 (default: now)")
    sw.add_argument("--force", action="store_true", help="do not ask for confirmation")
    sw.add_argument("--no-wait", action="store_true", help="return once the request is accepted")
    fo = command("failover", "make a member the leader, even without a healthy leader (may lose data)")
    fo.add_argument("--candidate", metavar="NAME", required=True, help="the new leader")
    fo.add_argument("--force", action="store_true", help="do not ask for confirmation")
    fo.add_argument("--no-wait", action="store_true", help="return once the request is accepted")
    command("history", "leadership changes: term, timeline, leaders, reason, durations")
    rs = command("restart", "restart a member's PostgreSQL")
    rs.add_argument("member", metavar="MEMBER")
    rs.add_argument("--force", action="store_true", help="do not ask for confirmation")
    ri = command("reinit", "wipe a replica's data and clone it again from the leader")
    ri.add_argument("member", metavar="MEMBER")
    ri.add_argument("--force", action="store_true", help="do not ask for confirmation")
    cf = command("config", "show or change the dynamic configuration stored in etcd")
    csub = cf.add_subparsers(dest="config_command", required=True, metavar="ACTION", parser_class=CtlParser)
    for name, help_ in (
        ("show", "print the dynamic configuration (YAML, or JSON with --json)"),
        ("edit", "edit it in $VISUAL/$EDITOR; only the changes are sent"),
        ("set", "change keys from the command line: KEY=VALUE ... (dotted keys, YAML values, null removes)"),
    ):
        sp = csub.add_parser(name, help=help_, description=help_)
        _add_common(sp, suppress=True)
        if name == "set":
            sp.add_argument("assignments", nargs="+", metavar="KEY=VALUE")


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    p = CtlParser(prog=prog, description="Operate a pgquorum cluster through its members' REST API.")
    configure_parser(p)
    return p


def can_confirm(what: str, force: bool) -> None:
    """Fail early (before any request) when confirmation is needed but cannot be asked."""
    if not force and not sys.stdin.isatty():
        raise UsageError(f"{what}: stdin is not a terminal, so there is no one to confirm: pass --force")


def confirm(question: str, what: str, force: bool) -> None:
    """Ask on the terminal unless ``force``; never prompt when stdin is not a terminal."""
    if force:
        return
    can_confirm(what, force)
    print(f"{question} [y/N] ", end="", file=sys.stderr, flush=True)
    answer = sys.stdin.readline()
    if answer.strip().lower() not in ("y", "yes"):
        raise CtlError(f"{what}: not confirmed; nothing was changed")


def describe_member(view: ClusterView, name: str | None) -> str:
    """``pg2 (replica, lag 0 B)``, for confirmation questions."""
    if name is None:
        return "the best replica (chosen by the cluster)"
    m = view.member(name)
    if m is None:
        return f"{name} (not a member right now)"
    return f"{name} ({m.role}, lag {fmt.human_bytes(m.lag_bytes)})"


def failover_notes(view: ClusterView, candidate: str) -> list[str]:
    """What to know before failing over to ``candidate``: a healthy leader, writes that may be lost."""
    notes = []
    leader = view.member(view.leader) if view.leader else None
    if leader is not None and leader.name != candidate:
        notes.append(
            f"{leader.name} is the leader ({leader.state or 'state unknown'}): "
            "if it is healthy, 'switchover' hands over without losing data."
        )
    cand = view.member(candidate)
    if cand is not None and cand.lag_bytes:
        notes.append(f"{candidate} lags {fmt.human_bytes(cand.lag_bytes)} behind: those writes may be lost.")
    return notes


class Ctl:
    """One invocation: the parsed arguments, and the client built from them on first use."""

    def __init__(self, args: argparse.Namespace, env: dict[str, str] | None = None) -> None:
        self.args = args
        self.env = dict(os.environ) if env is None else env
        self.auth: Auth | None = None
        self.target: Target | None = None
        self._client: ApiClient | None = None

    @property
    def client(self) -> ApiClient:
        if self._client is None:
            a = self.args
            self.target = resolve_target(
                a.api, a.etcd, a.cluster, a.prefix, a.local, a.data_dir, self.env, timeout=a.timeout
            )
            self.auth = load_auth(a.token_file, a.user, a.password_file, self.env, self.target.local_token)
            self._client = ApiClient(self.target.urls, self.auth, timeout=a.timeout, wait_timeout=a.wait_timeout)
        return self._client

    def out(self, text: str) -> None:
        print(text, flush=True)

    def out_json(self, data: Any) -> None:
        print(fmt.json_text(data), flush=True)

    def warn(self, text: str) -> None:
        print(f"WARNING: {fmt.one_line(text)}", file=sys.stderr, flush=True)

    def can_confirm(self, what: str) -> None:
        can_confirm(what, self.args.force)

    def confirm(self, question: str, what: str) -> None:
        confirm(question, what, self.args.force)

    def report(self, acc: Accepted) -> int:
        if acc.warning:
            self.warn(acc.warning)
        if self.args.json:
            self.out_json(acc.raw or {"message": acc.message})
            return 0
        prefix = "accepted: " if acc.status == 202 else ""
        self.out(prefix + acc.message)
        for key, value in sorted((acc.details or {}).items()):
            self.out(f"  {key}: {value if isinstance(value, str) else json.dumps(value, default=str)}")
        return 0

    # -- commands --------------------------------------------------------------------------------

    def run(self) -> int:
        cmd = self.args.ctl_command
        if cmd == "config":
            return {"show": self.cmd_config_show, "edit": self.cmd_config_edit, "set": self.cmd_config_set}[
                self.args.config_command
            ]()
        handler = {
            "list": self.cmd_list,
            "switchover": self.cmd_switchover,
            "failover": self.cmd_failover,
            "history": self.cmd_history,
            "restart": self.cmd_restart,
            "reinit": self.cmd_reinit,
        }[cmd]
        return handler()

    def cmd_list(self) -> int:
        view = self.client.cluster()
        if self.args.json:
            self.out_json(view.raw)
        else:
            self.out(fmt.cluster_table(view, self.target.cluster_name if self.target else None))
        return 0

    def cmd_history(self) -> int:
        items = self.client.history()
        if self.args.json:
            self.out_json({"history": [i.raw for i in items]})
        else:
            self.out(fmt.history_table(items))
        return 0

    def _describe(self, view: ClusterView, name: str | None) -> str:
        return describe_member(view, name)

    def cmd_switchover(self) -> int:
        a = self.args
        when = parse_scheduled(a.scheduled, datetime.now(UTC)) if a.scheduled else None
        if a.candidate is not None and not a.candidate.strip():
            raise UsageError("--candidate: empty member name")
        if not a.force:
            self.can_confirm("switchover")
            view = self.client.cluster()
            at = f"at {when.isoformat(' ', 'seconds')}" if when else "now"
            leader = f"{view.leader} (term {view.term})" if view.leader else "- (the cluster has no leader!)"
            self.confirm(f"Switch over from leader {leader} to {self._describe(view, a.candidate)} {at}?", "switchover")
        scheduled = when.astimezone(UTC).isoformat() if when else None
        return self.report(self.client.switchover(a.candidate, scheduled, wait=not a.no_wait and when is None))

    def cmd_failover(self) -> int:
        a = self.args
        if not a.candidate.strip():
            raise UsageError("--candidate: empty member name")
        if not a.force:
            self.can_confirm("failover")
            view = self.client.cluster()
            for note in failover_notes(view, a.candidate):
                print(note, file=sys.stderr)
            self.confirm(f"Fail over to {self._describe(view, a.candidate)}?", "failover")
        return self.report(self.client.failover(a.candidate, wait=not a.no_wait))

    def _member(self, name: str) -> MemberView:
        view = self.client.cluster()
        m = view.member(name)
        if m is None:
            names = ", ".join(sorted(x.name for x in view.members)) or "none"
            raise CtlError(f"{name}: no such member in the cluster (members: {names})")
        if not m.api_url:
            raise CtlError(f"{name}: the member publishes no api_url")
        return m

    def cmd_restart(self) -> int:
        self.can_confirm("restart")
        m = self._member(self.args.member)
        pause = ": writes pause while it restarts" if m.role == "leader" else ""
        self.confirm(f"Restart PostgreSQL on {m.name} ({m.role}){pause}?", "restart")
        return self.report(self.client.restart(m.api_url or ""))

    def cmd_reinit(self) -> int:
        self.can_confirm("reinit")
        m = self._member(self.args.member)
        self.confirm(
            f"Reinitialize {m.name} ({m.role}): its data directory is WIPED and cloned again from the leader?",
            "reinit",
        )
        return self.report(self.client.reinitialize(m.api_url or ""))

    def cmd_config_show(self) -> int:
        config = self.client.config()
        if self.args.json:
            self.out_json({"config": config})
        else:
            self.out(fmt.config_yaml(config).rstrip("\n"))
        return 0

    def cmd_config_set(self) -> int:
        patch = parse_assignments(self.args.assignments)
        old = self.client.config()
        new = self.client.patch_config(patch)
        if self.args.json:
            self.out_json({"config": new})
            return 0
        changes = fmt.format_changes(old, merge_patch(old, new))
        self.out("\n".join(changes) if changes else "no change (the values were already set)")
        return 0

    def _editor(self) -> list[str]:
        editor = self.env.get("VISUAL") or self.env.get("EDITOR")
        if not editor:
            if not sys.stdin.isatty():
                raise UsageError("config edit: no $EDITOR and no terminal; use 'config set KEY=VALUE ...' in scripts")
            editor = next((e for e in ("editor", "vi", "nano") if shutil.which(e)), None)
            if editor is None:
                raise UsageError("config edit: set $EDITOR (no editor, vi or nano found)")
        try:
            return shlex.split(editor)
        except ValueError as exc:
            raise UsageError(f"config edit: cannot parse $EDITOR {editor!r} ({exc})") from None

    def cmd_config_edit(self) -> int:
        editor = self._editor()
        old = self.client.config()
        header = (
            f"# pgquorum dynamic configuration (from {self.target.how if self.target else 'the API'}).\n"
            "# Save and quit to apply the changes; delete a key to remove it; an empty file aborts.\n"
        )
        fd, name = tempfile.mkstemp(prefix="pgquorum-config-", suffix=".yaml")
        path = Path(name)
        keep = False
        try:
            with os.fdopen(fd, "w") as f:
                f.write(header + fmt.config_yaml(old))
            try:
                rc = subprocess.run([*editor, str(path)], check=False).returncode
            except OSError as exc:
                raise CtlError(f"config edit: cannot run the editor {editor[0]!r} ({exc.strerror or exc})") from None
            if rc != 0:
                raise CtlError(f"config edit: the editor exited with status {rc}; nothing was changed")
            text = path.read_text()
            try:
                new = yaml.safe_load(text)
            except yaml.YAMLError as exc:
                keep = True
                mark = getattr(exc, "problem_mark", None)
                where = f" at line {mark.line + 1}" if mark is not None else ""
                problem = getattr(exc, "problem", None) or "syntax error"
                raise CtlError(
                    f"config edit: not valid YAML ({problem}{where}); nothing was changed; your edit is kept in {path}"
                ) from None
            if new is None:
                raise CtlError("config edit: the file is empty; nothing was changed")
            if not isinstance(new, dict) or not all(isinstance(k, str) for k in new):
                keep = True
                raise CtlError(
                    "config edit: expected a mapping of names to values; nothing was changed; "
                    f"your edit is kept in {path}"
                )
            patch = merge_patch(old, new)
            if not patch:
                if self.args.json:
                    self.out_json({"config": old})
                else:
                    self.out("no changes")
                return 0
            try:
                result = self.client.patch_config(patch)
            except CtlError as exc:
                keep = True
                raise CtlError(f"{fmt.error_line(exc, self._auth_source())}; your edit is kept in {path}") from None
            if self.args.json:
                self.out_json({"config": result})
            else:
                self.out("\n".join(fmt.format_changes(old, patch)))
            return 0
        finally:
            if not keep:
                path.unlink(missing_ok=True)

    def _auth_source(self) -> str | None:
        return self.auth.source if self.auth is not None and self.auth.header() else None


def run(args: argparse.Namespace, env: dict[str, str] | None = None) -> int:
    """Run a parsed ctl command; returns the exit code. Prints one stderr line on failure."""
    ctl = Ctl(args, env)
    return guarded(getattr(args, "ctl_prog", PROG), ctl.run, ctl._auth_source)


def guarded(prog: str, body: Callable[[], int], auth_source: Callable[[], str | None] = lambda: None) -> int:
    """Run ``body``; any failure is one line on stderr and an exit code (never a traceback)."""
    try:
        return body()
    except CtlError as exc:
        print(f"{prog}: {fmt.error_line(exc, auth_source())}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. piped into head: nothing left to say, and nothing to flush at exit
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except Exception as exc:  # a bug: still one line, unless asked for the traceback
        if os.environ.get("PGQUORUM_DEBUG"):
            raise
        print(f"{prog}: {fmt.error_line(exc)} (PGQUORUM_DEBUG=1 shows the traceback)", file=sys.stderr)
        return 1


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run(args)
