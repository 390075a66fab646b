"""What the HA loop shows the REST API and the metrics: its last snapshot, and a member's role.

Kept apart from ``loop.py`` (which drives PostgreSQL through psycopg) so that the witness, which
runs no PostgreSQL, serves the same API without importing psycopg.
"""

from __future__ import annotations

from dataclasses import dataclass

from pgquorum.agent.config import SyncSettings
from pgquorum.agent.ha.decide import Decision, Memory
from pgquorum.agent.model import ClusterState, PostgresState, Role, SyncObservation


@dataclass(frozen=True)
class LoopView:
    """What the REST API shows: the last snapshot the loop worked on."""

    cluster: ClusterState | None
    pg: PostgresState
    decision: Decision | None
    dcs_ok: bool
    last_loop_at: float
    sync_obs: SyncObservation | None = None  # leader in quorum mode: its postgres's quorum state
    sync: SyncSettings | None = None  # quorum-commit settings in force for this loop
    witness: bool = False  # a witness's loop: no PostgreSQL, its role is always ``witness``


def role_of(pg: PostgresState, memory: Memory, cluster: ClusterState | None, me: str) -> Role:
    if not pg.data_initialized:
        return Role.UNINITIALIZED
    if not pg.running:
        return Role.STOPPED
    if pg.in_recovery is False:
        return Role.LEADER if memory.leader_term is not None else Role.DEMOTED
    leader = cluster.leader.name if cluster and cluster.leader else None
    if leader is not None and pg.upstream == leader and pg.streaming:
        return Role.REPLICA
    return Role.STANDBY


def view_role(view: LoopView, memory: Memory, me: str) -> Role:
    """This member's role as the API and metrics show it."""
    return Role.WITNESS if view.witness else role_of(view.pg, memory, view.cluster, me)
