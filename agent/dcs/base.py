"""The distributed configuration store as the agent sees it: a small interface, etcd behind it.

Key layout under ``/<prefix>/<cluster>/`` (prefix defaults to ``pgquorum``):

==================  ==========================================================================
``initialize``      created once (create_revision == 0) by the member that bootstraps; value ""
                    while bootstrapping, then the PostgreSQL system identifier
``leader``          member name, attached to the leader's lease; taken only by a transaction that
                    also bumps ``term``; renewed by lease keepalive; changed/deleted only by CAS
``term``            decimal counter (fencing token), bumped in the same transaction as ``leader``
``status``          JSON LeaderStatus written by the leader every loop (no lease)
``members/<name>``  JSON MemberInfo, attached to the member's lease
``config``          JSON dynamic configuration
``switchover``      JSON SwitchoverRequest: a pending switchover / manual failover
``sync``            JSON SyncRecord ``{leader, k, voters}``: the quorum-commit promise (invariant
                    I4), written only by the leader, by CAS on its mod revision in the same
                    transaction that checks the leader key still names the writer
``voters/<name>``   JSON ``{"witness": bool}``: a voting member (invariant I5), created once by the
                    member itself (create_revision == 0), no lease: a dead voter still counts, so
                    the majority never shrinks with the members that died. Removed only by hand
                    (one at a time, with every member of the old and new set agreeing)
``votes/<t>/<v>``   JSON Vote: voter ``v``'s vote for term ``t``, created once by the voter in a
                    transaction that also checks ``term == t - 1`` and no ``leader`` key; no lease.
                    The winner's ``leader``+``term`` transaction checks every vote it counted is
                    unchanged (mod_revision). The leader deletes the votes of terms <= its own
==================  ==========================================================================

History entries live beside that range, under ``/<prefix>/<cluster>.history/<term, zero-padded>``,
so the per-loop read of the cluster does not grow with every failover.

Every method has a bounded duration (the implementation's request timeout) and raises
``DCSError`` on any failure to reach or understand etcd: never another exception type, so the HA
loop can treat "etcd unreachable" as one state.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from pgquorum.agent.model import (
    ClusterState,
    HistoryEntry,
    LeaderStatus,
    MemberInfo,
    SwitchoverRequest,
    SyncRecord,
    VoterEntry,
)
from pgquorum.agent.quorum.votes import Vote


class DCSError(Exception):
    """etcd could not be reached, timed out, or answered something unexpected."""


class DCS(Protocol):
    def get_cluster(self) -> ClusterState:
        """One range read of every key of this cluster (consistent at one revision)."""
        ...

    def ensure_lease(self) -> int:
        """Grant this agent's lease (``ttl`` seconds) if it has none or it expired; returns its id."""
        ...

    def keepalive(self) -> bool:
        """Renew this agent's lease once. False if the lease no longer exists (expired/revoked)."""
        ...

    def touch_member(self, member: MemberInfo) -> None:
        """Write ``members/<name>`` on this agent's lease (granting one first if needed)."""
        ...

    def delete_member(self, name: str) -> None: ...

    def claim_initialize(self) -> bool:
        """Create ``initialize`` = "" if absent. True: we won the bootstrap race."""
        ...

    def set_initialized(self, system_id: str) -> None:
        """Store the system identifier in ``initialize`` (after a successful bootstrap)."""
        ...

    def cancel_initialize(self) -> None:
        """Delete ``initialize`` if it is still "" (our bootstrap failed, let another member try)."""
        ...

    def acquire_leader(self, name: str, expected_term: int, votes: Sequence[tuple[str, int]] = ()) -> int | None:
        """Take the leader key and bump the term in one transaction.

        Succeeds only if no leader key exists and ``term`` still equals ``expected_term``, and, for
        each ``(voter, mod_revision)`` in ``votes``, ``votes/<expected_term + 1>/<voter>`` is unchanged.
        Returns the new term (expected_term + 1) or None if another member won / the term moved.
        """
        ...

    def advance_term(self, expected_term: int) -> bool:
        """Bump the term to ``expected_term + 1`` without a leader (a split election is closed):
        only if no leader key exists and ``term`` still equals ``expected_term``. True if bumped."""
        ...

    def read_term_and_leader(self) -> tuple[int, str | None]:
        """A fresh read of the term counter and the leader key's value (None: no leader)."""
        ...

    def create_vote(self, vote: Vote) -> tuple[bool, Vote | None]:
        """Create ``votes/<vote.term>/<vote.voter>`` if absent, the term is still ``vote.term - 1``
        and no leader key exists. Returns (created, the key's value when it already existed)."""
        ...

    def get_votes(self, term: int) -> list[tuple[Vote, int]]:
        """Every vote of ``term`` with its key's mod_revision (malformed ones skipped)."""
        ...

    def delete_votes(self, up_to_term: int) -> int:
        """Delete the vote keys of every term <= ``up_to_term`` (settled elections); returns how many."""
        ...

    def register_voter(self, entry: VoterEntry) -> bool:
        """Create ``voters/<name>`` if absent. True if created now."""
        ...

    def release_leader(self, name: str) -> bool:
        """Delete the leader key only if it still names us. True if deleted."""
        ...

    def handover_leader(self, old: str, new: str, expected_term: int) -> int | None:
        """Switchover: replace leader ``old`` by ``new`` and bump the term, both by compare-and-swap.

        The key is put on the *new* leader's lease (looked up from its member key's lease).
        Returns the new term or None.
        """
        ...

    def write_status(self, status: LeaderStatus) -> None: ...

    def append_history(self, entry: HistoryEntry) -> None: ...

    def get_history(self) -> list[HistoryEntry]: ...

    def set_config(self, config: dict[str, Any], expected_revision: int | None = None) -> bool: ...

    def set_switchover(self, request: SwitchoverRequest) -> None:
        """Store (replace) the pending switchover / failover request."""
        ...

    def clear_switchover(self) -> None:
        """Delete the pending request (done, or no longer applicable)."""
        ...

    def write_sync(self, record: SyncRecord, expected_revision: int) -> bool:
        """Store the ``sync`` record if the leader key names ``record.leader`` and the ``sync`` key's
        mod revision still is ``expected_revision`` (0: absent). False when either moved."""
        ...

    def close(self) -> None:
        """Revoke nothing: a closing agent's keys expire with its lease (release_leader is explicit)."""
        ...
