"""Quorum failsafe: a primary cut from etcd keeps serving only on a majority's promise (invariant I5).

Voter side: ``grant_promise`` answers ``POST /promise``: the voter promises the primary of a term
not to vote for any other candidate for ``ttl`` seconds from the moment it answers; while that
holds, ``promise_blocks_vote`` refuses every vote but one for that primary itself.

Primary side: ``may_keep_serving`` counts the promises still valid by the primary's own clock,
each measured from the *send* time of the request it answered, minus ``safety_margin`` -- the
lease rule of invariant I1. Monotonic clocks of two machines are not comparable, so a ``Promise``
is dated on the clock of whoever holds it: the voter keeps its grant instant, the primary keeps
its send instant (never the voter's number). Sending precedes granting, so the primary's copy
expires first.

Why a majority is enough: every promotion needs votes from a majority of voting members, and any
two majorities share a member. That member either promised first -- then it refuses the vote
until its promise expires, which is after the primary stopped counting it -- or voted first --
then it refuses the promise, having voted in a newer term. So while the primary may serve, no
candidate can win, whoever still reaches etcd.

A voter's process memory is not enough after a restart, and two rules cover that:

* it forgot its promises: it votes for nobody during its first ``ttl`` (``STARTING``);
* it forgot its votes: it promises nothing until it has read etcd once since it started, which
  gives it the term counter and its own vote key for the next term (``NOT_SYNCED``).

Everything here is pure: ``now`` is injected monotonic seconds, state is returned, never kept.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import NamedTuple

from pgquorum.agent.config import Timing
from pgquorum.agent.quorum.refusal import Refusal, RefusalCode


@dataclass(frozen=True)
class Promise:
    """``voter`` will not vote for anyone but ``primary`` before ``granted_at + ttl``.

    ``granted_at`` is monotonic seconds on the holder's clock: the voter's grant instant in the
    voter's copy, the send instant of the request in the primary's copy.
    """

    voter: str
    primary: str
    term: int
    granted_at: float
    ttl: float

    def expires_at(self) -> float:
        return self.granted_at + self.ttl

    def binds(self, now: float) -> bool:
        return now < self.expires_at()


@dataclass(frozen=True)
class PromiseRequest:
    """Body of ``POST /promise``: the primary of ``term`` asks for (or renews) a promise."""

    primary: str
    term: int


@dataclass(frozen=True)
class VoterMemory:
    """What a voting member remembers between requests (process memory: lost on restart).

    ``votes_cast`` holds (term, candidate) of this voter's votes: those cast since it started
    plus its own vote keys read from etcd. Only terms >= ``etcd_term`` are kept; older ones can
    no longer matter.
    """

    me: str
    ttl: float  # this voter's timing.ttl: how long its promises bind it
    started_at: float  # monotonic instant this agent process started
    promise: Promise | None = None  # the latest promise granted (voter's clock)
    votes_cast: tuple[tuple[int, str], ...] = ()
    etcd_term: int | None = None  # newest term counter read from etcd since start; None: not yet
    released: PromiseRequest | None = None  # the newest (primary, term) that released our promise

    def voted_term(self) -> int:
        """The newest term this voter voted in (0: none known)."""
        return max((term for term, _ in self.votes_cast), default=0)

    def vote_in(self, term: int) -> str | None:
        """The candidate this voter voted for in ``term``, if any."""
        for t, candidate in self.votes_cast:
            if t == term:
                return candidate
        return None


def observe_etcd(memory: VoterMemory, term: int, own_votes: Iterable[tuple[int, str]] = ()) -> VoterMemory:
    """Fold one successful etcd read into the memory: the term counter and this voter's vote keys.

    The loop calls this every time it reads etcd, with this voter's keys under ``votes/<term+1>/``
    (and any other term it read): after a restart that is how the voter learns what it voted.
    """
    newest = max(term, memory.etcd_term or 0)
    known = {t: c for t, c in memory.votes_cast}
    for t, candidate in own_votes:
        known.setdefault(t, candidate)  # etcd keys are created once: memory and etcd agree
    kept = tuple(sorted((t, c) for t, c in known.items() if t >= newest))
    return replace(memory, etcd_term=newest, votes_cast=kept)


def _promise_block(memory: VoterMemory, now: float, candidate: str | None) -> Refusal | None:
    quiet_until = memory.started_at + memory.ttl
    if now < quiet_until:
        return Refusal(
            RefusalCode.STARTING,
            f"{memory.me} started {now - memory.started_at:.1f}s ago and may have promised a primary "
            f"not to vote before restarting (promises last ttl {memory.ttl:g}s); it votes for nobody "
            f"for another {quiet_until - now:.1f}s.",
        )
    p = memory.promise
    if p is not None and p.binds(now) and p.primary != candidate:
        return Refusal(
            RefusalCode.PROMISED,
            f"{memory.me} promised {p.primary}, primary of term {p.term}, {now - p.granted_at:.1f}s ago "
            f"not to vote for anyone else for {p.ttl:g}s; {p.primary} may still be serving without etcd, "
            f"so no vote for {candidate or 'another candidate'} for another {p.expires_at() - now:.1f}s.",
        )
    return None


def promise_blocks_vote(memory: VoterMemory, now: float, candidate: str | None = None) -> str | None:
    """Why this voter may not vote for ``candidate`` now because of a promise (None: it may).

    ``candidate=None`` asks about any candidate other than the promised primary.
    """
    refusal = _promise_block(memory, now, candidate)
    return refusal.reason if refusal else None


def promise_refusal(memory: VoterMemory, now: float, candidate: str | None = None) -> Refusal | None:
    """``promise_blocks_vote`` with its code (STARTING is a 503, PROMISED a 409)."""
    return _promise_block(memory, now, candidate)


def grant_promise(memory: VoterMemory, request: PromiseRequest, now: float) -> tuple[VoterMemory, Promise | Refusal]:
    """Voter side of ``POST /promise``: promise ``request.primary`` (or renew), or say why not."""
    me, term, primary = memory.me, request.term, request.primary
    if memory.etcd_term is None:
        return memory, Refusal(
            RefusalCode.NOT_SYNCED,
            f"{me} has not read etcd since it started, so it cannot tell whether it already voted in a "
            f"term after {term}; it promises nothing to {primary} until it has.",
        )
    if memory.etcd_term > term:
        return memory, Refusal(
            RefusalCode.NEWER_TERM,
            f"{me} saw term {memory.etcd_term} in etcd, newer than {primary}'s term {term}: another "
            f"primary may have been elected, so {primary} must not keep serving on {me}'s promise.",
        )
    voted = memory.voted_term()
    if voted > term:
        return memory, Refusal(
            RefusalCode.VOTED_NEWER,
            f"{me} already voted for {memory.vote_in(voted)} in term {voted}, newer than {primary}'s "
            f"term {term}: promising now could let two primaries serve.",
        )
    gone = memory.released
    if gone is not None and gone.primary == primary and gone.term >= term:
        return memory, Refusal(
            RefusalCode.RELEASED,
            f"{primary} released {me}'s promise for term {gone.term} when it stopped postgres; a late "
            f"request of term {term} must not bind {me} to a primary that no longer serves.",
        )
    held = memory.promise
    if held is not None and held.binds(now) and held.primary != primary and held.term >= term:
        return memory, Refusal(
            RefusalCode.PROMISED,
            f"{me} promised {held.primary}, primary of term {held.term}, not to vote for anyone else "
            f"for another {held.expires_at() - now:.1f}s; it cannot also promise {primary} of term {term}.",
        )
    # A promise to the primary of an older term is replaced: that primary lost its majority when
    # the newer term was elected (that election needed a majority of votes), so it no longer counts us.
    promise = Promise(me, primary, term, now, memory.ttl)
    return replace(memory, promise=promise), promise


def release_promise(memory: VoterMemory, request: PromiseRequest) -> tuple[VoterMemory, bool]:
    """Voter side of ``POST /promise/release``: the primary of ``request.term`` stopped postgres.

    A promise exists so that a primary cut off from etcd may keep serving until it ends; a primary
    that has stopped postgres serves nobody, and keeping the promise only delays its successor by
    up to ttl (measured: a SIGTERMed leader's successor waited 2.7 s of 3 for the promises alone).
    Only a promise to that primary for a term up to ``request.term`` is dropped. The release is
    remembered, so a renewal still in flight cannot bind the voter again. True: a promise was dropped.
    """
    held = memory.promise
    dropped = held is not None and held.primary == request.primary and held.term <= request.term
    gone = memory.released
    newer = gone is None or gone.primary != request.primary or gone.term < request.term
    return replace(memory, promise=None if dropped else held, released=request if newer else gone), dropped


class KeepServing(NamedTuple):
    """Primary side verdict: ``allowed`` now, why, and the instant it must be fenced by.

    ``deadline`` is None when no majority of promises was ever held (fence now); it is
    ``math.inf`` when this member alone is a majority of the voting members.
    """

    allowed: bool
    reason: str
    deadline: float | None


def majority(voting_members: int) -> int:
    return voting_members // 2 + 1


def may_keep_serving(
    promises: Iterable[Promise],
    voting_members: Iterable[str],
    now: float,
    timing: Timing,
    *,
    me: str,
    term: int,
    since_term: int | None = None,
) -> KeepServing:
    """May the primary ``me`` of ``term`` keep accepting writes at ``now`` on its voters' promises?

    ``promises`` are the primary's copies: ``granted_at`` is the *send* time of the renewal
    request each one answered. Each counts until ``granted_at + min(ttl, timing.ttl) -
    safety_margin``. The primary counts itself when it is a voting member (it does not vote
    for anyone else while it serves); promises to another primary or from non-members do not.

    ``since_term``: the first term of this primary's unbroken leadership (default ``term``).
    A primary that won the next term for itself -- say its key expired while etcd was away --
    still counts the promises of its earlier terms until the new ones arrive: no other primary
    held a term in between, so none can have replaced them. Older promises never count: a
    voter replaces a promise when a newer term's primary asks.
    """
    members = list(dict.fromkeys(voting_members))
    needed = majority(len(members))
    first = term if since_term is None else since_term
    until: dict[str, float] = {}
    for p in promises:
        if p.primary != me or not first <= p.term <= term or p.voter == me or p.voter not in members:
            continue
        end = p.granted_at + min(p.ttl, timing.ttl) - timing.safety_margin
        until[p.voter] = max(until.get(p.voter, -math.inf), end)
    self_vote = 1 if me in members else 0
    others_needed = needed - self_vote
    holding = sorted(v for v, end in until.items() if end > now)
    count = self_vote + len(holding)
    who = ", ".join(([me] if self_vote else []) + holding) or "nobody"
    if others_needed <= 0:
        return KeepServing(True, f"{me} alone is a majority of the {len(members)} voting members", math.inf)
    ends = sorted(until.values(), reverse=True)
    deadline = ends[others_needed - 1] if len(ends) >= others_needed else None
    if deadline is not None and now < deadline:
        return KeepServing(
            True,
            f"{count} of {len(members)} voting members ({who}) are bound to {me} for term {term}; "
            f"a majority ({needed}) holds for another {deadline - now:.2f}s.",
            deadline,
        )
    return KeepServing(
        False,
        f"only {count} of {len(members)} voting members ({who}) hold an unexpired promise to {me} for "
        f"term {term}, {needed} are needed: a majority could elect another primary, fence now.",
        deadline,
    )


def serving_deadline(lease_deadline: float | None, verdict: KeepServing, *, require_majority: bool) -> float | None:
    """The instant the primary must have stopped accepting writes (None: now).

    ``require_majority`` (recommended; promises renewed every loop): only the majority of
    promises counts, so a primary cut off from most voters fences even while etcd renews its
    lease -- 2 data + 1 witness stops writes after losing two. Without it the promises only
    extend the lease (``last_renew_sent + ttl - safety_margin``) while etcd is unreachable.
    Either way this is safe only if every promotion goes through a winning ``tally``.
    """
    if require_majority:
        return verdict.deadline
    candidates = [d for d in (lease_deadline, verdict.deadline) if d is not None]
    return max(candidates) if candidates else None
