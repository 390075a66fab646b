"""The operator's next step, from plain data: creations at once, then one disruptive step at a time
in the order that keeps the majority and acknowledged writes: scale-down hands over before the
leader's pod goes, votes go only once the agent is gone, rolling updates take replicas first."""

from __future__ import annotations

from dataclasses import replace

from pgquorum.agent.model import ClusterState, HistoryEntry, LeaderInfo, MemberInfo, Role, SyncRecord, VoterEntry
from pgquorum.operator.observed import MemberKind, Observed, PodView
from pgquorum.operator.reconcile import Manifest, MemberTarget, Plan, StepKind, Target, plan

BOOT = HistoryEntry(term=1, timeline=1, new_leader="pg-0", old_leader=None, reason="bootstrap", at=1e9)


def manifest(kind: str, name: str, hash_: str = "h1") -> Manifest:
    return Manifest(kind, name, {"kind": kind, "metadata": {"name": name}}, hash_)


def member(name: str, hash_: str = "h1", kind: MemberKind = MemberKind.DATA) -> MemberTarget:
    pvc = manifest("PersistentVolumeClaim", f"{name}-data") if kind is MemberKind.DATA else None
    return MemberTarget(name, kind, manifest("Pod", name, hash_), pvc)


def target(*names: str, hash_: str = "h1", delete_pvcs: bool = False, min_data: int = 1) -> Target:
    return Target((manifest("Service", "pg-rw"),), tuple(member(n, hash_) for n in names), delete_pvcs, min_data)


def pod(name: str, ready: bool = True, hash_: str = "h1", role: str = "replica", **kw: object) -> PodView:
    args: dict[str, object] = {
        "name": name,
        "kind": MemberKind.DATA,
        "phase": "Running",
        "ready": ready,
        "role": role,
        "node": "node1",
        "spec_hash": hash_,
        "deleting": False,
    }
    args.update(kw)
    return PodView(**args)  # type: ignore[arg-type]


def etcd(
    leader: str | None, members: dict[str, Role], voters: list[str], lsn: dict[str, int] | None = None
) -> ClusterState:
    lsn = lsn or {}
    return ClusterState(
        revision=10,
        initialize="sys",
        leader=LeaderInfo(leader, 5, 1) if leader else None,
        term=3,
        members=tuple(
            MemberInfo(n, r, "running", f"http://{n}:8008", f"postgres://{n}:5432/postgres", 1, lsn.get(n, 100))
            for n, r in members.items()
        ),
        voters=tuple(VoterEntry(v) for v in voters),
    )


def healthy(names: list[str], leader: str = "pg-0", **pod_kw: object) -> Observed:
    roles = {n: Role.LEADER if n == leader else Role.REPLICA for n in names}
    return Observed(
        pods=tuple(pod(n, role="primary" if n == leader else "replica", **pod_kw) for n in names),  # type: ignore[arg-type]
        etcd=etcd(leader, roles, names),
    )


def existing_for(names: list[str]) -> dict[tuple[str, str], str | None]:
    return {("Service", "pg-rw"): "h1", **{("PersistentVolumeClaim", f"{n}-data"): None for n in names}}


def kinds(p: Plan) -> list[tuple[StepKind, str]]:
    return [(s.kind, s.name) for s in p.steps]


def test_a_new_cluster_gets_every_object_at_once() -> None:
    p = plan(target("pg-0", "pg-1", "pg-2"), Observed(), {})
    assert kinds(p) == [
        (StepKind.APPLY, "pg-rw"),
        (StepKind.APPLY, "pg-0-data"),
        (StepKind.APPLY, "pg-0"),
        (StepKind.APPLY, "pg-1-data"),
        (StepKind.APPLY, "pg-1"),
        (StepKind.APPLY, "pg-2-data"),
        (StepKind.APPLY, "pg-2"),
    ]


def test_a_healthy_cluster_needs_nothing_and_a_changed_object_is_reapplied() -> None:
    names = ["pg-0", "pg-1", "pg-2"]
    assert plan(target(*names), healthy(names), existing_for(names)) == Plan()
    changed = {**existing_for(names), ("Service", "pg-rw"): "old"}
    assert kinds(plan(target(*names), healthy(names), changed)) == [(StepKind.APPLY, "pg-rw")]


def test_a_failed_pod_is_deleted_to_be_recreated() -> None:
    names = ["pg-0", "pg-1", "pg-2"]
    obs = healthy(names)
    obs = Observed(pods=(*obs.pods[:2], pod("pg-2", ready=False, phase="Failed")), etcd=obs.etcd)
    assert (StepKind.DELETE_POD, "pg-2") in kinds(plan(target(*names), obs, existing_for(names)))


def test_scale_down_removes_the_highest_replica_then_its_vote_once_the_agent_is_gone() -> None:
    names = ["pg-0", "pg-1", "pg-2"]
    p = plan(target("pg-0", "pg-1"), healthy(names), existing_for(names))
    assert kinds(p) == [(StepKind.DELETE_POD, "pg-2")]
    # pod gone, but its agent's member key has not expired yet: wait
    gone = Observed(
        pods=healthy(names).pods[:2],
        etcd=etcd("pg-0", {"pg-0": Role.LEADER, "pg-1": Role.REPLICA, "pg-2": Role.REPLICA}, names),
    )
    p = plan(target("pg-0", "pg-1"), gone, existing_for(names))
    assert p.steps == () and p.waiting is not None and "pg-2" in p.waiting
    expired = Observed(pods=gone.pods, etcd=etcd("pg-0", {"pg-0": Role.LEADER, "pg-1": Role.REPLICA}, names))
    assert kinds(plan(target("pg-0", "pg-1"), expired, existing_for(names))) == [(StepKind.RETIRE_VOTER, "pg-2")]


def test_the_pvc_of_a_removed_member_goes_only_with_the_delete_policy_and_after_its_vote() -> None:
    names = ["pg-0", "pg-1"]
    obs = Observed(pods=healthy(names).pods, etcd=etcd("pg-0", {"pg-0": Role.LEADER, "pg-1": Role.REPLICA}, names))
    have = existing_for(["pg-0", "pg-1", "pg-2"])
    assert plan(target(*names), obs, have) == Plan()
    assert kinds(plan(target(*names, delete_pvcs=True), obs, have)) == [(StepKind.DELETE_PVC, "pg-2-data")]


def test_scale_down_of_the_leader_hands_over_first_to_the_most_caught_up_replica() -> None:
    names = ["pg-0", "pg-1", "pg-2"]
    obs = Observed(
        pods=tuple(pod(n, role="primary" if n == "pg-2" else "replica") for n in names),
        etcd=etcd(
            "pg-2",
            {"pg-0": Role.REPLICA, "pg-1": Role.REPLICA, "pg-2": Role.LEADER},
            names,
            lsn={"pg-0": 90, "pg-1": 120, "pg-2": 130},
        ),
    )
    p = plan(target("pg-0", "pg-1"), obs, existing_for(names))
    assert [(s.kind, s.name, s.target) for s in p.steps] == [(StepKind.SWITCHOVER, "pg-2", "pg-1")]


def test_no_disruption_without_a_leader_or_while_a_member_is_not_ready() -> None:
    names = ["pg-0", "pg-1", "pg-2"]
    leaderless = Observed(pods=healthy(names).pods, etcd=etcd(None, {n: Role.REPLICA for n in names}, names))
    p = plan(target("pg-0", "pg-1"), leaderless, existing_for(names))
    assert p.steps == () and p.waiting == "no leader: no membership change until one serves"
    obs = healthy(names)
    slow = Observed(pods=(obs.pods[0], pod("pg-1", ready=False), obs.pods[2]), etcd=obs.etcd)
    p = plan(target("pg-0", "pg-1"), slow, existing_for(names))
    assert p.steps == () and p.waiting == "waiting for pg-1 to be ready"
    p = plan(target(*names), Observed(pods=obs.pods), existing_for(names))
    assert p.waiting is None  # nothing to change: etcd being down does not matter


def test_a_rolling_update_takes_replicas_one_at_a_time_and_the_leader_last() -> None:
    names = ["pg-0", "pg-1", "pg-2"]
    new = target(*names, hash_="h2")
    assert kinds(plan(new, healthy(names, hash_="h1"), existing_for(names))) == [(StepKind.DELETE_POD, "pg-1")]
    obs = healthy(names)
    one_done = Observed(pods=(obs.pods[0], pod("pg-1", hash_="h2"), obs.pods[2]), etcd=obs.etcd)
    assert kinds(plan(new, one_done, existing_for(names))) == [(StepKind.DELETE_POD, "pg-2")]
    replicas_done = Observed(pods=(obs.pods[0], pod("pg-1", hash_="h2"), pod("pg-2", hash_="h2")), etcd=obs.etcd)
    p = plan(new, replicas_done, existing_for(names))
    assert [(s.kind, s.name) for s in p.steps] == [(StepKind.SWITCHOVER, "pg-0")]
    assert p.steps[0].target in ("pg-1", "pg-2")


def test_too_few_members_for_quorum_commit_is_refused_and_nothing_is_removed() -> None:
    names = ["pg-0", "pg-1", "pg-2"]
    p = plan(target("pg-0", min_data=2), healthy(names), existing_for(names))
    assert p.refused is not None and "instances: 1 data members" in p.refused and "k + 1" in p.refused
    assert all(s.kind is StepKind.APPLY for s in p.steps)


def test_a_lost_leader_pod_waits_for_the_failover_before_it_is_recreated() -> None:
    names = ["pg-0", "pg-1", "pg-2"]
    obs = healthy(names)  # pg-0 leads
    lost = Observed(pods=obs.pods[1:], etcd=obs.etcd)  # its key has not expired yet
    p = plan(target(*names), lost, existing_for(names))
    assert p.steps == () and p.waiting is not None and "pg-0 is recreated once another member leads" in p.waiting
    keyless = Observed(pods=obs.pods[1:], etcd=etcd(None, {"pg-1": Role.REPLICA, "pg-2": Role.REPLICA}, names))
    assert plan(target(*names), keyless, existing_for(names)).steps == ()
    failed_over = Observed(pods=obs.pods[1:], etcd=etcd("pg-1", {"pg-1": Role.LEADER, "pg-2": Role.REPLICA}, names))
    assert kinds(plan(target(*names), failed_over, existing_for(names))) == [(StepKind.APPLY, "pg-0")]
    # a lost replica is recreated at once
    lost_replica = Observed(pods=(obs.pods[0], obs.pods[2]), etcd=obs.etcd)
    assert kinds(plan(target(*names), lost_replica, existing_for(names))) == [(StepKind.APPLY, "pg-1")]
    # nobody left to take over: recreate it
    alone = Observed(pods=(), etcd=obs.etcd)
    assert (StepKind.APPLY, "pg-0") in kinds(plan(target(*names), alone, existing_for(names)))


def test_a_lost_leader_is_recreated_at_once_when_no_failover_can_happen_without_it() -> None:
    """Quorum commit with durability required: the agents promote only with the leader's quorum
    record; lost before the record was written, waiting for a failover would wait forever."""
    names = ["pg-0", "pg-1", "pg-2"]
    obs = healthy(names)
    needs = replace(target(*names), promotion_needs_quorum=True)
    keyless = etcd(None, {"pg-1": Role.REPLICA, "pg-2": Role.REPLICA}, names)
    no_record = Observed(pods=obs.pods[1:], etcd=keyless, history=(BOOT,))
    assert kinds(plan(needs, no_record, existing_for(names))) == [(StepKind.APPLY, "pg-0")]
    with_record = Observed(
        pods=obs.pods[1:], etcd=replace(keyless, sync=SyncRecord("pg-0", 1, tuple(names))), history=(BOOT,)
    )
    assert plan(needs, with_record, existing_for(names)).steps == ()


def test_a_rolling_update_waits_for_a_recreated_member_to_join_the_quorum_before_the_next() -> None:
    """Quorum commit, k 1, durability required: pg-1 was just recreated and is not in the leader's
    record yet; taking pg-2 down now would leave commits waiting for nobody."""
    names = ["pg-0", "pg-1", "pg-2"]
    new = replace(target(*names, hash_="h2"), promotion_needs_quorum=True)
    obs = healthy(names)
    assert obs.etcd is not None
    pods = (obs.pods[0], pod("pg-1", hash_="h2"), obs.pods[2])
    joining = Observed(pods=pods, etcd=replace(obs.etcd, sync=SyncRecord("pg-0", 1, ("pg-0", "pg-2"))))
    p = plan(new, joining, existing_for(names))
    assert p.steps == () and p.waiting is not None
    assert "pg-1 to join the synchronous quorum before taking pg-2 down" in p.waiting
    joined = Observed(pods=pods, etcd=replace(obs.etcd, sync=SyncRecord("pg-0", 1, tuple(names))))
    assert kinds(plan(new, joined, existing_for(names))) == [(StepKind.DELETE_POD, "pg-2")]


def test_a_cluster_scoped_object_no_longer_wanted_is_deleted_and_a_wanted_one_kept() -> None:
    # taintNode turned off: the node-fencer binding is not in the target; GC would never take it
    observed = Observed(
        pods=(pod("pg-0", role="primary"),), pvcs=(), etcd=etcd("pg-0", {"pg-0": Role.LEADER}, ["pg-0"])
    )
    existing = {
        ("Service", "pg-rw"): "h1",
        ("PersistentVolumeClaim", "pg-0-data"): "h1",
        ("ClusterRoleBinding", "pgquorum-node-fencer-ns-pg"): "h1",
    }
    got = plan(target("pg-0"), observed, existing)
    assert [(s.kind, s.name) for s in got.steps] == [(StepKind.DELETE_CLUSTER_OBJECT, "pgquorum-node-fencer-ns-pg")]
    wanted = replace(
        target("pg-0"),
        shared=(manifest("Service", "pg-rw"), manifest("ClusterRoleBinding", "pgquorum-node-fencer-ns-pg")),
    )
    assert plan(wanted, observed, existing).steps == ()


def test_a_member_made_a_moment_ago_settles_before_the_next_disruption() -> None:
    from datetime import UTC, datetime, timedelta

    now = datetime(2026, 1, 1, tzinfo=UTC)
    names = ["pg-0", "pg-1", "pg-2"]
    leader = pod("pg-0", role="primary", hash_="old", created=now - timedelta(hours=1))
    fresh = pod("pg-1", hash_="new", created=now - timedelta(seconds=3))  # just rolled, already ready
    stale = pod("pg-2", hash_="old", created=now - timedelta(hours=1))
    roles = {"pg-0": Role.LEADER, "pg-1": Role.REPLICA, "pg-2": Role.REPLICA}
    observed = Observed(pods=(leader, fresh, stale), pvcs=(), etcd=etcd("pg-0", roles, names))
    existing = {("Service", "pg-rw"): "h1", **{("PersistentVolumeClaim", f"{n}-data"): "h1" for n in names}}
    got = plan(target(*names, hash_="new"), observed, existing, now)
    assert got.steps == () and got.waiting is not None and "pg-1 to settle" in got.waiting
    later = plan(target(*names, hash_="new"), observed, existing, now + timedelta(seconds=20))
    assert [(s.kind, s.name) for s in later.steps] == [(StepKind.DELETE_POD, "pg-2")]
