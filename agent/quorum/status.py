"""Quorum commit as GET /cluster shows it: settings, the etcd record, postgres, and whether a failover
could prove it holds every acknowledged commit right now. Pure: a dict from plain data."""

from __future__ import annotations

from typing import Any

from pgquorum.agent.config import SyncSettings
from pgquorum.agent.model import ClusterState, Role, SyncObservation
from pgquorum.agent.quorum.candidate import CandidateVerdict
from pgquorum.agent.quorum.sync import Quorum, SyncPlan


def failover_outlook(cluster: ClusterState) -> tuple[bool, str]:
    """Could a failover prove its quorum now? Counts the record's voters whose member key shows them
    streaming or standing by (an estimate from published state; the race itself asks them directly)."""
    record = cluster.sync
    quorum = Quorum.of(record)
    if record is None:
        return False, "quorum cannot be proven: no quorum record in etcd yet"
    if not quorum.provable:
        return False, "quorum cannot be proven: the record promises nothing (asynchronous commit)"
    up = sorted(
        v
        for v in quorum.voters
        if (m := cluster.member(v)) is not None and m.role in (Role.REPLICA, Role.STANDBY) and m.best_lsn() is not None
    )
    down = sorted(quorum.voters - set(up))
    needed = quorum.reads
    if len(up) >= needed:
        return True, f"a failover can prove the quorum: {len(up)} of the {needed} voters it must read are up"
    return False, (
        f"quorum cannot be proven: a failover must read {needed} voters (n-k+1), only {len(up)} up "
        f"({', '.join(up) or 'none'}); missing {', '.join(down)}"
    )


def sync_status(
    settings: SyncSettings,
    cluster: ClusterState,
    plan: SyncPlan | None = None,
    verdict: CandidateVerdict | None = None,
    observation: SyncObservation | None = None,
) -> dict[str, Any]:
    record = cluster.sync
    provable, why = failover_outlook(cluster)
    body: dict[str, Any] = {
        "mode": settings.mode,
        "k": settings.k,
        "durability": settings.durability,
        "record": None
        if record is None
        else {"leader": record.leader, "k": record.k, "voters": list(record.voters), "reads": Quorum.of(record).reads},
        "postgres": observation.standby_names if observation is not None else None,  # the leader's only
        "provable": provable,
        "reason": why,
    }
    if plan is not None:
        body["leader"] = {"target": str(plan.pg_target), "reason": plan.reason, "waiting": plan.waiting}
        body["alert"] = plan.alert
    if verdict is not None:
        body["candidate"] = {"eligible": verdict.eligible, "proven": verdict.proven, "reason": verdict.reason}
    return body
