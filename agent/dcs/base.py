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
``sync``            JSON SyncRecord ``{leader, k, voters}``: the quorum-commit promise (DESIGN
                    2.4), written only by the leader, by CAS on its mod revision in the same
                    transaction that checks the leader key still names the writer
==================  ==========================================================================

History entries live beside that range, under ``/<prefix>/<cluster>.history/<term, zero-padded>``,
so the per-loop read of the cluster does not grow with every failover.

Every method has a bounded duration (the implementation's request timeout) and raises
``DCSError`` on any failure to reach or understand etcd: never another exception type, so the HA
loop can treat "etcd unreachable" as one state.
"""

from __future__ import annotations

from typing import Any, Protocol

from pgquorum.agent.model import (
    ClusterState,
    HistoryEntry,
    LeaderStatus,
    MemberInfo,
    SwitchoverRequest,
    SyncRecord,
)


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

    def acquire_leader(self, name: str, expected_term: int) -> int | None:
        """Take the leader key and bump the term in one transaction.

        Succeeds only if no leader key exists and ``term`` still equals ``expected_term``.
        Returns the new term (expected_term + 1) or None if another member won / the term moved.
        """
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
