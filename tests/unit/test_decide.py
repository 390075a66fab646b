"""Every rule of the HA decision, on plain data (no processes, no mocks)."""

from __future__ import annotations

from dataclasses import replace

from pgquorum.agent.config import SyncSettings, Timing
from pgquorum.agent.ha.actions import (
    AcquireLeader,
    Bootstrap,
    Clone,
    Fence,
    Follow,
    Promote,
    PublishStatus,
    Rejoin,
    ReleaseLeader,
    StartPostgres,
)
from pgquorum.agent.ha.decide import Inputs, Memory, decide, fence_deadline, guard_must_fence
from pgquorum.agent.model import (
    ClusterState,
    LeaderInfo,
    LeaderStatus,
    MemberInfo,
    PeerStatus,
    PostgresState,
    Role,
)

T = Timing(ttl=3, loop_wait=1, retry_timeout=1, safety_margin=0.5)
SYSID = "7300000000000000001"


def member(name: str, **kw: object) -> MemberInfo:
    base = dict(role=Role.REPLICA, state="running", api_url=f"http://{name}", conn_url=f"postgres://{name}")
    base.update(kw)
    return MemberInfo(name=name, **base)  # type: ignore[arg-type]


def cluster(leader: str | None = "a", term: int = 3, status: LeaderStatus | None = None, **kw: object) -> ClusterState:
    return ClusterState(
        revision=10,
        initialize=kw.pop("initialize", SYSID),  # type: ignore[arg-type]
        leader=LeaderInfo(leader, 5, 99) if leader else None,
        term=term,
        members=(member("a"), member("b"), member("c")),
        status=status,
    )


PRIMARY = PostgresState(True, True, True, in_recovery=False, timeline=2, system_id=SYSID, wal_lsn=1000)
REPLICA = PostgresState(
    True, True, True, in_recovery=True, timeline=2, system_id=SYSID, received_lsn=1000, upstream="a", streaming=True
)
DOWN = PostgresState(True, False, system_id=SYSID)


def inputs(me: str = "a", **kw: object) -> Inputs:
    base: dict[str, object] = dict(me=me, now=100.0, timing=T, cluster=cluster(), pg=PRIMARY)
    base.update(kw)
    return Inputs(**base)  # type: ignore[arg-type]


def test_leader_renews_and_publishes_status() -> None:
    d = decide(inputs(lease_renewed_at=99.9))
    assert d.role is Role.LEADER
    assert d.actions == (PublishStatus(3, 2, 1000, ("b", "c"), "a"),)
    assert d.memory.leader_term == 3 and d.memory.last_renew_sent == 99.9


def test_leader_keeps_the_slot_of_a_member_whose_key_lapsed_until_member_slots_ttl() -> None:
    first = decide(inputs(lease_renewed_at=99.9))
    only_b = replace(cluster(), members=(member("a"), member("b")))  # c was killed: its key expired
    later = decide(inputs(now=200.0, lease_renewed_at=199.9, cluster=only_b, memory=first.memory))
    assert later.actions[0] == PublishStatus(3, 2, 1000, ("b", "c"), "a")
    gone = decide(inputs(now=100.0 + 1801.0, lease_renewed_at=1900.0, cluster=only_b, memory=later.memory))
    assert gone.actions[0] == PublishStatus(3, 2, 1000, ("b",), "a")


def test_leader_fences_when_renewal_is_too_old() -> None:
    # Last renewal sent at 97.0: deadline 97 + 3 - 0.5 = 99.5 < now 100.
    d = decide(inputs(memory=Memory(leader_term=3, last_renew_sent=97.0)))
    assert isinstance(d.actions[0], Fence)
    assert d.memory.leader_term is None


def test_leader_without_etcd_keeps_serving_until_deadline_then_fences() -> None:
    m = Memory(leader_term=3, last_renew_sent=98.0)  # deadline 100.5
    ok = decide(inputs(cluster=None, memory=m, now=100.4))
    assert ok.actions == () and ok.role is Role.LEADER
    fenced = decide(inputs(cluster=None, memory=m, now=100.5))
    assert isinstance(fenced.actions[0], Fence) and fenced.role is Role.DEMOTED


def test_replica_without_etcd_does_nothing() -> None:
    d = decide(inputs(me="b", cluster=None, pg=REPLICA))
    assert d.actions == () and d.role is Role.STANDBY


def test_fence_deadline_is_measured_from_send_time() -> None:
    assert fence_deadline(10.0, T) == 12.5
    assert fence_deadline(None, T) is None
    assert guard_must_fence(12.5, Memory(leader_term=1, last_renew_sent=10.0), T)
    assert not guard_must_fence(12.49, Memory(leader_term=1, last_renew_sent=10.0), T)
    assert not guard_must_fence(99.0, Memory(leader_term=None, last_renew_sent=10.0), T)


def test_holder_of_key_in_recovery_promotes() -> None:
    d = decide(inputs(me="b", cluster=cluster(leader="b", term=4), pg=REPLICA, lease_renewed_at=99.8))
    assert d.actions == (Promote(4),)


def test_replica_follows_leader_and_repoints() -> None:
    steady = decide(inputs(me="b", pg=REPLICA))
    assert steady.actions == () and steady.role is Role.REPLICA
    moved = decide(inputs(me="b", pg=replace(REPLICA, upstream="c")))
    assert moved.actions == (Follow("a"),)


def test_a_standby_stuck_on_an_older_timeline_than_its_leader_is_rewound_after_ttl() -> None:
    """A fenced former primary started read-only for the race keeps its unacknowledged WAL tail:
    it can never follow the new timeline (its receiver reconnects in a loop) until pg_rewind."""
    newer = replace(cluster(), members=(member("a", timeline=3), member("b"), member("c")))
    stuck = replace(REPLICA, timeline=2, streaming=False)
    first = decide(inputs(me="b", cluster=newer, pg=stuck))
    assert first.actions == () and first.memory.behind_timeline_since == 100.0
    flicker = decide(inputs(me="b", now=101.5, cluster=newer, pg=replace(stuck, streaming=True), memory=first.memory))
    assert flicker.actions == () and flicker.memory.behind_timeline_since == 100.0, "streaming flickers"
    later = decide(inputs(me="b", now=103.0, cluster=newer, pg=stuck, memory=flicker.memory))
    assert later.actions == (Rejoin("a"),) and "pg_rewind" in later.reason
    assert later.memory.behind_timeline_since is None
    caught_up = decide(inputs(me="b", now=101.0, cluster=newer, pg=replace(stuck, timeline=3), memory=first.memory))
    assert caught_up.actions == () and caught_up.memory.behind_timeline_since is None


def test_stale_primary_fences_when_another_holds_the_key() -> None:
    d = decide(inputs(me="b", pg=PRIMARY))
    assert isinstance(d.actions[0], Fence) and d.role is Role.DEMOTED


def test_bootstrap_race_and_waiting() -> None:
    empty = PostgresState(False, False)
    d = decide(inputs(cluster=cluster(leader=None, term=0, initialize=None), pg=empty))
    assert d.actions == (Bootstrap(),)
    busy = decide(inputs(cluster=cluster(leader=None, term=0, initialize=""), pg=empty))
    assert busy.actions == ()


def test_existing_data_without_initialize_key_is_not_guessed() -> None:
    d = decide(inputs(cluster=cluster(leader=None, term=0, initialize=None), pg=PRIMARY))
    assert d.actions == () and d.alert


def test_empty_member_clones_from_leader() -> None:
    d = decide(inputs(me="c", pg=PostgresState(False, False)))
    assert d.actions == (Clone("a"),)
    no_leader = decide(inputs(me="c", cluster=cluster(leader=None), pg=PostgresState(False, False)))
    assert no_leader.actions == ()


def test_system_identifier_mismatch_refuses() -> None:
    d = decide(inputs(me="b", pg=replace(REPLICA, system_id="1")))
    assert d.actions == () and d.alert


def test_crashed_leader_postgres_restarts_then_releases() -> None:
    m = Memory(leader_term=3, last_renew_sent=99.5)
    first = decide(inputs(pg=DOWN, memory=m, lease_renewed_at=99.9))
    assert first.actions == (StartPostgres(as_primary=True),)
    assert first.memory.pg_down_since == 100.0
    later = decide(inputs(pg=DOWN, memory=first.memory, now=111.0, lease_renewed_at=110.9))
    assert isinstance(later.actions[0], ReleaseLeader) and later.alert


def test_former_primary_rejoins_with_rewind() -> None:
    d = decide(inputs(me="b", pg=replace(DOWN, was_primary=True)))
    assert d.actions == (Rejoin("a"),)
    plain = decide(inputs(me="b", pg=DOWN))
    assert plain.actions == (StartPostgres(as_primary=False, upstream="a"),)


def test_down_without_leader_starts_read_only() -> None:
    d = decide(inputs(me="b", cluster=cluster(leader=None), pg=replace(DOWN, was_primary=True)))
    assert d.actions == (StartPostgres(as_primary=False, upstream=None),)


def peer(name: str, lsn: int, **kw: object) -> PeerStatus:
    base: dict[str, object] = dict(reachable=True, postgres_running=True, in_recovery=True, timeline=2, lsn=lsn)
    base.update(kw)
    return PeerStatus(name=name, **base)  # type: ignore[arg-type]


def race(me: str, my_lsn: int, peers: tuple[PeerStatus, ...], **kw: object) -> Inputs:
    kw.setdefault("cluster", cluster(leader=None))
    return inputs(me=me, pg=replace(REPLICA, received_lsn=my_lsn), peers=peers, **kw)


def test_healthiest_replica_takes_the_key() -> None:
    assert decide(race("b", 1000, (peer("c", 900),))).actions == (AcquireLeader(3),)
    assert decide(race("c", 900, (peer("b", 1000),))).actions == ()


def test_tie_broken_by_name() -> None:
    assert decide(race("b", 1000, (peer("c", 1000),))).actions == (AcquireLeader(3),)
    assert decide(race("c", 1000, (peer("b", 1000),))).actions == ()


def test_unreachable_or_dead_peers_do_not_block() -> None:
    peers = (peer("a", 5000, reachable=False), peer("c", 5000, postgres_running=False))
    assert decide(race("b", 1000, peers)).actions == (AcquireLeader(3),)


def test_live_writable_primary_blocks_the_race() -> None:
    d = decide(race("b", 1000, (peer("a", 1000, in_recovery=False),)))
    assert d.actions == ()
    # Only the REST API answering with postgres dead does not block (Patroni #1826).
    d2 = decide(race("b", 1000, (peer("a", 1000, in_recovery=False, postgres_running=False),)))
    assert d2.actions == (AcquireLeader(3),)


def test_nofailover_member_never_races() -> None:
    d = decide(race("b", 1000, (), nofailover=True))
    assert d.actions == ()
    # and a nofailover peer that is ahead does not block an eligible member
    assert decide(race("c", 900, (peer("b", 1000, nofailover=True),))).actions == (AcquireLeader(3),)


def test_lag_limit_against_last_leader_position() -> None:
    status = LeaderStatus(term=3, timeline=2, wal_lsn=10_000_000)
    d = decide(race("b", 1000, (), cluster=cluster(leader=None, status=status)))
    assert d.actions == ()
    assert d.alert and "maximum_lag_on_failover" in d.alert  # every member too far behind: alert (#2151)


def test_lone_stale_member_does_not_take_over() -> None:
    # Patroni #2175: a restarted member alone, far behind the last leader position.
    status = LeaderStatus(term=3, timeline=2, wal_lsn=50_000_000)
    d = decide(race("c", 1000, (peer("a", 0, reachable=False),), cluster=cluster(leader=None, status=status)))
    assert d.actions == ()


def test_older_timeline_is_not_eligible() -> None:
    d = decide(race("b", 9000, (peer("c", 100, timeline=3),)))
    assert d.actions == ()


def test_primary_that_lost_its_key_retakes_it() -> None:
    d = decide(inputs(cluster=cluster(leader=None), pg=PRIMARY))
    assert d.actions == (AcquireLeader(3),)


def test_a_bootstrap_leader_lost_before_the_first_quorum_record_retakes_its_key() -> None:
    """Quorum commit, durability required, no ``sync`` record yet: nobody can prove a quorum. The
    last leader (named in the status key) holds every write it acknowledged and may lead again;
    a replica may not — before this, no member could ever lead such a cluster."""
    required = SyncSettings(mode="quorum", k=1, durability="required")
    last_a = LeaderStatus(term=1, timeline=1, wal_lsn=1000, leader="a")
    restarted = replace(REPLICA, timeline=1, upstream=None, streaming=False)  # its pod was recreated
    d = decide(inputs(me="a", cluster=cluster(leader=None, term=1, status=last_a), pg=restarted, sync=required))
    assert d.actions == (AcquireLeader(1),)
    assert d.quorum is not None and d.quorum.proven and "we are the last leader" in d.quorum.reason
    # a status key from an agent that did not record its name: refused as before
    anonymous = replace(last_a, leader=None)
    d = decide(inputs(me="a", cluster=cluster(leader=None, term=1, status=anonymous), pg=restarted, sync=required))
    assert d.actions == () and "no quorum record" in d.reason
    # a replica of that leader is refused: it may lack writes the leader acknowledged
    d = decide(inputs(me="b", cluster=cluster(leader=None, term=1, status=last_a), pg=restarted, sync=required))
    assert d.actions == () and "no quorum record" in d.reason


def test_leaderless_since_is_remembered_for_election_timing() -> None:
    d1 = decide(race("c", 900, (peer("b", 1000),)))
    assert d1.memory.leaderless_since == 100.0
    d2 = decide(replace(race("c", 900, (peer("b", 1000),)), now=101.0, memory=d1.memory))
    assert d2.memory.leaderless_since == 100.0
    d3 = decide(inputs(me="c", pg=REPLICA, memory=d2.memory))
    assert d3.memory.leaderless_since is None


# -- operators' requests ------------------------------------------------------------------------
def with_members(c: ClusterState, **roles: Role) -> ClusterState:
    members = tuple(replace(m, role=roles.get(m.name, m.role), timeline=2, received_lsn=1000) for m in c.members)
    return replace(c, members=members)


def request(kind: str = "switchover", candidate: str | None = "b", leader: str | None = "a", **kw: object) -> object:
    from pgquorum.agent.model import SwitchoverRequest

    base: dict[str, object] = dict(requested_at=1000.0)
    base.update(kw)
    return SwitchoverRequest(kind, candidate, leader, **base)  # type: ignore[arg-type]


def test_leader_hands_over_to_a_healthy_candidate() -> None:
    from pgquorum.agent.ha.actions import HandOver

    c = replace(with_members(cluster(), a=Role.LEADER), switchover=request())
    d = decide(inputs(cluster=c, lease_renewed_at=99.9, wall=1001.0))
    assert d.actions == (HandOver("b", 3, "switchover"),)


def test_switchover_picks_the_most_advanced_replica_when_unnamed() -> None:
    from pgquorum.agent.ha.actions import HandOver

    c = with_members(cluster(), a=Role.LEADER)
    c = replace(
        c,
        members=tuple(replace(m, received_lsn=2000) if m.name == "c" else m for m in c.members),
        switchover=request(candidate=None),
    )
    d = decide(inputs(cluster=c, lease_renewed_at=99.9, wall=1001.0))
    assert d.actions == (HandOver("c", 3, "switchover"),)


def test_switchover_to_an_unhealthy_candidate_is_refused_and_recorded() -> None:
    from pgquorum.agent.ha.actions import ClearRequest

    c = replace(with_members(cluster(), a=Role.LEADER, b=Role.STANDBY), switchover=request())
    d = decide(inputs(cluster=c, lease_renewed_at=99.9, wall=1001.0))
    assert isinstance(d.actions[-1], ClearRequest) and d.actions[-1].failed
    assert "not a healthy streaming replica" in d.actions[-1].reason
    unknown = replace(c, switchover=request(candidate="zz"))
    d2 = decide(inputs(cluster=unknown, lease_renewed_at=99.9, wall=1001.0))
    assert isinstance(d2.actions[-1], ClearRequest) and "not a member" in d2.actions[-1].reason


def test_scheduled_switchover_waits_for_its_time() -> None:
    c = replace(with_members(cluster(), a=Role.LEADER), switchover=request(scheduled_at=2000.0))
    d = decide(inputs(cluster=c, lease_renewed_at=99.9, wall=1500.0))
    assert [type(a).__name__ for a in d.actions] == ["PublishStatus"] and "scheduled" in d.reason


def test_request_for_another_leader_is_void() -> None:
    from pgquorum.agent.ha.actions import ClearRequest

    c = replace(with_members(cluster(), a=Role.LEADER), switchover=request(leader="c"))
    d = decide(inputs(cluster=c, lease_renewed_at=99.9, wall=1001.0))
    assert isinstance(d.actions[-1], ClearRequest) and not d.actions[-1].failed


def test_manual_failover_steers_the_race() -> None:
    req = request(kind="failover", candidate="c", leader=None)
    c = replace(cluster(leader=None), switchover=req)
    # b is ahead but the operator named c: b waits, c takes the key.
    assert decide(race("b", 2000, (peer("c", 900),), cluster=c, wall=1001.0)).actions == ()
    assert decide(race("c", 900, (peer("b", 2000),), cluster=c, wall=1001.0)).actions == (AcquireLeader(3),)
    # An old request nobody carried out no longer steers anything.
    assert decide(race("b", 2000, (peer("c", 900),), cluster=c, wall=1100.0)).actions == (AcquireLeader(3),)


def test_operator_commands() -> None:
    from pgquorum.agent.ha.actions import Reinitialize, RestartPostgres

    assert decide(inputs(lease_renewed_at=99.9, command="restart")).actions == (RestartPostgres(True),)
    assert decide(inputs(me="b", pg=REPLICA, command="restart")).actions == (RestartPostgres(False),)
    assert decide(inputs(me="b", pg=REPLICA, command="reinitialize")).actions == (Reinitialize("a"),)
    refused = decide(inputs(lease_renewed_at=99.9, command="reinitialize"))
    assert refused.actions == () and refused.reason.startswith("reinitialize refused")
