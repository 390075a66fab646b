"""A small client for the agents' REST API: typed methods, a timeout on every request, errors as data.

Every member's API can answer cluster-wide requests (``/cluster``, ``/history``, ``/config``,
``/switchover``, ``/failover``), so the client tries the URLs it was given in order:

* the connection could not be made (refused, unknown host, connect timeout): the request was not
  sent, try the next URL;
* HTTP 503 (that member cannot serve right now, e.g. it lost etcd): try the next URL;
* a read timeout or a dropped connection: a GET moves on to the next URL, but a POST/PATCH stops
  with ``InDoubt`` -- the member may have applied it, and sending it again elsewhere could apply it
  twice;
* any other HTTP error is the cluster's answer: ``ApiError`` with the API's ``error`` and ``field``.

Per-member requests (``/restart``, ``/reinitialize``) go to that member's URL only.
Proxy settings from the environment are ignored: members are reached directly.
"""

from __future__ import annotations

import base64
import http.client
import json
import socket
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import urlsplit

Json = dict[str, Any]
_T = TypeVar("_T")

DEFAULT_TIMEOUT = 5.0  # connect and each read, per request
WAIT_TIMEOUT = 120.0  # read timeout of requests that wait for the cluster (switchover/failover with wait)


# -- errors -----------------------------------------------------------------------------------------


class CtlError(Exception):
    """A failure reported as one line on stderr; ``exit_code`` for the process."""

    exit_code = 1


class UsageError(CtlError):
    """The command line is wrong (bad value, missing option): nothing was sent."""

    exit_code = 2


@dataclass(frozen=True)
class Attempt:
    url: str
    reason: str


class Unreachable(CtlError):
    """No member API could serve the request; ``attempts`` says why for each URL tried."""

    def __init__(self, method: str, path: str, attempts: Sequence[Attempt]) -> None:
        self.method, self.path, self.attempts = method, path, tuple(attempts)
        super().__init__(f"{method} {path}: no member API answered ({len(self.attempts)} tried)")


class ApiError(CtlError):
    """The API answered with an HTTP error (or an answer that is not what the contract says)."""

    def __init__(
        self, method: str, path: str, url: str, status: int, error: str, field: str | None = None, reason: str = ""
    ) -> None:
        self.method, self.path, self.url = method, path, url
        self.status, self.error, self.field, self.reason = status, error, field, reason
        super().__init__(f"{method} {path} at {url}: HTTP {status}: {error}")


class InDoubt(CtlError):
    """A change was sent but no answer came back: it may or may not have been applied."""

    def __init__(self, method: str, path: str, url: str, reason: str) -> None:
        self.method, self.path, self.url, self.reason = method, path, url, reason
        super().__init__(f"{method} {path} at {url}: {reason}")


# -- answers ----------------------------------------------------------------------------------------


def _opt_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    return None


def _opt_str(value: Any) -> str | None:
    return None if value is None else str(value)


@dataclass(frozen=True)
class MemberView:
    name: str
    role: str
    state: str | None = None
    term: int | None = None
    timeline: int | None = None
    lsn: Any = None  # int (bytes) or PostgreSQL text form, as the API sends it
    lag_bytes: int | None = None
    api_url: str | None = None
    conn_url: str | None = None
    nofailover: bool = False
    raw: Json = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def from_json(cls, data: Json) -> MemberView:
        return cls(
            name=str(data.get("name", "?")),
            role=str(data.get("role") or "?"),
            state=_opt_str(data.get("state")),
            term=_opt_int(data.get("term")),
            timeline=_opt_int(data.get("timeline")),
            lsn=data.get("lsn"),
            lag_bytes=_opt_int(data.get("lag_bytes")),
            api_url=_opt_str(data.get("api_url")),
            conn_url=_opt_str(data.get("conn_url")),
            nofailover=bool(data.get("nofailover", False)),
            raw=data,
        )


@dataclass(frozen=True)
class ClusterView:
    leader: str | None
    term: int | None
    initialized: bool
    members: tuple[MemberView, ...]
    raw: Json = field(default_factory=dict, compare=False, repr=False)
    source: str = ""  # the URL that answered

    @classmethod
    def from_json(cls, data: Json, source: str = "") -> ClusterView:
        members = data.get("members")
        if not isinstance(members, list) or not all(isinstance(m, dict) for m in members):
            raise ValueError("'members' is not a list of objects")
        return cls(
            leader=_opt_str(data.get("leader")),
            term=_opt_int(data.get("term")),
            initialized=bool(data.get("initialized", True)),
            members=tuple(MemberView.from_json(m) for m in members),
            raw=data,
            source=source,
        )

    def member(self, name: str) -> MemberView | None:
        return next((m for m in self.members if m.name == name), None)


@dataclass(frozen=True)
class HistoryItem:
    term: int | None
    timeline: int | None
    new_leader: str | None
    old_leader: str | None
    reason: str | None
    at: Any  # unix seconds (float) or an ISO-8601 string
    durations: dict[str, float] = field(default_factory=dict)
    raw: Json = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def from_json(cls, data: Json) -> HistoryItem:
        durations = data.get("durations") or {}
        if not isinstance(durations, dict):
            raise ValueError("'durations' is not an object")
        return cls(
            term=_opt_int(data.get("term")),
            timeline=_opt_int(data.get("timeline")),
            new_leader=_opt_str(data.get("new_leader")),
            old_leader=_opt_str(data.get("old_leader")),
            reason=_opt_str(data.get("reason")),
            at=data.get("at"),
            durations={str(k): float(v) for k, v in durations.items() if isinstance(v, int | float)},
            raw=data,
        )


@dataclass(frozen=True)
class Accepted:
    """The answer to a change: 200 (done) or 202 (accepted, carried out by the cluster later)."""

    status: int
    message: str
    warning: str | None = None
    details: Json | None = None
    raw: Json = field(default_factory=dict, compare=False, repr=False)
    url: str = ""

    @classmethod
    def from_json(cls, status: int, data: Json, url: str = "") -> Accepted:
        details = data.get("details")
        return cls(
            status=status,
            message=str(data.get("message") or ("done" if status == 200 else "accepted")),
            warning=_opt_str(data.get("warning")) or None,
            details=details if isinstance(details, dict) else None,
            raw=data,
            url=url,
        )


# -- transport --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Auth:
    """Credentials for the mutating routes: a bearer token, or HTTP basic auth."""

    token: str | None = None
    user: str | None = None
    password: str | None = None
    source: str = ""  # where they came from, for error messages ("--token-file /x", ...)

    def header(self) -> str | None:
        if self.token:
            return f"Bearer {self.token}"
        if self.user is not None:
            pair = f"{self.user}:{self.password or ''}".encode()
            return "Basic " + base64.b64encode(pair).decode("ascii")
        return None


def normalize_url(url: str) -> str:
    """``host:port`` -> ``http://host:port``; no trailing slash. Raises UsageError when unusable."""
    text = url.strip()
    if text and "://" not in text:
        text = "http://" + text
    text = text.rstrip("/")
    try:
        parts = urlsplit(text)
        port_ok = parts.port is None or 0 < parts.port < 65536
    except ValueError:
        port_ok = False
        parts = urlsplit("")
    if parts.scheme not in ("http", "https") or not parts.hostname or not port_ok:
        raise UsageError(f"API URL {url!r}: expected http(s)://host:port")
    return text


def describe_exception(exc: BaseException | str, timeout: float) -> str:
    """Why a connection failed, in a few words."""
    if isinstance(exc, str):
        return exc
    if isinstance(exc, TimeoutError):
        return f"no answer within {timeout:g}s"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, ConnectionResetError | http.client.RemoteDisconnected):
        return "connection closed without an answer"
    if isinstance(exc, socket.gaierror):
        return f"unknown host ({exc.strerror or exc})"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror[0].lower() + exc.strerror[1:]
    return str(exc) or type(exc).__name__


def _error_text(body: Json | None, raw: bytes, reason: str) -> tuple[str, str | None]:
    """The API's ``error`` and ``field``, or a short rendering of a non-JSON answer."""
    if body is not None and body.get("error") is not None:
        field_ = body.get("field")
        return str(body["error"]), None if field_ is None else str(field_)
    text = " ".join(raw.decode(errors="replace").split())
    if "<" in text:  # an HTML error page (e.g. http.server's 501): its reason phrase says enough
        text = ""
    return (text[:200] or reason or "no details"), None


@dataclass(frozen=True)
class _Response:
    status: int
    body: Json
    url: str


class ApiClient:
    def __init__(
        self,
        urls: Sequence[str],
        auth: Auth | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        wait_timeout: float = WAIT_TIMEOUT,
    ) -> None:
        if not urls:
            raise UsageError("no member API URL to talk to")
        if timeout <= 0 or wait_timeout <= 0:
            raise UsageError(f"timeouts must be > 0 s (got {timeout:g} and {wait_timeout:g})")
        self.urls = list(dict.fromkeys(normalize_url(u) for u in urls))
        self.auth = auth or Auth()
        self.timeout = timeout
        self.wait_timeout = max(wait_timeout, timeout)
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    # -- typed methods ---------------------------------------------------------------------------

    def cluster(self) -> ClusterView:
        resp = self._call("GET", "/cluster")
        return self._parse(resp, "GET", "/cluster", lambda: ClusterView.from_json(resp.body, resp.url))

    def history(self) -> list[HistoryItem]:
        resp = self._call("GET", "/history")

        def parse() -> list[HistoryItem]:
            items = resp.body.get("history")
            if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
                raise ValueError("'history' is not a list of objects")
            return [HistoryItem.from_json(i) for i in items]

        return self._parse(resp, "GET", "/history", parse)

    def config(self) -> Json:
        resp = self._call("GET", "/config")
        return self._parse(resp, "GET", "/config", lambda: _config_of(resp.body))

    def patch_config(self, changes: Json) -> Json:
        resp = self._call("PATCH", "/config", changes)
        return self._parse(resp, "PATCH", "/config", lambda: _config_of(resp.body))

    def switchover(self, candidate: str | None, scheduled_at: str | None, wait: bool) -> Accepted:
        body = {"candidate": candidate, "scheduled_at": scheduled_at, "wait": wait}
        return self._accepted("/switchover", body, wait=wait)

    def failover(self, candidate: str, wait: bool) -> Accepted:
        return self._accepted("/failover", {"candidate": candidate, "wait": wait}, wait=wait)

    def restart(self, member_url: str) -> Accepted:
        return self._accepted("/restart", {}, urls=[member_url])

    def reinitialize(self, member_url: str) -> Accepted:
        return self._accepted("/reinitialize", {}, urls=[member_url])

    # -- plumbing ---------------------------------------------------------------------------------

    def _accepted(self, path: str, body: Json, wait: bool = False, urls: Sequence[str] | None = None) -> Accepted:
        resp = self._call("POST", path, body, urls=urls, timeout=self.wait_timeout if wait else None)
        return Accepted.from_json(resp.status, resp.body, resp.url)

    @staticmethod
    def _parse(resp: _Response, method: str, path: str, parse: Callable[[], _T]) -> _T:
        try:
            return parse()
        except (ValueError, TypeError, AttributeError) as exc:
            raise ApiError(method, path, resp.url, resp.status, f"unexpected answer: {exc}") from None

    def _call(
        self,
        method: str,
        path: str,
        body: Json | None = None,
        urls: Sequence[str] | None = None,
        timeout: float | None = None,
    ) -> _Response:
        limit = timeout or self.timeout
        data = None if body is None else json.dumps(body).encode()
        headers = {"Accept": "application/json", "User-Agent": "pgquorumctl"}
        if data is not None:
            headers["Content-Type"] = "application/json"
        auth = self.auth.header()
        if auth:
            headers["Authorization"] = auth
        attempts: list[Attempt] = []
        targets = [normalize_url(u) for u in urls] if urls is not None else self.urls
        for url in targets:
            request = urllib.request.Request(url + path, data=data, method=method, headers=headers)
            reason = ""
            try:
                with self._opener.open(request, timeout=limit) as resp:
                    status, raw = int(resp.status), resp.read()
            except urllib.error.HTTPError as exc:
                status, reason = exc.code, str(exc.reason)
                try:
                    raw = exc.read()
                except (OSError, http.client.HTTPException):
                    raw = b""
            except urllib.error.URLError as exc:  # the request was not sent: try the next member
                attempts.append(Attempt(url, describe_exception(exc.reason, limit)))
                continue
            except (OSError, http.client.HTTPException) as exc:  # sent; no (complete) answer
                if method == "GET":
                    attempts.append(Attempt(url, describe_exception(exc, limit)))
                    continue
                raise InDoubt(method, path, url, describe_exception(exc, limit)) from None
            parsed = _json_object(raw)
            if status == 503 or (method == "GET" and status < 300 and parsed is not None and "error" in parsed):
                error, field_ = _error_text(parsed, raw, reason)
                attempts.append(Attempt(url, f"HTTP {status}: {error}" + (f" [{field_}]" if field_ else "")))
                continue
            if status >= 300:
                error, field_ = _error_text(parsed, raw, reason)
                raise ApiError(method, path, url, status, error, field_, reason)
            if parsed is None:
                text = raw.decode(errors="replace")[:100]
                raise ApiError(method, path, url, status, f"unexpected answer (not a JSON object): {text!r}")
            return _Response(status, parsed, url)
        raise Unreachable(method, path, attempts)


def _json_object(raw: bytes) -> Json | None:
    try:
        data = json.loads(raw) if raw else None
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def _config_of(body: Json) -> Json:
    config = body.get("config")
    if not isinstance(config, dict):
        raise ValueError("'config' is not an object")
    return config
