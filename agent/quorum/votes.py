"""Votes for promotion (invariant I5): a candidate needs a majority of voting members for its term.

Voting members are the data members and the witnesses. Like Raft's RequestVote, a voter grants
at most one candidate per term and only one at least as advanced as itself, so the winner holds
every commit that any of its voters saw. A vote is an etcd key created once per voter per term.

Pure functions only: ``decide_vote`` (voter side), ``tally`` (candidate side), the JSON forms and
the request validators. The loop, the DCS and the API do the I/O.

etcd keys
=========

``/<prefix>/<cluster>/votes/<term>/<voter>`` -- JSON ``Vote``, written by the *voter* itself in a
transaction ``create_revision == 0`` (create once), no lease. The key is the real guard against
voting twice (``confirm_vote`` reads the outcome); ``decide_vote`` only refuses early and explains.
Keys of terms <= the current term counter are settled elections and may be deleted by the leader.

Agent-to-agent HTTP calls
=========================

Both are ``POST`` with a JSON body, authenticated like the other mutating routes (the cluster's
token); a malformed body is ``400 {"error": "<field>: <what is wrong>", "field": "<field>"}``
(``parse_vote_request`` / ``parse_promise_request`` name the field); 401/403 come from auth.

``POST /vote`` -- a candidate asks a voter for its vote::

    request   {"candidate": "b", "term": 8, "timeline": 3, "wal_lsn": 50331744}
              term: the term the candidate wants (etcd's term counter + 1)
              timeline, wal_lsn: the candidate's position (WAL byte position as an integer)
    200       {"granted": true, "vote": {"voter": "c", "term": 8, "candidate": "b",
               "wal_lsn": 50331000, "timeline": 3, "witness": false, "at": 1795000000.0}}
              sent only after the voter created its vote key (or found it already naming b)
    409       {"granted": false, "code": "<code>", "reason": "<sentence>"} -- a judgment:
              wrong_term, leader_key_held, live_primary, promised, already_voted,
              candidate_behind
    503       same body -- the voter cannot vote yet: etcd_unreachable, starting,
              position_unknown (ask again, or count it as missing)

``POST /promise`` -- the primary asks a voter for (or renews) a failsafe promise::

    request   {"primary": "a", "term": 7}
    200       {"granted": true, "voter": "c", "primary": "a", "term": 7, "ttl": 3.0}
              the voter votes for nobody but a for ttl seconds from its answer; the primary
              dates its copy at the *send* time of the request (``read_promise_response``)
    409       {"granted": false, "code": "newer_term" | "voted_newer" | "promised", "reason": ...}
    503       {"granted": false, "code": "not_synced", "reason": ...}

``vote_response`` / ``promise_response`` build these (status, body) pairs from the decisions;
``read_vote_response`` / ``read_promise_response`` read them on the calling side.

A voter handles ``POST /vote`` in this order, holding the same lock as for ``POST /promise``:
``decide_vote`` -> on ``Grant``, ``record_vote`` into its memory -> create the key ->
``confirm_vote`` with the value found if the key already existed -> answer. An etcd error while
creating answers 503 ``etcd_unreachable`` and keeps the vote in memory (it may have been written).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any

from pgquorum.agent.model import lsn_to_str
from pgquorum.agent.quorum.failsafe import (
    Promise,
    PromiseRequest,
    VoterMemory,
    majority,
    promise_refusal,
)
from pgquorum.agent.quorum.refusal import Refusal, RefusalCode

MAX_LSN = 2**64 - 1
_NAME_OK = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-_")  # as config.py's member names


def votes_prefix(prefix: str, cluster: str, term: int) -> str:
    """The etcd prefix holding every vote of ``term`` (range-read it to tally)."""
    base = f"/{prefix.strip('/')}/{cluster}/" if prefix.strip("/") else f"/{cluster}/"
    return f"{base}votes/{term}/"


def vote_key(prefix: str, cluster: str, term: int, voter: str) -> str:
    return votes_prefix(prefix, cluster, term) + voter


@dataclass(frozen=True)
class Vote:
    """``voter`` votes for ``candidate`` in ``term``, reporting its own position (None: witness)."""

    voter: str
    term: int
    candidate: str
    wal_lsn: int | None
    witness: bool
    at: float  # unix seconds, for humans only (never compared across machines)
    timeline: int | None = None

    def position(self) -> tuple[int, int] | None:
        """(timeline, WAL position), compared like Raft's (last log term, last log index)."""
        if self.witness or self.wal_lsn is None:
            return None
        return (self.timeline or 0, self.wal_lsn)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.as_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: Any) -> Vote:
        """Raises ValueError naming the field when ``data`` is not a vote."""
        if not isinstance(data, dict):
            raise ValueError("vote: expected a JSON object")
        voter = _name(data.get("voter"), "voter")
        candidate = _name(data.get("candidate"), "candidate")
        term = _whole(data.get("term"), "term", 1)
        witness = data.get("witness", False)
        if not isinstance(witness, bool):
            raise ValueError("witness: expected true or false")
        lsn = data.get("wal_lsn")
        wal_lsn = None if lsn is None else _whole(lsn, "wal_lsn", 0, MAX_LSN)
        tl = data.get("timeline")
        timeline = None if tl is None else _whole(tl, "timeline", 1)
        at = data.get("at", 0.0)
        if isinstance(at, bool) or not isinstance(at, int | float):
            raise ValueError("at: expected a number (unix seconds)")
        return cls(voter, term, candidate, wal_lsn, witness, float(at), timeline)

    @classmethod
    def from_json(cls, raw: str | bytes) -> Vote:
        try:
            data = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ValueError(f"vote: not valid JSON ({exc})") from None
        return cls.from_dict(data)


def _name(value: Any, field: str) -> str:
    if not isinstance(value, str) or not value or len(value) > 63 or not set(value) <= _NAME_OK:
        raise ValueError(f"{field}: expected a member name (lowercase letters, digits, '-' and '_')")
    return value


def _whole(value: Any, field: str, low: int, high: int = 2**63 - 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"{field}: expected a whole number >= {low}")
    return value


@dataclass(frozen=True)
class VoteRequest:
    """Body of ``POST /vote``: ``candidate`` at (``timeline``, ``wal_lsn``) wants ``term``."""

    candidate: str
    term: int
    timeline: int
    wal_lsn: int


@dataclass(frozen=True)
class VoterView:
    """What a voter knows when a vote request arrives.

    ``term`` and ``leader`` come from this loop's read of etcd (``term`` None: etcd unreachable).
    ``live_primary`` names a writable primary of the current term this voter still sees alive
    (through the leader's API, or itself when it is that primary). Its promise and the votes it
    already cast are in ``memory``, which must have folded in the same etcd read
    (``observe_etcd``).
    """

    name: str
    witness: bool
    timeline: int | None  # None for a witness
    wal_lsn: int | None  # its own best WAL position; None for a witness
    term: int | None
    leader: str | None
    live_primary: str | None
    memory: VoterMemory
    wall: float = 0.0  # unix seconds, stamped on the vote for humans

    def position(self) -> tuple[int, int] | None:
        if self.witness or self.wal_lsn is None:
            return None
        return (self.timeline or 0, self.wal_lsn)


@dataclass(frozen=True)
class Grant:
    """Vote yes: create ``vote`` under its key (create once), then answer 200."""

    vote: Vote


def _fmt(position: tuple[int, int] | None) -> str:
    if position is None:
        return "no WAL position"
    return f"timeline {position[0]} at {lsn_to_str(position[1])}"


def decide_vote(view: VoterView, request: VoteRequest, now: float) -> Grant | Refusal:
    """Voter side of ``POST /vote``: grant, or refuse with a sentence for the log.

    On a grant the caller records it first (``record_vote``), then creates the key; it never
    forgets the vote, even if creating the key failed, since it cannot know whether it did.
    """
    me, cand, term = view.name, request.candidate, request.term
    if view.term is None:
        return Refusal(
            RefusalCode.ETCD_UNREACHABLE,
            f"{me} cannot reach etcd: a vote only counts once its key exists there, so it cannot vote "
            f"for {cand} in term {term} now.",
        )
    if term != view.term + 1:
        if term <= view.term:
            why = f"etcd's term is already {view.term}: that election is over"
        else:
            why = f"etcd's term is {view.term}, so only term {view.term + 1} can be elected next"
        return Refusal(RefusalCode.WRONG_TERM, f"{me} refuses {cand} for term {term}: {why}.")
    earlier = view.memory.vote_in(term)
    if earlier is not None and earlier != cand:
        return Refusal(
            RefusalCode.ALREADY_VOTED,
            f"{me} already voted for {earlier} in term {term}; one vote per voter per term.",
        )
    if view.leader is not None:
        return Refusal(
            RefusalCode.LEADER_KEY_HELD,
            f"{me} sees {view.leader} holding the leader key of term {view.term} in etcd: its lease has "
            f"not expired, so there is no election for {cand} to win.",
        )
    if view.live_primary is not None and view.live_primary != cand:
        return Refusal(
            RefusalCode.LIVE_PRIMARY,
            f"{me} still sees {view.live_primary} alive as the writable primary of term {view.term}; "
            f"electing {cand} now would make two primaries.",
        )
    blocked = promise_refusal(view.memory, now, cand)
    if blocked is not None:
        return blocked
    mine = view.position()
    if not view.witness:
        if mine is None:
            return Refusal(
                RefusalCode.POSITION_UNKNOWN,
                f"{me} does not know its own WAL position (is postgres running?), so it cannot tell "
                f"whether {cand} holds every commit it has; no vote until it does.",
            )
        theirs = (request.timeline, request.wal_lsn)
        if theirs < mine:
            gap = f" ({mine[1] - theirs[1]} bytes)" if theirs[0] == mine[0] else ""
            return Refusal(
                RefusalCode.CANDIDATE_BEHIND,
                f"{cand} is behind {me}: {_fmt(theirs)} against {me}'s {_fmt(mine)}{gap}; electing it "
                f"would lose WAL that {me} holds.",
            )
    vote = Vote(
        voter=me,
        term=term,
        candidate=cand,
        wal_lsn=None if view.witness else view.wal_lsn,
        witness=view.witness,
        at=view.wall,
        timeline=None if view.witness else view.timeline,
    )
    return Grant(vote)


def record_vote(memory: VoterMemory, vote: Vote) -> VoterMemory:
    """Remember a vote before its key is created, so a concurrent promise request sees it."""
    if memory.vote_in(vote.term) is not None:
        return memory
    return replace(memory, votes_cast=tuple(sorted((*memory.votes_cast, (vote.term, vote.candidate)))))


def confirm_vote(vote: Vote, stored: Vote | None) -> Grant | Refusal:
    """After the create-once transaction: ``stored`` is the key's value when it already existed.

    The key is the real guard: a voter that restarted may have forgotten a vote its key keeps.
    """
    if stored is None or stored.candidate == vote.candidate:
        return Grant(stored or vote)
    return Refusal(
        RefusalCode.ALREADY_VOTED,
        f"{vote.voter}'s vote key for term {vote.term} already names {stored.candidate} (cast before a "
        f"restart?); one vote per voter per term, so none for {vote.candidate}.",
    )


@dataclass(frozen=True)
class Tally:
    """The votes of ``term`` as the candidate reads them from etcd."""

    term: int
    candidate: str
    granted: tuple[str, ...]  # voting members who voted for the candidate
    needed: int  # a majority of voting members
    majority: bool  # len(granted) >= needed
    most_advanced_lsn: int | None  # WAL position of the most advanced vote of the term (any candidate)
    missing: tuple[str, ...]  # voting members with no vote in this term yet
    others: tuple[str, ...] = ()  # voting members who voted for someone else
    ahead: tuple[str, ...] = ()  # voters whose reported position is past the candidate's
    may_promote: bool = False  # a majority, the candidate holds data and nobody is ahead of it
    reason: str = ""


def tally(
    votes: Iterable[Vote],
    voting_members: Iterable[str],
    term: int,
    candidate: str,
    position: tuple[int, int] | None = None,
) -> Tally:
    """May ``candidate`` take the leader key for ``term``? (One etcd key per voter per term.)

    The candidate must not be behind any vote of the term, whichever candidate that vote was for,
    so it holds every commit the majority saw. Its position is its own vote's when it voted for
    itself, else ``position`` (timeline, WAL position) as it knows it now.

    Its own vote is not required: a majority of the *other* voters is still a majority, and two
    majorities of one term cannot exist (one vote per voter per term). Requiring it deadlocked a
    term for good: a restarted candidate whose own vote was refused (start-up quiet period) held
    two of three votes, deferred to a peer, and gave that peer its own vote, which the peer's tally
    then missed (its own vote had gone to the first candidate).
    """
    members = list(dict.fromkeys(voting_members))
    by_voter: dict[str, Vote] = {}
    for v in votes:
        if v.term == term and v.voter in members:
            by_voter.setdefault(v.voter, v)
    granted = tuple(sorted(n for n, v in by_voter.items() if v.candidate == candidate))
    others = tuple(sorted(n for n, v in by_voter.items() if v.candidate != candidate))
    missing = tuple(n for n in members if n not in by_voter)
    needed = majority(len(members))
    has_majority = len(granted) >= needed
    positions = {n: p for n, v in by_voter.items() if (p := v.position()) is not None}
    most_advanced = max(positions.values(), default=None)
    base = Tally(
        term,
        candidate,
        granted,
        needed,
        has_majority,
        most_advanced[1] if most_advanced else None,
        missing,
        others,
    )
    own = by_voter.get(candidate)
    count = f"{len(granted)} of {len(members)} votes for term {term} ({needed} needed)"
    mine = own.position() if own is not None and own.candidate == candidate else position
    if own is not None and own.witness:
        mine = None
    if mine is None:
        return replace(base, reason=f"{candidate} holds no data (witness or unknown position) and cannot be promoted.")
    ahead = tuple(sorted(n for n, p in positions.items() if p > mine))
    if ahead:
        return replace(
            base,
            ahead=ahead,
            reason=f"{candidate} ({_fmt(mine)}) is behind {', '.join(ahead)} (best: {_fmt(most_advanced)}); "
            f"promoting it would lose WAL they hold; {count}.",
        )
    if not has_majority:
        waiting = f"; no answer yet from {', '.join(missing)}" if missing else ""
        against = f"; voted for others: {', '.join(others)}" if others else ""
        return replace(base, reason=f"no majority: {count}{against}{waiting}.")
    return replace(
        base,
        may_promote=True,
        reason=f"{candidate} won term {term}: {count}, from {', '.join(granted)}.",
    )


# -- HTTP bodies ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class FieldError:
    """A malformed request: answer ``status`` with ``{"error": message, "field": field}``."""

    field: str
    message: str
    status: int = 400


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _fields(body: object, allowed: tuple[str, ...], example: str) -> dict[str, Any] | FieldError:
    if not isinstance(body, Mapping):
        return FieldError("body", f"body: expected a JSON object like {example}, got {_json_type(body)}")
    unknown = sorted(str(k) for k in body if k not in allowed)
    if unknown:
        return FieldError(unknown[0], f"{unknown[0]}: unknown field (allowed: {', '.join(allowed)})")
    for name in allowed:
        if name not in body:
            return FieldError(name, f"{name}: required field is missing (example: {example})")
    return dict(body)


def _check_name(body: dict[str, Any], field: str) -> str | FieldError:
    value = body[field]
    if not isinstance(value, str):
        return FieldError(field, f"{field}: expected a string (a member name), got {_json_type(value)}")
    if not value or len(value) > 63 or not set(value) <= _NAME_OK:
        shown = repr(value if len(value) <= 40 else value[:40] + "...")
        return FieldError(field, f"{field}: {shown} is not a member name (lowercase letters, digits, '-' and '_')")
    return value


def _check_whole(body: dict[str, Any], field: str, low: int, high: int, what: str) -> int | FieldError:
    value = body[field]
    if isinstance(value, bool) or not isinstance(value, int | float):
        return FieldError(field, f"{field}: expected {what}, got {_json_type(value)}")
    if isinstance(value, float) or not low <= value <= high:
        return FieldError(field, f"{field}: expected {what}, got {value!r}")
    return value


_VOTE_EXAMPLE = '{"candidate": "b", "term": 8, "timeline": 3, "wal_lsn": 50331744}'
_PROMISE_EXAMPLE = '{"primary": "a", "term": 7}'


def parse_vote_request(body: object) -> VoteRequest | FieldError:
    """Validate a decoded ``POST /vote`` body; the error names the first bad field."""
    fields = _fields(body, ("candidate", "term", "timeline", "wal_lsn"), _VOTE_EXAMPLE)
    if isinstance(fields, FieldError):
        return fields
    candidate = _check_name(fields, "candidate")
    term = _check_whole(fields, "term", 1, 2**63 - 1, "a whole number >= 1 (the term wanted)")
    timeline = _check_whole(fields, "timeline", 1, 2**32 - 1, "a whole number >= 1 (the candidate's timeline)")
    wal_lsn = _check_whole(fields, "wal_lsn", 0, MAX_LSN, "a whole number >= 0 (WAL byte position)")
    for value in (candidate, term, timeline, wal_lsn):
        if isinstance(value, FieldError):
            return value
    assert isinstance(candidate, str)
    assert isinstance(term, int) and isinstance(timeline, int) and isinstance(wal_lsn, int)
    return VoteRequest(candidate, term, timeline, wal_lsn)


def parse_promise_request(body: object) -> PromiseRequest | FieldError:
    """Validate a decoded ``POST /promise`` body; the error names the first bad field."""
    fields = _fields(body, ("primary", "term"), _PROMISE_EXAMPLE)
    if isinstance(fields, FieldError):
        return fields
    primary = _check_name(fields, "primary")
    if isinstance(primary, FieldError):
        return primary
    term = _check_whole(fields, "term", 1, 2**63 - 1, "a whole number >= 1 (the primary's term)")
    if isinstance(term, FieldError):
        return term
    return PromiseRequest(primary, term)


def _refusal_body(refusal: Refusal) -> dict[str, Any]:
    return {"granted": False, "code": refusal.code.value, "reason": refusal.reason}


def vote_response(result: Grant | Refusal) -> tuple[int, dict[str, Any]]:
    """The voter's HTTP answer (status, JSON body) once the vote key exists (or for a refusal)."""
    if isinstance(result, Refusal):
        return result.status, _refusal_body(result)
    return 200, {"granted": True, "vote": result.vote.as_dict()}


def promise_response(result: Promise | Refusal) -> tuple[int, dict[str, Any]]:
    if isinstance(result, Refusal):
        return result.status, _refusal_body(result)
    return 200, {
        "granted": True,
        "voter": result.voter,
        "primary": result.primary,
        "term": result.term,
        "ttl": result.ttl,
    }


def _read_refusal(status: int, body: object, voter: str) -> Refusal:
    if isinstance(body, Mapping) and body.get("granted") is False:
        raw = body.get("code")
        try:
            code = RefusalCode(raw) if isinstance(raw, str) else RefusalCode.BAD_ANSWER
        except ValueError:
            code = RefusalCode.BAD_ANSWER
        reason = body.get("reason")
        if isinstance(reason, str) and reason:
            return Refusal(code, reason)
    return Refusal(RefusalCode.BAD_ANSWER, f"{voter} answered HTTP {status} without a valid refusal body.")


def read_vote_response(status: int, body: object, voter: str, request: VoteRequest) -> Vote | Refusal:
    """Candidate side: the vote ``voter`` granted for ``request``, or its refusal."""
    if status != 200 or not isinstance(body, Mapping) or body.get("granted") is not True:
        return _read_refusal(status, body, voter)
    try:
        vote = Vote.from_dict(body.get("vote"))
    except ValueError as exc:
        return Refusal(RefusalCode.BAD_ANSWER, f"{voter} granted a vote that does not parse: {exc}.")
    if (vote.voter, vote.term, vote.candidate) != (voter, request.term, request.candidate):
        return Refusal(
            RefusalCode.BAD_ANSWER,
            f"{voter} answered with a vote of {vote.voter} for {vote.candidate} in term {vote.term}, "
            f"not for {request.candidate} in term {request.term}.",
        )
    return vote


def read_promise_response(
    status: int, body: object, voter: str, request: PromiseRequest, sent_at: float
) -> Promise | Refusal:
    """Primary side: the promise ``voter`` granted, dated at ``sent_at`` (our send time), or why not."""
    if status != 200 or not isinstance(body, Mapping) or body.get("granted") is not True:
        return _read_refusal(status, body, voter)
    ttl = body.get("ttl")
    if isinstance(ttl, bool) or not isinstance(ttl, int | float) or not 0 < ttl < 3600:
        return Refusal(RefusalCode.BAD_ANSWER, f"{voter} granted a promise without a valid ttl ({ttl!r}).")
    answered = (body.get("voter"), body.get("primary"), body.get("term"))
    if answered != (voter, request.primary, request.term):
        return Refusal(
            RefusalCode.BAD_ANSWER,
            f"{voter} answered with a promise of {answered[0]} to {answered[1]} for term {answered[2]}, "
            f"not to {request.primary} for term {request.term}.",
        )
    return Promise(voter, request.primary, request.term, sent_at, float(ttl))
