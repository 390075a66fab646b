"""The voter's side of invariant I5 in a running agent: ``POST /vote`` and ``POST /promise``.

One ``VoterService`` per process (data member or witness), shared by the API threads and the HA
loop. Its ``VoterMemory`` sits behind one lock, held only for pure computation, never across a
network call: a vote request stuck on a slow etcd must not delay the promise renewals that keep
the primary serving.

A vote, in order (``votes.py`` explains each step):

1. an early answer from what the loop last saw (no I/O): refusals that a fresh etcd read cannot
   undo -- a binding promise, the start-up quiet period, a vote already cast, no WAL position;
2. a fresh read of the term and the leader key (the loop's view may be a loop old, and a vote
   asked right after the key expired must not be refused for that);
3. ``decide_vote`` and ``record_vote`` under the lock;
4. the key, created once in a transaction that also checks the term and that no leader key exists;
   an existing key decides (``confirm_vote``); an etcd error answers 503 and keeps the vote in memory.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Protocol

from pgquorum.agent.clock import Clock
from pgquorum.agent.dcs.base import DCSError
from pgquorum.agent.quorum.failsafe import (
    Promise,
    PromiseRequest,
    VoterMemory,
    grant_promise,
    observe_etcd,
    promise_refusal,
    release_promise,
)
from pgquorum.agent.quorum.refusal import Refusal, RefusalCode
from pgquorum.agent.quorum.votes import (
    Grant,
    Vote,
    VoteRequest,
    VoterView,
    confirm_vote,
    decide_vote,
    promise_response,
    record_vote,
    vote_response,
)

log = logging.getLogger("pgquorum.quorum")


class VoteStore(Protocol):
    """The two etcd calls a vote needs (``EtcdDCS`` has them; give the service its own client)."""

    def read_term_and_leader(self) -> tuple[int, str | None]: ...

    def create_vote(self, vote: Vote) -> tuple[bool, Vote | None]: ...


@dataclass(frozen=True)
class LocalView:
    """What the loop last saw, for votes: set by the loop after each of its reads."""

    etcd_ok: bool = False
    term: int | None = None
    leader: str | None = None
    timeline: int | None = None  # data member: our timeline and best WAL position (None: unknown)
    wal_lsn: int | None = None
    live_primary: str | None = None  # a writable primary of the current term we still see alive


# Refusals from the loop's view that a fresh etcd read cannot turn into a grant.
_FINAL_EARLY = frozenset(
    {RefusalCode.PROMISED, RefusalCode.STARTING, RefusalCode.ALREADY_VOTED, RefusalCode.POSITION_UNKNOWN}
)


class VoterService:
    def __init__(
        self,
        name: str,
        witness: bool,
        ttl: float,
        store: VoteStore,
        clock: Clock,
        on_answer: Callable[[str, bool, str | None], None] | None = None,
    ):
        self.name = name
        self.witness = witness
        self._clock = clock
        self._store = store
        self._store_lock = threading.Lock()  # the store's etcd client is not thread-safe
        self._lock = threading.Lock()
        self._memory = VoterMemory(name, float(ttl), started_at=clock.monotonic())
        self._local = LocalView()
        self.on_answer = on_answer  # (kind "vote"|"promise", granted, refusal code) for metrics
        self.granted: dict[str, int] = {"vote": 0, "promise": 0}
        self.refused: dict[tuple[str, str], int] = {}
        self.last_vote: Vote | None = None
        self._last_refusal: object = None

    # -- from the loop ---------------------------------------------------------------------------
    def observe(self, term: int, own_votes: list[tuple[int, str]], local: LocalView) -> None:
        """One successful etcd read of the loop: the term counter and our vote keys (``observe_etcd``)."""
        with self._lock:
            self._memory = observe_etcd(self._memory, term, own_votes)
            self._local = local

    def etcd_lost(self, local: LocalView) -> None:
        """The loop could not read etcd: no vote can be cast until it can (promises go on)."""
        with self._lock:
            self._local = replace(local, etcd_ok=False)

    @property
    def memory(self) -> VoterMemory:
        with self._lock:
            return self._memory

    def status(self) -> dict[str, Any]:
        """For GET /cluster: what this voter promised and voted, and its answer counts."""
        now = self._clock.monotonic()
        with self._lock:
            m = self._memory
            refused = dict(self.refused)
            granted = dict(self.granted)
        p = m.promise
        return {
            "promise": None
            if p is None or not p.binds(now)
            else {"primary": p.primary, "term": p.term, "seconds_left": round(p.expires_at() - now, 3)},
            "votes_cast": [{"term": t, "candidate": c} for t, c in m.votes_cast],
            "granted": granted,
            "refused": [{"kind": k, "code": c, "count": n} for (k, c), n in sorted(refused.items())],
        }

    # -- POST /promise ---------------------------------------------------------------------------
    def promise(self, request: PromiseRequest) -> tuple[int, dict[str, Any]]:
        now = self._clock.monotonic()
        with self._lock:
            memory, result = grant_promise(self._memory, request, now)
            self._memory = memory
        self._count("promise", result)
        if isinstance(result, Refusal):
            log.info(
                "promise refused",
                extra={
                    "event": "promise_refused",
                    "primary": request.primary,
                    "term": request.term,
                    "code": result.code.value,
                    "reason": result.reason,
                },
            )
        return promise_response(result)

    # -- POST /promise/release --------------------------------------------------------------------
    def release(self, request: PromiseRequest) -> tuple[int, dict[str, Any]]:
        with self._lock:
            memory, dropped = release_promise(self._memory, request)
            self._memory = memory
        log.warning(
            "promise released: its primary stopped postgres" if dropped else "promise release noted (none held)",
            extra={"event": "promise_released", "primary": request.primary, "term": request.term, "dropped": dropped},
        )
        return 200, {"released": dropped, "voter": memory.me, "primary": request.primary, "term": request.term}

    # -- POST /vote ------------------------------------------------------------------------------
    def vote(self, request: VoteRequest) -> tuple[int, dict[str, Any]]:
        result = self._vote(request)
        self._count("vote", result)
        extra = {"candidate": request.candidate, "term": request.term}
        if isinstance(result, Refusal):
            # A candidate retries while it waits for a promise to end: log each new refusal once.
            key = (request.candidate, request.term, result.code)
            level = logging.DEBUG if key == self._last_refusal else logging.INFO
            self._last_refusal = key
            log.log(
                level,
                "vote refused",
                extra={"event": "vote_refused", **extra, "code": result.code.value, "reason": result.reason},
            )
        else:
            self.last_vote = result.vote
            log.warning("vote granted", extra={"event": "vote_granted", **extra, "wal_lsn": result.vote.wal_lsn})
        return vote_response(result)

    def _view(self, local: LocalView, term: int | None, leader: str | None, memory: VoterMemory) -> VoterView:
        return VoterView(
            name=self.name,
            witness=self.witness,
            timeline=None if self.witness else local.timeline,
            wal_lsn=None if self.witness else local.wal_lsn,
            term=term,
            leader=leader,
            live_primary=local.live_primary,
            memory=memory,
            wall=self._clock.wall(),
        )

    def _vote(self, request: VoteRequest) -> Grant | Refusal:
        with self._lock:
            local, memory = self._local, self._memory
        early = decide_vote(
            self._view(local, local.term if local.etcd_ok else None, local.leader, memory),
            request,
            self._clock.monotonic(),
        )
        if isinstance(early, Refusal) and (early.code in _FINAL_EARLY or early.code is RefusalCode.ETCD_UNREACHABLE):
            return early  # no etcd call for a voter that cannot vote anyway (or whose loop cannot reach etcd)
        blocked = promise_refusal(memory, self._clock.monotonic(), request.candidate)
        if blocked is not None:
            return blocked
        try:
            with self._store_lock:
                term, leader = self._store.read_term_and_leader()
        except DCSError as exc:
            return Refusal(
                RefusalCode.ETCD_UNREACHABLE,
                f"{self.name} cannot read etcd ({exc}); a vote only counts once its key exists there.",
            )
        with self._lock:
            self._memory = observe_etcd(self._memory, term)
            decided = decide_vote(self._view(self._local, term, leader, self._memory), request, self._clock.monotonic())
            if not isinstance(decided, Grant):
                return decided
            self._memory = record_vote(self._memory, decided.vote)  # before the key: promises see it
        try:
            with self._store_lock:
                created, stored = self._store.create_vote(decided.vote)
        except DCSError as exc:
            return Refusal(
                RefusalCode.ETCD_UNREACHABLE,
                f"{self.name} could not write its vote for {request.candidate} in term {request.term} ({exc}); "
                "it keeps that vote (the key may exist) and votes for nobody else in that term.",
            )
        if created:
            return decided
        if stored is None:  # the transaction failed on the term or the leader key, not on our key
            return Refusal(
                RefusalCode.WRONG_TERM,
                f"the term moved past {request.term - 1} or a leader key appeared while {self.name} voted "
                f"for {request.candidate}: that election is over.",
            )
        return confirm_vote(decided.vote, stored)

    def _count(self, kind: str, result: Grant | Promise | Refusal) -> None:
        refused = isinstance(result, Refusal)
        code = result.code.value if isinstance(result, Refusal) else None
        with self._lock:
            if code is None:
                self.granted[kind] += 1
            else:
                self.refused[(kind, code)] = self.refused.get((kind, code), 0) + 1
        if self.on_answer is not None:
            self.on_answer(kind, not refused, code)
