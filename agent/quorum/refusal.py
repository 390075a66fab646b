"""Why a voter said no: a code for programs (and the HTTP status) and a sentence for the log.

Shared by votes (``POST /vote``) and failsafe promises (``POST /promise``). 409 means "no, for a
reason about the cluster or the candidate"; 503 means "this voter cannot answer yet, ask again".
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class RefusalCode(enum.StrEnum):
    # The voter cannot judge right now (503: retry later or count it as missing).
    ETCD_UNREACHABLE = "etcd_unreachable"  # a vote only counts once its etcd key exists
    STARTING = "starting"  # restarted less than ttl ago: may have forgotten a promise
    POSITION_UNKNOWN = "position_unknown"  # data voter that cannot read its own WAL position
    NOT_SYNCED = "not_synced"  # promise: etcd not read since start, own votes unknown
    # A judgment (409).
    WRONG_TERM = "wrong_term"
    LEADER_KEY_HELD = "leader_key_held"
    LIVE_PRIMARY = "live_primary"
    PROMISED = "promised"
    ALREADY_VOTED = "already_voted"
    CANDIDATE_BEHIND = "candidate_behind"
    NEWER_TERM = "newer_term"
    VOTED_NEWER = "voted_newer"
    RELEASED = "released"  # promise: that primary released its promises when it stopped
    # Client side only: the peer answered something that is not a valid answer.
    BAD_ANSWER = "bad_answer"

    @property
    def status(self) -> int:
        """The HTTP status a voter's API answers with."""
        return _STATUS[self]


_STATUS = {
    RefusalCode.ETCD_UNREACHABLE: 503,
    RefusalCode.STARTING: 503,
    RefusalCode.POSITION_UNKNOWN: 503,
    RefusalCode.NOT_SYNCED: 503,
    RefusalCode.WRONG_TERM: 409,
    RefusalCode.LEADER_KEY_HELD: 409,
    RefusalCode.LIVE_PRIMARY: 409,
    RefusalCode.PROMISED: 409,
    RefusalCode.ALREADY_VOTED: 409,
    RefusalCode.CANDIDATE_BEHIND: 409,
    RefusalCode.NEWER_TERM: 409,
    RefusalCode.VOTED_NEWER: 409,
    RefusalCode.RELEASED: 409,
    RefusalCode.BAD_ANSWER: 502,
}


@dataclass(frozen=True)
class Refusal:
    code: RefusalCode
    reason: str  # a full sentence naming the members and terms involved

    @property
    def status(self) -> int:
        return self.code.status
