"""Agent-to-agent calls of invariant I5: a candidate asks for votes, a primary renews promises.

Both are ``POST`` with the cluster's API credentials (the same ``api`` settings that protect this
agent's own mutating routes), bounded by a timeout, and never raise: an unreachable voter is an
answer like any other (a ``Refusal`` the caller counts as missing).

``PromiseKeeper`` runs on its own thread while this agent leads: every ``period`` it asks every
other voting member for a promise, dates each answer at the *send* time of its request
(``read_promise_response``) and keeps the newest per voter. It never waits for a slow voter: a
request still in flight is not sent again, so one paused voter cannot delay the others.
"""

from __future__ import annotations

import base64
import http.client
import json
import logging
import socket
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_for
from dataclasses import dataclass
from pathlib import Path

from pgquorum.agent.clock import Clock
from pgquorum.agent.config import ApiSettings
from pgquorum.agent.model import MemberInfo, PeerStatus
from pgquorum.agent.quorum.failsafe import Promise, PromiseRequest
from pgquorum.agent.quorum.refusal import Refusal, RefusalCode
from pgquorum.agent.quorum.votes import Vote, VoteRequest, read_promise_response, read_vote_response

log = logging.getLogger("pgquorum.quorum")

UNREACHABLE = -1  # status of a call that got no HTTP answer

# Connecting to a peer is bounded far tighter than its answer: a live peer accepts within
# milliseconds, while a dead one on Kubernetes — its pod deleted, its IP gone — drops the SYN, and
# waiting the whole request timeout for it stretched every election round by that much (measured:
# rounds 1.2 s apart instead of 0.05-0.4 s). A lost SYN costs one round; votes are asked again.
CONNECT_TIMEOUT = 0.3


class _BoundedConnect(http.client.HTTPConnection):
    def connect(self) -> None:
        timeout = self.timeout if isinstance(self.timeout, (int, float)) else None
        bound = CONNECT_TIMEOUT if timeout is None else min(timeout, CONNECT_TIMEOUT)
        self.sock = socket.create_connection((self.host, self.port), bound, getattr(self, "source_address", None))
        self.sock.settimeout(timeout)


class _BoundedConnectHandler(urllib.request.HTTPHandler):
    def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(_BoundedConnect, req)


_opener = urllib.request.build_opener(_BoundedConnectHandler())


def _urlopen(req: urllib.request.Request, timeout: float) -> http.client.HTTPResponse:
    resp: http.client.HTTPResponse = _opener.open(req, timeout=timeout)
    return resp


def peer_authorization(api: ApiSettings) -> str | None:
    """The Authorization header for calls to other members (read each time: files may be rotated)."""
    try:
        if api.auth_token_file is not None:
            return "Bearer " + Path(api.auth_token_file).read_text().strip()
        if api.username is not None and api.password_file is not None:
            pair = f"{api.username}:{Path(api.password_file).read_text().strip()}"
            return "Basic " + base64.b64encode(pair.encode()).decode("ascii")
    except OSError as exc:
        log.error("cannot read the API credentials for peer calls", extra={"event": "peer_auth", "error": str(exc)})
    return None


def post_json(url: str, body: Mapping[str, object], authorization: str | None, timeout: float) -> tuple[int, object]:
    """(HTTP status, decoded JSON body); (UNREACHABLE, reason) when no answer came within ``timeout``."""
    data = json.dumps(body).encode()
    headers = {"Content-Type": "application/json"}
    if authorization:
        headers["Authorization"] = authorization
    req = urllib.request.Request(url, data=data, headers=headers, method="POST")
    try:
        try:
            with _urlopen(req, timeout) as resp:
                status, raw = resp.status, resp.read()
        except urllib.error.HTTPError as err:
            status, raw = err.code, err.read()
    except (OSError, urllib.error.URLError, ValueError) as exc:
        return UNREACHABLE, str(getattr(exc, "reason", exc))
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, None


def fetch_peer_status(member: MemberInfo, timeout: float) -> PeerStatus:
    """Ask a peer for its fresh WAL position; unreachable peers simply do not count."""
    try:
        req = urllib.request.Request(member.api_url.rstrip("/") + "/health")
        try:
            with _urlopen(req, timeout) as resp:
                body = resp.read()
        except urllib.error.HTTPError as err:  # 503 still carries the JSON body
            body = err.read()
        data = json.loads(body)
        return PeerStatus(
            name=member.name,
            reachable=True,
            postgres_running=bool(data.get("postgres_running")),
            in_recovery=data.get("in_recovery"),
            timeline=data.get("timeline"),
            lsn=data.get("lsn"),
            nofailover=bool(data.get("nofailover", member.nofailover)),
        )
    except (OSError, ValueError, AttributeError, urllib.error.URLError):
        return PeerStatus(name=member.name, reachable=False)


def _unreachable(voter: str, why: object) -> Refusal:
    return Refusal(RefusalCode.BAD_ANSWER, f"{voter} did not answer ({why}).")


def ask_vote(url: str, voter: str, request: VoteRequest, authorization: str | None, timeout: float) -> Vote | Refusal:
    body = {
        "candidate": request.candidate,
        "term": request.term,
        "timeline": request.timeline,
        "wal_lsn": request.wal_lsn,
    }
    status, answer = post_json(url.rstrip("/") + "/vote", body, authorization, timeout)
    if status == UNREACHABLE:
        return _unreachable(voter, answer)
    return read_vote_response(status, answer, voter, request)


@dataclass(frozen=True)
class PromiseTarget:
    name: str
    api_url: str


class PromiseKeeper:
    """The primary's side of the failsafe: keeps asking every voter for a promise while we lead."""

    def __init__(
        self,
        me: str,
        clock: Clock,
        period: float,
        timeout: float,
        authorization: Callable[[], str | None],
        post: Callable[[str, Mapping[str, object], str | None, float], tuple[int, object]] = post_json,
    ):
        self.me = me
        self._clock = clock
        self._period = period
        self._timeout = timeout
        self._authorization = authorization
        self._post = post
        self._lock = threading.Lock()
        self._term: int | None = None
        self._since_term: int | None = None
        self._targets: dict[str, str] = {}
        self._promises: dict[str, Promise] = {}
        self._refusals: dict[str, Refusal] = {}
        self._in_flight: set[str] = set()
        self._rounds_done: int | None = None  # term whose first round completed
        self._driven_at: float | None = None  # last round the loop asked for (after a lease renewal)
        self._pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="promise")
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="promise-keeper", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self._pool.shutdown(wait=False, cancel_futures=True)

    # -- from the loop ---------------------------------------------------------------------------
    def lead(self, term: int, since_term: int, targets: list[PromiseTarget]) -> None:
        """We lead ``term`` (unbroken since ``since_term``): keep ``targets`` bound to us."""
        with self._lock:
            changed = self._term != term
            self._term, self._since_term = term, since_term
            for t in targets:
                self._targets[t.name] = t.api_url  # a dead voter keeps its last known URL
            known = set(self._targets)
            self._promises = {v: p for v, p in self._promises.items() if p.term >= since_term and v in known}
        if changed:
            self._wake.set()

    def forget(self, voters: set[str]) -> None:
        with self._lock:
            for name in set(self._targets) - voters:
                self._targets.pop(name, None)
                self._promises.pop(name, None)

    def step_down(self) -> None:
        """Fenced, handed over or no longer leader: our promises are worthless now."""
        with self._lock:
            self._term = self._since_term = None
            self._promises.clear()
            self._refusals.clear()
            self._rounds_done = None

    def release(self, timeout: float) -> list[str]:
        """We stopped postgres for good (shutdown): free every voter from its promise to us.

        Only after postgres has exited: a primary that still served must keep its voters bound.
        Sent in parallel and waited for at most ``timeout``; a voter not reached keeps its promise
        until it ends, which only costs the successor time. Returns the voters that dropped one.
        """
        with self._lock:
            term = self._term
            targets = [(n, u) for n, u in self._targets.items() if n != self.me]
            self._term = self._since_term = None  # no renewal may follow the release
            self._promises.clear()
            self._rounds_done = None
        if term is None or not targets:
            return []
        authorization = self._authorization()
        body = {"primary": self.me, "term": term}
        bound = min(self._timeout, timeout)
        pool = ThreadPoolExecutor(max_workers=len(targets), thread_name_prefix="release")
        try:
            url = "{}/promise/release".format
            asked = {pool.submit(self._post, url(u.rstrip("/")), body, authorization, bound): n for n, u in targets}
            done, _ = wait_for(list(asked), timeout=timeout)
        finally:
            pool.shutdown(wait=False, cancel_futures=True)  # a slow voter must not hold the shutdown
        released = []
        for future in done:
            status, answer = future.result()
            if status == 200 and isinstance(answer, dict) and answer.get("released") is True:
                released.append(asked[future])
        return sorted(released)

    def promises(self) -> tuple[Promise, ...]:
        with self._lock:
            return tuple(self._promises.values())

    def refusals(self) -> dict[str, Refusal]:
        with self._lock:
            return dict(self._refusals)

    def round_done(self, term: int) -> bool:
        with self._lock:
            return self._rounds_done == term

    def renew_now(self, wait: bool) -> None:
        """One round at once; with ``wait``, return when every answer is in (bounded by the timeout).

        The loop calls this right after each lease renewal: voters' promises then end right after the
        leader key would, so a failover waits for neither longer than for the other. The keeper's own
        timer only takes over while the loop is slower than ``period`` (etcd away or slow).
        """
        with self._lock:
            term = self._term
            self._driven_at = self._clock.monotonic()
        futures = self._send_round()
        if not wait:
            return
        if futures:
            wait_for(futures, timeout=self._timeout + 0.5)  # a late answer still lands in the table
        with self._lock:
            if term is not None and self._term == term:
                self._rounds_done = term

    # -- internals -------------------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                leading = self._term is not None
                driven = self._driven_at is not None and self._clock.monotonic() - self._driven_at < 1.5 * self._period
            if leading and not driven:
                self._send_round()
            self._wake.wait(self._period)
            self._wake.clear()

    def _send_round(self) -> list[Future[None]]:
        with self._lock:
            term = self._term
            if term is None:
                return []
            targets = [(n, u) for n, u in self._targets.items() if n != self.me and n not in self._in_flight]
            self._in_flight.update(n for n, _ in targets)
        authorization = self._authorization() if targets else None
        return [self._pool.submit(self._ask, name, url, term, authorization) for name, url in targets]

    def _ask(self, voter: str, url: str, term: int, authorization: str | None) -> None:
        request = PromiseRequest(self.me, term)
        sent_at = self._clock.monotonic()
        try:
            status, body = self._post(
                url.rstrip("/") + "/promise", {"primary": self.me, "term": term}, authorization, self._timeout
            )
            if status == UNREACHABLE:
                result: Promise | Refusal = _unreachable(voter, body)
            else:
                result = read_promise_response(status, body, voter, request, sent_at)
            with self._lock:
                if self._term is None or self._since_term is None or not self._since_term <= term <= self._term:
                    return  # we stepped down meanwhile: a late promise must not count
                if isinstance(result, Promise):
                    held = self._promises.get(voter)
                    if held is None or held.granted_at <= result.granted_at:
                        self._promises[voter] = result
                    self._refusals.pop(voter, None)
                else:
                    self._refusals[voter] = result
        finally:
            with self._lock:
                self._in_flight.discard(voter)
