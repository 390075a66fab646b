"""The failover candidate's quorum check (invariant I3 (e), 2.4): pure, on plain data.

Postgres acknowledged a commit only once ``k`` standbys of the record's voters flushed it, so any
``n - k + 1`` voters include one that has it (``agent/quorum/sync.py`` keeps that true at every
instant). A candidate that heard WAL positions from that many voters -- itself included when it is
one -- and is at least as advanced as each of them therefore holds every acknowledged commit: WAL
is a single stream, so being ahead of the voter that has a commit means having the commit.

Positions must be fresh: a voter's API answer is up to one loop old, and until the old primary
fenced itself a standby could still confirm commits. The caller reads voters' postgres directly
(``PeerStatus.direct_lsn``) and passes the larger of the two numbers.

No quorum record yet (quorum commit not established: the first standbys had not joined when the
bootstrap leader was lost): under ``required`` that leader acknowledged nothing without standbys,
and every write it did acknowledge it holds itself, so the last leader — named in the ``status`` key
it wrote — may take its key back; anyone else could lack those writes and is refused. Without this,
losing the bootstrap leader's lease that early left a cluster no member could ever lead.

``required``: no proof, no promotion. ``preferred``: promote anyway, with an alert and the
possible-loss flag (counted in metrics). A voter ahead of us refuses in both: it should win instead.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from pgquorum.agent.model import SyncRecord, lsn_to_str
from pgquorum.agent.quorum.sync import Durability, Quorum


@dataclass(frozen=True)
class CandidateVerdict:
    eligible: bool
    proven: bool  # the candidate provably holds every acknowledged commit
    reason: str
    alert: str | None = None

    @property
    def possible_loss(self) -> bool:
        """Eligible without proof (preferred): acknowledged commits may be lost by this promotion."""
        return self.eligible and not self.proven


def check_candidate(
    record: SyncRecord | None,
    me: str,
    my_lsn: int | None,
    voter_lsns: Mapping[str, int | None],
    durability: Durability,
    last_leader: str | None = None,
) -> CandidateVerdict:
    """May ``me`` be promoted as far as quorum commit is concerned?

    ``voter_lsns``: the WAL positions heard from peers (None or absent: not heard); entries for
    non-voters are ignored, and ``me``'s own position is ``my_lsn``. ``last_leader``: who wrote the
    ``status`` key (None: unknown).
    """
    quorum = Quorum.of(record)
    if my_lsn is None:
        return CandidateVerdict(False, False, f"{me} knows no WAL position of its own")
    if record is None and last_leader == me:
        beyond = {v: pos for v, pos in voter_lsns.items() if pos is not None and pos > my_lsn}
        if beyond:
            who, pos = max(beyond.items(), key=lambda item: item[1])
            return CandidateVerdict(
                False, False, f"{who} is ahead of the last leader: {lsn_to_str(pos)} > our {lsn_to_str(my_lsn)}"
            )
        return CandidateVerdict(
            True,
            True,
            "no quorum record yet and we are the last leader (status key): "
            "every write acknowledged so far was acknowledged by us",
        )
    if not quorum.provable:
        why = (
            "no quorum record in etcd (quorum commit not established yet)"
            if record is None
            else f"the quorum record promises nothing (k={record.k}, voters {', '.join(record.voters) or 'none'})"
        )
        return _unproven(why, durability)
    seen: dict[str, int] = {}
    for voter in sorted(quorum.voters):
        lsn = my_lsn if voter == me else voter_lsns.get(voter)
        if lsn is not None:
            seen[voter] = lsn
    ahead = {v: lsn for v, lsn in seen.items() if lsn > my_lsn}
    if ahead:
        v, lsn = max(ahead.items(), key=lambda item: item[1])
        return CandidateVerdict(
            False, False, f"{v} is ahead: {lsn_to_str(lsn)} > our {lsn_to_str(my_lsn)}; it should be promoted, not us"
        )
    needed = quorum.reads
    n, k = len(quorum.voters), quorum.k
    if len(seen) < needed:
        missing = sorted(quorum.voters - set(seen))
        why = (
            f"saw {len(seen)} of the {needed} voters needed (n-k+1 = {n}-{k}+1 = {needed}); "
            f"no WAL position from {', '.join(missing)}"
        )
        return _unproven(why, durability)
    return CandidateVerdict(
        True,
        True,
        f"quorum proven: {len(seen)} of {n} voters seen ({needed} needed), none ahead of our {lsn_to_str(my_lsn)}",
    )


def _unproven(why: str, durability: Durability) -> CandidateVerdict:
    if durability is Durability.REQUIRED:
        return CandidateVerdict(
            False,
            False,
            f"quorum cannot be proven: {why}; durability required refuses to promote",
            alert=f"failover refused: quorum cannot be proven ({why})",
        )
    return CandidateVerdict(
        True,
        False,
        f"quorum cannot be proven: {why}; durability preferred promotes anyway",
        alert=f"promoting without a proven quorum, acknowledged writes may be lost ({why})",
    )
