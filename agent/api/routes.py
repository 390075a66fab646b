"""The REST API's routes, independent of the HTTP server: ``Api.handle(Request) -> Response``.

One table maps each path to its methods. The order of checks for every request:
route (404 listing the routes) -> method (405 with ``Allow``) -> query parameters (400) ->
authentication for POST/PATCH (401/403, see ``auth.py``) -> body and fields (400/413) -> handler.
``handle`` never raises and never puts a traceback in a response: unexpected errors are logged with
a request id, and the client gets ``500 {"error": ..., "request_id": ...}``.

Health routes answer from a ``Snapshot`` of the HA loop (no I/O). Operator requests call the loop's
``Control`` methods on a separate short-lived thread with a deadline, so no API thread waits on
etcd or postgres longer than that deadline: a slow request answers 504 ("may still complete").
"""

from __future__ import annotations

import itertools
import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol, cast
from urllib.parse import parse_qs, urlsplit

from pgquorum.agent.api.auth import Authenticator
from pgquorum.agent.api.health import (
    Check,
    Lag,
    LagTracker,
    Snapshot,
    check_health,
    check_liveness,
    check_primary,
    check_read_only,
    check_readiness,
    check_replica,
    cluster_body,
    health_body,
    lag_of,
)
from pgquorum.agent.api.validate import (
    FieldSpec,
    LagLimit,
    ValidationError,
    check_fields,
    member_name,
    parse_lag,
    parse_object,
    parse_time,
)
from pgquorum.agent.clock import Clock
from pgquorum.agent.config import AgentConfig, effective_sync
from pgquorum.agent.ha.control import Accepted, Control, ControlError
from pgquorum.agent.ha.decide import Memory
from pgquorum.agent.ha.view import LoopView, view_role
from pgquorum.agent.model import ClusterState
from pgquorum.agent.quorum.status import sync_status
from pgquorum.agent.quorum.voter import VoterService
from pgquorum.agent.quorum.votes import FieldError, parse_promise_request, parse_vote_request

log = logging.getLogger("pgquorum.api")

MUTATING = frozenset({"POST", "PATCH"})
QUIET_PATHS = frozenset({"/promise"})
CONTROL_METHODS = ("switchover", "failover", "restart", "reinitialize", "history", "dynamic_config", "patch_config")
WAIT_TIMEOUT = 90.0  # seconds an API thread waits for a switchover/failover with "wait": true
MAX_QUERY_FIELDS = 10


class LeaseGuard(Protocol):
    def lease_valid(self) -> bool: ...


class ApiLoop(Protocol):
    """What the API reads from the HA loop (``HaLoop`` has all of these).

    ``Control`` methods are looked up at run time (``control_of``); an object without them serves
    the read-only routes and answers 501 to operator requests. Optional attributes: ``metrics``
    (``render() -> (bytes, content_type)`` for ``GET /metrics``) and ``busy_until`` (monotonic
    deadline of a long action in progress, honoured by ``/liveness``).
    """

    @property
    def cfg(self) -> AgentConfig: ...

    @property
    def view(self) -> LoopView: ...

    @property
    def memory(self) -> Memory: ...

    @property
    def guard(self) -> LeaseGuard: ...

    @property
    def clock(self) -> Clock: ...


def control_of(loop: object) -> Control | None:
    """The loop as a ``Control`` if it implements every method, else None."""
    if all(callable(getattr(loop, name, None)) for name in CONTROL_METHODS):
        return cast(Control, loop)
    return None


@dataclass(frozen=True)
class Request:
    method: str
    target: str  # path and query string as sent: /replica?lag=1MB
    authorization: str | None = None
    body: bytes = b""
    client: str = "-"


@dataclass
class Response:
    status: int
    body: dict[str, Any] | None = None
    raw: bytes | None = None  # a non-JSON payload (GET /metrics)
    content_type: str = "application/json"
    headers: list[tuple[str, str]] = field(default_factory=list)
    principal: str | None = None  # who was authenticated, for the access log

    def payload(self) -> bytes:
        if self.raw is not None:
            return self.raw
        if self.body is None:
            return b""
        return json.dumps(self.body, default=str).encode()


Handler = Callable[["Api", Request, dict[str, list[str]]], Response]


@dataclass(frozen=True)
class Route:
    path: str
    methods: Mapping[str, Handler]
    summary: str
    query: frozenset[str] = frozenset()
    any_query: bool = False
    probe: bool = False  # a health check: HEAD and OPTIONS answer with its status (load balancers)

    def allow(self) -> list[str]:
        methods = list(self.methods)
        if "GET" in self.methods:
            methods.append("HEAD")
        methods.append("OPTIONS")
        return methods


def error(status: int, message: str, field_: str | None = None, **extra: Any) -> Response:
    body: dict[str, Any] = {"error": message}
    if field_ is not None or status == 400:
        body["field"] = field_
    body.update(extra)
    return Response(status, body)


def accepted_body(result: Accepted) -> dict[str, Any]:
    return {"message": result.message, "warning": result.warning, "details": result.details}


# -- field specs ------------------------------------------------------------------------------------

_CANDIDATE = "a string (a member name)"
SWITCHOVER_FIELDS = (
    FieldSpec("candidate", (str, type(None)), f"{_CANDIDATE} or null (the best replica)"),
    FieldSpec("scheduled_at", (str, type(None)), "an ISO-8601 time with a timezone, or null (now)"),
    FieldSpec("wait", (bool,), "a boolean (true or false)", default=True),
)
FAILOVER_FIELDS = (
    FieldSpec("candidate", (str,), _CANDIDATE, required=True),
    FieldSpec("wait", (bool,), "a boolean (true or false)", default=True),
)


class Api:
    def __init__(
        self,
        loop: ApiLoop,
        auth: Authenticator,
        *,
        quick_timeout: float | None = None,
        wait_timeout: float = WAIT_TIMEOUT,
        max_control_calls: int = 4,
    ):
        self.loop = loop
        self.auth = auth
        self.control = control_of(loop)
        self.tracker = LagTracker()
        # etcd calls take at most retry_timeout each, and a Control method makes a few of them.
        self.quick_timeout = quick_timeout if quick_timeout is not None else max(5.0, 5 * loop.cfg.timing.retry_timeout)
        self.wait_timeout = wait_timeout
        self._control_slots = threading.BoundedSemaphore(max_control_calls)
        self._ids = itertools.count(1)
        self.routes = {r.path: r for r in build_routes(metrics=getattr(loop, "metrics", None) is not None)}

    # -- entry point ---------------------------------------------------------------------------
    def handle(self, req: Request) -> Response:
        """Answer one request; never raises."""
        started = time.monotonic()
        request_id = f"{next(self._ids):x}"
        path = "-"
        try:
            path = urlsplit(req.target).path
            resp = self._dispatch(req)
        except Exception:
            log.exception(
                "API request failed",
                extra={"event": "api_error", "method": req.method, "path": path, "request_id": request_id},
            )
            resp = error(500, "internal error in the agent; see its log", request_id=request_id)
        # Promise renewals arrive every loop from the primary: their outcome is logged by the voter.
        level = logging.INFO if req.method.upper() in MUTATING and path not in QUIET_PATHS else logging.DEBUG
        if log.isEnabledFor(level):
            log.log(
                level,
                "API request",
                extra={
                    "event": "api_request",
                    "method": req.method,
                    "path": path,
                    "status": resp.status,
                    "client": req.client,
                    "principal": resp.principal,
                    "seconds": round(time.monotonic() - started, 3),
                    "request_id": request_id,
                },
            )
        return resp

    def _dispatch(self, req: Request) -> Response:
        parts = urlsplit(req.target)
        path = parts.path.rstrip("/") or "/"
        route = self.routes.get(path)
        if route is None:
            shown = path if len(path) <= 80 else path[:80] + "..."
            return error(404, f"no route {shown}", routes=self.route_list())
        method = req.method.upper()
        allow = route.allow()
        if method == "OPTIONS" and not route.probe:
            return Response(204, headers=[("Allow", ", ".join(allow))])
        run_as = "GET" if method in ("HEAD", "OPTIONS") else method
        if run_as not in route.methods:
            resp = error(405, f"method {method} is not allowed on {path} (allowed: {', '.join(allow)})", allow=allow)
            resp.headers.append(("Allow", ", ".join(allow)))
            return resp
        try:
            query = parse_qs(parts.query, keep_blank_values=True, max_num_fields=MAX_QUERY_FIELDS)
        except ValueError:
            return error(400, f"query: more than {MAX_QUERY_FIELDS} parameters", "query")
        if not route.any_query:
            unknown = sorted(set(query) - route.query)
            if unknown:
                allowed = ", ".join(sorted(route.query)) or "none"
                name = unknown[0][:40]
                return error(400, f"{name}: unknown query parameter on {path} (allowed: {allowed})", name)
        principal = None
        if method in MUTATING:
            result = self.auth.check(req.authorization)
            if not result.ok:
                resp = error(result.status, result.error or "refused")
                if result.status == 401:
                    resp.headers.extend(("WWW-Authenticate", c) for c in self.auth.challenges())
                return resp
            principal = result.principal
        try:
            resp = route.methods[run_as](self, req, query)
        except ValidationError as exc:
            resp = error(exc.status, exc.message, exc.field)
        resp.principal = principal
        if method == "OPTIONS":  # a probe's status for load balancers, no body
            resp.body = resp.raw = None
            resp.headers.append(("Allow", ", ".join(allow)))
        return resp

    def route_list(self) -> list[str]:
        return [f"{m} {r.path}" for r in self.routes.values() for m in r.methods]

    # -- snapshots -----------------------------------------------------------------------------
    def snapshot(self) -> Snapshot:
        loop = self.loop
        view = loop.view
        memory = loop.memory
        cfg = loop.cfg
        busy = getattr(loop, "busy_until", None)
        snap = Snapshot(
            me=cfg.name,
            view=view,
            role=view_role(view, memory, cfg.name),
            lease_valid=loop.guard.lease_valid(),
            now=loop.clock.monotonic(),
            timing=cfg.timing,
            nofailover=cfg.nofailover,
            leader_term=memory.leader_term,
            busy_until=float(busy) if isinstance(busy, int | float) and not isinstance(busy, bool) else None,
        )
        self.tracker.observe(view)
        return snap

    def observe(self) -> None:
        """Feed the lag history with the loop's latest view (the server calls this every half loop)."""
        self.tracker.observe(self.loop.view)

    def probe(
        self, route: str, query: dict[str, list[str]], check: Callable[[Snapshot, Lag, LagLimit | None], Check]
    ) -> Response:
        limit = parse_lag(query.get("lag", []))
        snap = self.snapshot()
        lag = lag_of(snap, self.tracker)
        result = check(snap, lag, limit)
        body = health_body(snap, lag)
        body["check"] = {"route": route, "ok": result.ok, "reason": result.reason}
        return Response(200 if result.ok else 503, body)

    # -- operator requests ---------------------------------------------------------------------
    def need_control(self) -> Control:
        if self.control is None:
            raise ValidationError(None, "operator requests are not implemented by this agent's HA loop", 501)
        return self.control

    def call_control(self, what: str, fn: Callable[[], dict[str, Any]], timeout: float) -> Response:
        """Run ``fn`` (a Control call) on its own thread; answer within ``timeout`` seconds."""
        if not self._control_slots.acquire(blocking=False):
            return error(503, f"{what}: too many operator requests in progress on this member; retry shortly")
        outcome: dict[str, Any] = {}
        done = threading.Event()
        abandoned = threading.Event()

        def run() -> None:
            try:
                outcome["value"] = fn()
            except Exception as exc:
                outcome["error"] = exc
            finally:
                self._control_slots.release()
                done.set()
                if abandoned.is_set():
                    failure = outcome.get("error")
                    log.warning(
                        "operator request finished after the API stopped waiting",
                        extra={
                            "event": "api_late_result",
                            "request": what,
                            "outcome": "ok" if failure is None else getattr(failure, "message", type(failure).__name__),
                        },
                    )

        threading.Thread(target=run, name=f"api-{what}", daemon=True).start()
        if not done.wait(timeout):
            abandoned.set()
            log.warning(
                "operator request not finished in time",
                extra={"event": "api_timeout", "request": what, "timeout": timeout},
            )
            return error(
                504,
                f"{what}: no answer from the HA loop within {timeout:g}s; it may still complete: "
                "check GET /cluster and GET /history",
            )
        exc = outcome.get("error")
        if isinstance(exc, ControlError):
            status = exc.status if 400 <= exc.status <= 599 else 500
            return Response(status, {"error": exc.message, "field": exc.field})
        if exc is not None:
            raise exc
        if "value" not in outcome:
            raise RuntimeError(f"{what}: the Control call ended without a result")
        return Response(200, cast(dict[str, Any], outcome["value"]))


# -- handlers ---------------------------------------------------------------------------------------


def _probe_route(name: str, check: Callable[[Snapshot, Lag, LagLimit | None], Check]) -> Handler:
    def handler(api: Api, req: Request, query: dict[str, list[str]]) -> Response:
        return api.probe(name, query, check)

    return handler


def _no_lag(check: Callable[[Snapshot], Check]) -> Callable[[Snapshot, Lag, LagLimit | None], Check]:
    return lambda snap, lag, limit: check(snap)


def get_cluster(api: Api, req: Request, query: dict[str, list[str]]) -> Response:
    view = api.loop.view
    cluster = view.cluster
    body = cluster_body(cluster)
    if cluster is not None:
        settings = view.sync or effective_sync(api.loop.cfg, cluster.config)
        decision = view.decision
        plan, verdict = (decision.sync, decision.quorum) if decision is not None else (None, None)
        body["sync"] = sync_status(settings, cluster, plan, verdict, view.sync_obs)
    votes = votes_status(api.loop, cluster)
    if votes is not None:
        body["votes"] = votes
    return Response(200 if cluster is not None else 503, body)


def votes_status(loop: ApiLoop, cluster: ClusterState | None) -> dict[str, Any] | None:
    """GET /cluster's ``votes``: voting members, this voter's promise and answers, the failsafe."""
    voter = getattr(loop, "voter", None)
    if not isinstance(voter, VoterService):
        return None
    voters = cluster.voters if cluster is not None else ()
    alive = {m.name for m in cluster.members} if cluster is not None else set()
    body: dict[str, Any] = {
        "voting_members": [{"name": v.name, "witness": v.witness, "alive": v.name in alive} for v in voters],
        "voter": voter.status(),
    }
    failsafe = getattr(getattr(loop, "metrics", None), "failsafe", None)
    state = failsafe() if callable(failsafe) else None
    if state is not None:
        now = loop.clock.monotonic()
        body["failsafe"] = {
            "majority": state.majority,
            "promises_held": state.promises_held,
            "voting_members": state.voting_members,
            "seconds_left": None if state.deadline is None else round(min(state.deadline - now, 1e9), 3),
        }
    if cluster is not None:
        body["next_term_votes"] = [
            {"voter": v.voter, "candidate": v.candidate, "wal_lsn": v.wal_lsn, "witness": v.witness}
            for v in cluster.votes
            if v.term == cluster.term + 1
        ]
    return body


def get_history(api: Api, req: Request, query: dict[str, list[str]]) -> Response:
    control = api.need_control()
    return api.call_control("history", lambda: {"history": [asdict(e) for e in control.history()]}, api.quick_timeout)


def get_config(api: Api, req: Request, query: dict[str, list[str]]) -> Response:
    control = api.need_control()
    return api.call_control("config", lambda: {"config": control.dynamic_config()}, api.quick_timeout)


def patch_config(api: Api, req: Request, query: dict[str, list[str]]) -> Response:
    changes = parse_object(req.body, allow_empty=False)
    if not changes:
        raise ValidationError("body", 'body: no settings to change; e.g. {"maximum_lag_on_failover": 1048576}')
    control = api.need_control()
    return api.call_control("config", lambda: {"config": control.patch_config(changes)}, api.quick_timeout)


def post_switchover(api: Api, req: Request, query: dict[str, list[str]]) -> Response:
    fields = check_fields(parse_object(req.body), SWITCHOVER_FIELDS)
    candidate = None if fields["candidate"] is None else member_name(fields["candidate"], "candidate")
    scheduled_at = None if fields["scheduled_at"] is None else parse_time(fields["scheduled_at"], "scheduled_at")
    wait: bool = fields["wait"]
    control = api.need_control()
    timeout = api.wait_timeout if wait and scheduled_at is None else api.quick_timeout
    return api.call_control(
        "switchover", lambda: accepted_body(control.switchover(candidate, scheduled_at, wait)), timeout
    )


def post_failover(api: Api, req: Request, query: dict[str, list[str]]) -> Response:
    fields = check_fields(parse_object(req.body), FAILOVER_FIELDS)
    candidate = member_name(fields["candidate"], "candidate")
    wait: bool = fields["wait"]
    control = api.need_control()
    timeout = api.wait_timeout if wait else api.quick_timeout
    return api.call_control("failover", lambda: accepted_body(control.failover(candidate, wait)), timeout)


def post_restart(api: Api, req: Request, query: dict[str, list[str]]) -> Response:
    check_fields(parse_object(req.body), ())
    control = api.need_control()
    return api.call_control("restart", lambda: accepted_body(control.restart()), api.quick_timeout)


def post_reinitialize(api: Api, req: Request, query: dict[str, list[str]]) -> Response:
    check_fields(parse_object(req.body), ())
    control = api.need_control()
    return api.call_control("reinitialize", lambda: accepted_body(control.reinitialize()), api.quick_timeout)


def get_metrics(api: Api, req: Request, query: dict[str, list[str]]) -> Response:
    metrics = getattr(api.loop, "metrics", None)
    if metrics is None:
        return error(404, "metrics are not enabled on this agent")
    data, content_type = metrics.render()
    raw = data.encode() if isinstance(data, str) else bytes(data)
    return Response(200, raw=raw, content_type=str(content_type))


def _voter(api: Api) -> VoterService:
    voter = getattr(api.loop, "voter", None)
    if not isinstance(voter, VoterService):
        raise ValidationError(None, "this agent does not vote (quorum_votes: false)", 501)
    return voter


def post_vote(api: Api, req: Request, query: dict[str, list[str]]) -> Response:
    """A candidate asks for our vote (invariant I5; formats in ``agent/quorum/votes.py``)."""
    parsed = parse_vote_request(parse_object(req.body, allow_empty=False))
    if isinstance(parsed, FieldError):
        return error(parsed.status, parsed.message, parsed.field)
    status, body = _voter(api).vote(parsed)
    return Response(status, body)


def post_promise(api: Api, req: Request, query: dict[str, list[str]]) -> Response:
    """The primary asks us to promise not to vote for anyone else for ttl (the quorum failsafe)."""
    parsed = parse_promise_request(parse_object(req.body, allow_empty=False))
    if isinstance(parsed, FieldError):
        return error(parsed.status, parsed.message, parsed.field)
    status, body = _voter(api).promise(parsed)
    return Response(status, body)


def post_promise_release(api: Api, req: Request, query: dict[str, list[str]]) -> Response:
    """A primary that stopped postgres frees us from its promise, so its successor need not wait."""
    parsed = parse_promise_request(parse_object(req.body, allow_empty=False))
    if isinstance(parsed, FieldError):
        return error(parsed.status, parsed.message, parsed.field)
    status, body = _voter(api).release(parsed)
    return Response(status, body)


def build_routes(metrics: bool) -> list[Route]:
    lag = frozenset({"lag"})
    routes = [
        Route(
            "/primary",
            {"GET": _probe_route("/primary", _no_lag(check_primary))},
            "200: writable leader with a valid lease",
            probe=True,
        ),
        Route(
            "/replica",
            {"GET": _probe_route("/replica", check_replica)},
            "200: streaming from the leader [?lag=]",
            lag,
            probe=True,
        ),
        Route(
            "/read-only",
            {"GET": _probe_route("/read-only", check_read_only)},
            "200: serves reads [?lag=]",
            lag,
            probe=True,
        ),
        Route(
            "/health", {"GET": _probe_route("/health", _no_lag(check_health))}, "200: postgres is running", probe=True
        ),
        Route(
            "/liveness",
            {"GET": _probe_route("/liveness", _no_lag(check_liveness))},
            "200: the HA loop runs",
            probe=True,
        ),
        Route(
            "/readiness",
            {"GET": _probe_route("/readiness", _no_lag(check_readiness))},
            "200: leader or streaming replica",
            probe=True,
        ),
        Route("/cluster", {"GET": get_cluster}, "members, leader, term"),
        Route("/history", {"GET": get_history}, "leadership changes"),
        Route("/config", {"GET": get_config, "PATCH": patch_config}, "dynamic settings"),
        Route("/switchover", {"POST": post_switchover}, "planned handover"),
        Route("/failover", {"POST": post_failover}, "manual failover to a candidate"),
        Route("/restart", {"POST": post_restart}, "restart this member's postgres"),
        Route("/reinitialize", {"POST": post_reinitialize}, "re-clone this replica"),
        Route("/vote", {"POST": post_vote}, "a candidate asks for this member's vote (agent to agent)"),
        Route("/promise", {"POST": post_promise}, "the primary renews this member's failsafe promise"),
        Route(
            "/promise/release",
            {"POST": post_promise_release},
            "a primary that stopped postgres frees this member from its promise",
        ),
    ]
    if metrics:
        routes.append(Route("/metrics", {"GET": get_metrics}, "Prometheus metrics", any_query=True))
    return routes
