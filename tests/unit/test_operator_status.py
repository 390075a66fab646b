"""PostgresCluster .status and its Failover event: pure functions of what was observed."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from pgquorum.agent.model import ClusterState, HistoryEntry, LeaderInfo, MemberInfo, Role, SyncRecord
from pgquorum.operator.observed import MemberKind, Observed, PodView
from pgquorum.operator.status import Desired, Phase, cluster_status, failover_event

NOW = datetime(2026, 12, 4, 6, 0, tzinfo=UTC)
DESIRED = Desired(members=("pg-0", "pg-1", "pg-2"), witnesses=(), quorum_mode=True, generation=2)
BOOT = HistoryEntry(term=1, timeline=1, new_leader="pg-0", old_leader=None, reason="bootstrap", at=1e9)
FAILOVER = HistoryEntry(
    term=2, timeline=2, new_leader="pg-1", old_leader="pg-0", reason="leader lease expired", at=1e9 + 60
)


def pods(primary: str | None, ready: tuple[str, ...] = ("pg-0", "pg-1", "pg-2")) -> tuple[PodView, ...]:
    return tuple(
        PodView(n, MemberKind.DATA, "Running", n in ready, "primary" if n == primary else "replica", "n1", "h", False)
        for n in DESIRED.members
    )


def world(
    leader: str | None, term: int, history: tuple[HistoryEntry, ...], ready: tuple[str, ...] = DESIRED.members
) -> Observed:
    members = tuple(
        MemberInfo(n, Role.LEADER if n == leader else Role.REPLICA, "running", "u", "c", term, 100, 100, 100)
        for n in DESIRED.members
        if n in ready
    )
    etcd = ClusterState(
        revision=7,
        initialize="sys",
        leader=LeaderInfo(leader, 3, 1) if leader else None,
        term=term,
        members=members,
        sync=SyncRecord(leader, 1, DESIRED.members) if leader else None,
    )
    return Observed(pods=pods(leader, ready), etcd=etcd, history=history)


def cond(status: dict[str, Any], type_: str) -> dict[str, Any]:
    return next(c for c in status["conditions"] if c["type"] == type_)


def test_a_failover_through_a_leaderless_reconcile_is_announced_once() -> None:
    before = cluster_status(world("pg-0", 1, (BOOT,)), DESIRED, None, NOW)
    assert before["phase"] == Phase.HEALTHY and "lastFailover" not in before
    # the killed leader's key expired: nobody leads for a moment
    gap = cluster_status(world(None, 1, (BOOT,), ready=("pg-1", "pg-2")), DESIRED, before, NOW)
    assert gap["phase"] == Phase.UNAVAILABLE and "leader" not in gap
    assert failover_event(before, gap) is None
    after = cluster_status(world("pg-1", 2, (BOOT, FAILOVER), ready=("pg-1", "pg-2")), DESIRED, gap, NOW)
    assert after["leader"] == "pg-1" and after["lastFailover"]["to"] == "pg-1"
    assert failover_event(gap, after) == ("Failover", "pg-0 -> pg-1 (term 2): leader lease expired")
    # the next reconcile, and an operator restarting from the stored status, say nothing again
    again = cluster_status(world("pg-1", 2, (BOOT, FAILOVER)), DESIRED, after, NOW)
    assert failover_event(after, again) is None
    assert failover_event(None, again) is None


def test_conditions_keep_their_transition_time_while_they_hold() -> None:
    first = cluster_status(world("pg-0", 1, (BOOT,)), DESIRED, None, NOW)
    later = cluster_status(world("pg-0", 1, (BOOT,)), DESIRED, first, NOW + timedelta(minutes=5))
    assert cond(later, "Ready")["lastTransitionTime"] == cond(first, "Ready")["lastTransitionTime"]
    degraded = cluster_status(
        world("pg-0", 1, (BOOT,), ready=("pg-0", "pg-1")), DESIRED, later, NOW + timedelta(minutes=6)
    )
    assert degraded["phase"] == Phase.DEGRADED and degraded["readyInstances"] == 2
    assert cond(degraded, "Ready")["status"] == "False" and "pg-2" in cond(degraded, "Ready")["message"]
    assert cond(degraded, "Ready")["lastTransitionTime"] == "2026-12-04T06:06:00Z"
    assert cond(degraded, "Available")["status"] == "True"


def test_etcd_unreachable_keeps_the_last_known_leader_and_says_why() -> None:
    before = cluster_status(world("pg-0", 1, (BOOT,)), DESIRED, None, NOW)
    blind = cluster_status(Observed(pods=pods("pg-0"), etcd_error="etcd: connection refused"), DESIRED, before, NOW)
    assert blind["leader"] == "pg-0" and blind["term"] == 1
    assert cond(blind, "Available")["reason"] == "EtcdUnreachable"
    assert blind["quorum"]["provable"] is False and "etcd unreachable" in blind["quorum"]["reason"]
    assert failover_event(before, blind) is None


def test_quorum_is_provable_only_with_the_leaders_own_record() -> None:
    ok = cluster_status(world("pg-0", 1, (BOOT,)), DESIRED, None, NOW)
    assert ok["quorum"]["provable"] is True and "1 of pg-0, pg-1, pg-2" in ok["quorum"]["reason"]
    async_ = Desired(DESIRED.members, (), quorum_mode=False, generation=2)
    assert cluster_status(world("pg-0", 1, (BOOT,)), async_, None, NOW)["quorum"]["provable"] is False
