"""What the HA decision asks the executor to do. Plain immutable data, one class per verb."""

from __future__ import annotations

from dataclasses import dataclass

# Quorum commit's two transitions are actions too: the leader executes them in the resolver's order.
from pgquorum.agent.quorum.sync import SetSyncStandbys, WriteSyncRecord


@dataclass(frozen=True)
class Bootstrap:
    """Win the ``initialize`` race, initdb, start as primary, take the leader key for term 1."""


@dataclass(frozen=True)
class Clone:
    """Empty data directory: pg_basebackup from the leader, then start streaming from it."""

    leader: str


@dataclass(frozen=True)
class StartPostgres:
    """Start the local postgres: as primary when ``as_primary``, else as a standby of ``upstream``.

    ``upstream`` may be None for a standby when there is no leader (it replays local WAL and waits).
    """

    as_primary: bool
    upstream: str | None = None


@dataclass(frozen=True)
class Rejoin:
    """A former primary returns: pg_rewind from the leader (re-clone if impossible), start as standby."""

    leader: str


@dataclass(frozen=True)
class AcquireLeader:
    """Take the leader key and bump the term from ``expected_term`` (one etcd transaction).

    ``votes``: (voter, mod_revision) of the vote keys of term ``expected_term + 1`` that the tally
    counted; the transaction checks each is unchanged (empty: lease-only mode, or bootstrap).
    """

    expected_term: int
    votes: tuple[tuple[str, int], ...] = ()


@dataclass(frozen=True)
class AdvanceTerm:
    """Close a split election: bump etcd's term from ``expected_term`` without taking the leader
    key (one compare-and-swap transaction: no leader key, term unchanged), so that the next
    election, for ``expected_term + 2``, starts with fresh votes (Raft's election timeout)."""

    expected_term: int


@dataclass(frozen=True)
class RequestVotes:
    """Ask every voting member (ourselves included) for its vote for ``term``, then read the vote
    keys of that term back from etcd; the next decision tallies them (invariant I5)."""

    term: int


@dataclass(frozen=True)
class DeleteVotes:
    """Leader bookkeeping: delete the vote keys of settled elections (terms <= ``up_to_term``)."""

    up_to_term: int


@dataclass(frozen=True)
class Promote:
    """We hold the leader key for ``term``: promote the local standby."""

    term: int


@dataclass(frozen=True)
class Fence:
    """Stop accepting writes now (immediate shutdown of postgres).

    ``kind``: the metrics label when the decision knows it better than the cluster state does
    (``no_majority``: the primary lost its majority of promises, invariant I5).
    """

    reason: str
    kind: str | None = None


@dataclass(frozen=True)
class ReleaseLeader:
    """Delete the leader key if it still names us, so a healthy replica can take over."""

    reason: str


@dataclass(frozen=True)
class Follow:
    """Re-point the running standby at a new upstream (primary_conninfo + reload)."""

    leader: str


@dataclass(frozen=True)
class PublishStatus:
    """Leader bookkeeping each loop: the ``status`` key and replication slots for the other members."""

    term: int
    timeline: int
    wal_lsn: int
    slot_members: tuple[str, ...]
    leader: str  # this member: recorded in the key (see LeaderStatus.leader)


@dataclass(frozen=True)
class HandOver:
    """Planned switchover from us (the leader of ``term``) to ``candidate``, losing nothing.

    Stop writes (clean shutdown), wait until the candidate has received the shutdown checkpoint,
    move the leader key to it with a term bump (one CAS), then follow it as a standby.
    """

    candidate: str
    term: int
    kind: str  # switchover | failover, for the history


@dataclass(frozen=True)
class ClearRequest:
    """Remove the pending switchover/failover request; ``failed`` records why it was refused."""

    reason: str
    failed: bool


@dataclass(frozen=True)
class RestartPostgres:
    """Operator-requested restart; a leader keeps its key and comes back as primary."""

    as_primary: bool


@dataclass(frozen=True)
class Reinitialize:
    """Operator-requested: wipe this replica's data directory and clone it again from the leader."""

    leader: str


Action = (
    Bootstrap
    | Clone
    | StartPostgres
    | Rejoin
    | AcquireLeader
    | AdvanceTerm
    | RequestVotes
    | DeleteVotes
    | Promote
    | Fence
    | ReleaseLeader
    | Follow
    | PublishStatus
    | HandOver
    | ClearRequest
    | RestartPostgres
    | Reinitialize
    | SetSyncStandbys
    | WriteSyncRecord
)
