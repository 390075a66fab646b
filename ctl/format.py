"""Human output (pure functions on plain data): tables, sizes, times, changes, one-line errors."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, tzinfo
from typing import Any
from urllib.parse import urlsplit

import yaml

from pgquorum.ctl.client import ApiError, ClusterView, CtlError, HistoryItem, InDoubt, MemberView, Unreachable


def human_bytes(n: int | None) -> str:
    """``None`` -> ``-``; 0 -> ``0 B``; 1536 -> ``1.5 KiB``; powers of 1024."""
    if n is None:
        return "-"
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(size) < 1024 or unit == "TiB":
            return f"{int(size)} {unit}" if unit == "B" else f"{size:.1f} {unit}".replace(".0 ", " ")
        size /= 1024
    raise AssertionError("unreachable")


def render_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned columns separated by two spaces; no trailing blanks."""
    table = [list(headers), *[list(r) for r in rows]]
    widths = [max(len(r[i]) for r in table) for i in range(len(headers))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in table)


def _dsn_host(conn_url: str) -> str | None:
    """host:port of a libpq URL (``postgres://h:5432/db``) or keyword DSN (``host=h port=5432``)."""
    if "://" in conn_url:
        try:
            parts = urlsplit(conn_url)
            host, port = parts.hostname, parts.port
        except ValueError:
            return None
        if not host:
            return None
        host = f"[{host}]" if ":" in host else host
        return f"{host}:{port}" if port else host
    pairs = dict(p.split("=", 1) for p in conn_url.split() if "=" in p)
    if "host" not in pairs:
        return None
    return f"{pairs['host']}:{pairs['port']}" if "port" in pairs else pairs["host"]


def member_host(m: MemberView) -> str:
    """Where the member's PostgreSQL listens; else its API's host:port; else ``-``."""
    host = _dsn_host(m.conn_url) if m.conn_url else None
    if host is None and m.api_url:
        try:
            host = urlsplit(m.api_url).netloc or None
        except ValueError:
            host = None
    return host or "-"


def _opt(value: Any) -> str:
    return "-" if value is None or value == "" else str(value)


def cluster_table(view: ClusterView, cluster_name: str | None = None) -> str:
    """``list``: a summary line, then one row per member (sorted by name)."""
    name = f"cluster {cluster_name}" if cluster_name else "cluster"
    if view.initialized:
        summary = f"{name}: leader {view.leader or '- (none)'}, term {_opt(view.term)}"
    else:
        summary = f"{name}: not initialized yet"
    rows = []
    for m in sorted(view.members, key=lambda m: m.name):
        is_leader = m.name == view.leader or m.role == "leader"
        lag = "" if is_leader and m.lag_bytes in (0, None) else human_bytes(m.lag_bytes)
        rows.append([m.name, m.role, _opt(m.state), _opt(m.term), _opt(m.timeline), lag, member_host(m)])
    text = summary + "\n" + render_table(["MEMBER", "ROLE", "STATE", "TERM", "TIMELINE", "LAG", "HOST"], rows)
    flagged = sorted(m.name for m in view.members if m.nofailover)
    if flagged:
        text += "\nnofailover (never promoted): " + ", ".join(flagged)
    if not view.members:
        text += "\n(no members registered)"
    return text


def format_time(at: Any, tz: tzinfo | None = None) -> str:
    """A history time: unix seconds or ISO-8601 text -> ``2030-06-01 03:00:00+02:00`` in ``tz`` (local)."""
    when: datetime | None = None
    if isinstance(at, int | float) and not isinstance(at, bool):
        when = datetime.fromtimestamp(at, UTC)
    elif isinstance(at, str):
        try:
            when = datetime.fromisoformat(at)
        except ValueError:
            return at
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
    if when is None:
        return "-"
    return when.astimezone(tz).isoformat(" ", "seconds")


def format_durations(durations: Mapping[str, float]) -> str:
    """``{"detection": 1.2, "election": 0.05}`` -> ``detection 1.20s, election 0.05s`` (contract order first)."""
    order = ["detection", "election", "promotion"]
    keys = [k for k in order if k in durations] + sorted(k for k in durations if k not in order)
    return ", ".join(f"{k} {durations[k]:.2f}s" for k in keys) or "-"


def history_table(items: Sequence[HistoryItem], tz: tzinfo | None = None) -> str:
    if not items:
        return "no leadership changes recorded"
    rows = [
        [
            _opt(i.term),
            _opt(i.timeline),
            format_time(i.at, tz),
            _opt(i.new_leader),
            _opt(i.old_leader),
            _opt(i.reason),
            format_durations(i.durations),
        ]
        for i in items
    ]
    return render_table(["TERM", "TIMELINE", "AT", "NEW LEADER", "OLD LEADER", "REASON", "DURATIONS"], rows)


def config_yaml(config: Mapping[str, Any]) -> str:
    if not config:
        return "{}\n"
    return yaml.safe_dump(dict(config), sort_keys=True, default_flow_style=False, allow_unicode=True)


def _scalar(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, default=str)


def format_changes(old: Mapping[str, Any], patch: Mapping[str, Any], prefix: str = "") -> list[str]:
    """One line per changed leaf of a merge patch: ``~ ttl: 3 -> 5``, ``+ a.b: 1``, ``- c (was 2)``."""
    lines: list[str] = []
    for key in sorted(patch):
        path, value = prefix + key, patch[key]
        before = old.get(key) if isinstance(old, Mapping) else None
        if value is None:
            lines.append(f"- {path} (was {_scalar(before)})")
        elif isinstance(value, Mapping) and isinstance(before, Mapping):
            lines.extend(format_changes(before, value, path + "."))
        elif key not in old:
            lines.append(f"+ {path}: {_scalar(value)}")
        else:
            lines.append(f"~ {path}: {_scalar(before)} -> {_scalar(value)}")
    return lines


def json_text(data: Any) -> str:
    """``--json`` output: indented, keys sorted."""
    return json.dumps(data, indent=2, sort_keys=True, default=str)


def one_line(text: str) -> str:
    return " ".join(str(text).split())


def _api_error_line(exc: ApiError, auth_source: str | None) -> str:
    where = f"{exc.method} {exc.url}{exc.path}"
    field = f" (field: {exc.field})" if exc.field else ""
    status = f"HTTP {exc.status}"
    if exc.status in (401, 403):
        what = "not authenticated" if exc.status == 401 else "not allowed"
        if auth_source:
            hint = f"; check the credentials from {auth_source}"
        elif exc.status == 401:
            hint = "; pass --token-file PATH (or set PGQUORUM_TOKEN_FILE) or --user NAME --password-file PATH"
        else:
            hint = ""
        return f"{what}: {exc.error}{field} ({status} from {where}){hint}"
    if exc.status in (405, 501):
        return (
            f"the agent at {exc.url} does not support {exc.method} {exc.path} ({status} {exc.error}): "
            "it runs an older pgquorum"
        )
    label = {400: "bad request: ", 404: "not found: ", 409: "refused by the cluster: "}.get(exc.status, "")
    return f"{label}{exc.error}{field} ({status} from {where})"


def error_line(exc: BaseException, auth_source: str | None = None) -> str:
    """The one line printed on stderr for a failure (without the program name)."""
    if isinstance(exc, Unreachable):
        tried = "; ".join(f"{a.url} ({a.reason})" for a in exc.attempts) or "no URL"
        text = f"{exc.method} {exc.path}: no member API answered; tried {tried}"
    elif isinstance(exc, ApiError):
        text = _api_error_line(exc, auth_source)
    elif isinstance(exc, InDoubt):
        text = (
            f"{exc.method} {exc.url}{exc.path}: {exc.reason}; the request may or may not have been applied: "
            "check with 'list' and 'history' before trying again"
        )
    elif isinstance(exc, CtlError):
        text = str(exc)
    else:
        text = f"internal error: {type(exc).__name__}: {exc}"
    return one_line(text)
