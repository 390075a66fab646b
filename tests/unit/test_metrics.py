"""AgentMetrics: the mapping from the HA loop's snapshot to Prometheus samples (plain data, no mocks)."""

from __future__ import annotations

from dataclasses import replace

from prometheus_client.parser import text_string_to_metric_families

from pgquorum.agent.config import Timing
from pgquorum.agent.ha.decide import Decision, Memory
from pgquorum.agent.ha.loop import LoopView
from pgquorum.agent.metrics import AgentMetrics, fence_kind, snapshot
from pgquorum.agent.model import ClusterState, LeaderInfo, LeaderStatus, MemberInfo, PostgresState, Role

T = Timing(ttl=3, loop_wait=1, retry_timeout=1, safety_margin=0.5)
SYSID = "7300000000000000001"


class FakeClock:
    """A settable monotonic clock (plain object, injected like the agent's Clock)."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def member(name: str, role: Role, **kw: int | None) -> MemberInfo:
    return MemberInfo(name, role, "running", f"http://{name}", f"postgres://{name}", timeline=2, term=4, **kw)


def cluster(leader: str | None = "a", leader_lsn: int = 5000, status_lsn: int | None = None) -> ClusterState:
    return ClusterState(
        revision=10,
        initialize=SYSID,
        leader=LeaderInfo(leader, 5, 99) if leader else None,
        term=4,
        members=(member("a", Role.LEADER, wal_lsn=leader_lsn), member("b", Role.REPLICA, received_lsn=4000)),
        status=LeaderStatus(4, 2, status_lsn) if status_lsn is not None else None,
    )


PRIMARY = PostgresState(True, True, True, in_recovery=False, timeline=2, system_id=SYSID, wal_lsn=5000)
REPLICA = PostgresState(
    True,
    True,
    True,
    in_recovery=True,
    timeline=2,
    system_id=SYSID,
    received_lsn=4000,
    replayed_lsn=3500,
    upstream="a",
    streaming=True,
)
DOWN = PostgresState(True, False, system_id=SYSID)
LEADING = Memory(leader_term=4, last_renew_sent=100.0)


def view(
    c: ClusterState | None, pg: PostgresState, memory: Memory | None = None, alert: str | None = None, at: float = 101.0
) -> LoopView:
    decision = Decision((), "test", Role.STOPPED, memory or Memory(), alert=alert)
    return LoopView(c, pg, decision, c is not None, at)


def samples(m: AgentMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    body, content_type = m.render()
    assert content_type.startswith("text/plain")
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(body.decode()):
        assert family.name.startswith("pgquorum_"), family.name
        for s in family.samples:
            assert s.labels["cluster"] == "main" and s.labels["member"] in ("a", "b")
            extra = tuple(sorted((k, v) for k, v in s.labels.items() if k not in ("cluster", "member")))
            out[(s.name, extra)] = s.value
    return out


def value(m: AgentMetrics, name: str, **labels: str) -> float | None:
    return samples(m).get((name, tuple(sorted(labels.items()))))


def test_leader_snapshot() -> None:
    snap = snapshot(view(cluster(), PRIMARY, LEADING), "a", T, now=101.0)
    assert snap.role is Role.LEADER and snap.is_leader
    assert snap.term == 4 and snap.timeline == 2 and snap.wal_lsn == 5000
    assert snap.lease_deadline == 100.0 + T.fence_after()
    assert (snap.lag_bytes, snap.lag_seconds) == (0, 0.0)
    assert snap.postgres_up and snap.dcs_reachable and not snap.alert
    assert snap.last_run_at == 101.0 and snap.last_dcs_contact_at == 101.0


def test_replica_lag_against_the_leaders_published_position() -> None:
    snap = snapshot(view(cluster(leader_lsn=5000), REPLICA), "b", T, now=101.0)
    assert snap.role is Role.REPLICA and not snap.is_leader
    assert snap.lease_deadline is None
    assert snap.received_lsn == 4000 and snap.replayed_lsn == 3500 and snap.wal_lsn is None
    assert snap.lag_bytes == 1000  # the leader's 5000 minus our best position (received, 4000)
    assert snap.lag_seconds is None  # unknown without a replay timestamp
    # The status key of the current term is fresher than the member key: the larger one counts.
    assert snapshot(view(cluster(leader_lsn=5000, status_lsn=6000), REPLICA), "b", T, 101.0).lag_bytes == 2000
    caught_up = snapshot(view(cluster(leader_lsn=3000), REPLICA), "b", T, 101.0)
    assert caught_up.lag_bytes == 0  # ahead of a stale key: clamped to 0
    # Seconds come from postgres itself (replay timestamp), whatever the byte estimate says.
    timed = snapshot(view(cluster(leader_lsn=5000), replace(REPLICA, replay_lag_seconds=2.5)), "b", T, 101.0)
    assert timed.lag_seconds == 2.5


def test_unknowns_are_none() -> None:
    no_leader = snapshot(view(cluster(leader=None), REPLICA), "b", T, 101.0)
    assert no_leader.lag_bytes is None and no_leader.lag_seconds is None and no_leader.role is Role.STANDBY
    down = snapshot(view(cluster(), DOWN), "b", T, 101.0)
    assert down.role is Role.STOPPED and not down.postgres_up and down.timeline is None and down.lag_bytes is None


def test_without_etcd_term_comes_from_memory_and_contact_age_is_kept() -> None:
    snap = snapshot(view(None, PRIMARY, LEADING), "a", T, now=105.0, last_dcs_contact_at=101.0)
    assert snap.term == 4 and not snap.dcs_reachable
    assert snap.last_dcs_contact_at == 101.0


def test_memory_after_actions_overrides_the_decisions() -> None:
    # The loop took the leader key during this loop: the decision's memory does not know it yet.
    snap = snapshot(view(cluster(), PRIMARY, Memory()), "a", T, 101.0, memory=LEADING)
    assert snap.role is Role.LEADER and snap.lease_deadline is not None


def test_render_maps_the_snapshot_and_ages_move_at_scrape_time() -> None:
    clock = FakeClock(100.0)
    m = AgentMetrics("a", "main", T, clock=clock)
    assert value(m, "pgquorum_role", role="leader") is None  # no loop yet: no made-up state
    m.observe_loop(view(cluster(), PRIMARY, LEADING, alert="look at me"), duration=0.02, now=101.0)
    clock.now = 101.5
    assert value(m, "pgquorum_role", role="leader") == 1.0
    assert value(m, "pgquorum_role", role="replica") == 0.0
    assert value(m, "pgquorum_term") == 4.0
    assert value(m, "pgquorum_is_leader") == 1.0
    assert value(m, "pgquorum_lease_seconds_remaining") == 100.0 + T.fence_after() - 101.5
    assert value(m, "pgquorum_timeline") == 2.0
    assert value(m, "pgquorum_wal_lsn_bytes") == 5000.0
    assert value(m, "pgquorum_received_lsn_bytes") is None
    assert value(m, "pgquorum_replication_lag_bytes") == 0.0
    assert value(m, "pgquorum_postgres_up") == 1.0
    assert value(m, "pgquorum_dcs_reachable") == 1.0
    assert value(m, "pgquorum_alert") == 1.0
    assert value(m, "pgquorum_ha_loop_last_run_age_seconds") == 0.5
    assert value(m, "pgquorum_dcs_last_contact_age_seconds") == 0.5
    assert value(m, "pgquorum_ha_loop_duration_seconds_count") == 1.0
    assert value(m, "pgquorum_ha_loop_duration_seconds_bucket", le="0.025") == 1.0
    assert value(m, "pgquorum_process_resident_memory_bytes") is not None

    # etcd lost: the contact age grows, the lease runs out and stays at 0.
    m.observe_loop(view(None, PRIMARY, LEADING), duration=0.5, now=102.0)
    clock.now = 110.0
    assert value(m, "pgquorum_dcs_reachable") == 0.0
    assert value(m, "pgquorum_dcs_last_contact_age_seconds") == 9.0
    assert value(m, "pgquorum_ha_loop_last_run_age_seconds") == 8.0
    assert value(m, "pgquorum_lease_seconds_remaining") == 0.0
    assert value(m, "pgquorum_term") == 4.0


def test_replica_render() -> None:
    clock = FakeClock(100.0)
    m = AgentMetrics("b", "main", T, clock=clock)
    m.observe_loop(view(cluster(), REPLICA), duration=0.01, now=100.0)
    assert value(m, "pgquorum_role", role="replica") == 1.0
    assert value(m, "pgquorum_is_leader") == 0.0
    assert value(m, "pgquorum_lease_seconds_remaining") == 0.0
    assert value(m, "pgquorum_replication_lag_bytes") == 1000.0
    assert value(m, "pgquorum_replication_lag_seconds") is None
    assert value(m, "pgquorum_replayed_lsn_bytes") == 3500.0


def test_counters_and_failover_histogram() -> None:
    m = AgentMetrics("a", "main", T, clock=FakeClock(0.0))
    for kind in ("dcs_unreachable", "other_leader", "guard"):
        assert value(m, "pgquorum_fencing_events_total", reason=kind) == 0.0  # exported from the start
    m.count_fence("guard")
    m.count_fence("guard")
    m.count_fence("etcd unreachable and the lease of term 4 may have expired")  # free text never a label
    assert value(m, "pgquorum_fencing_events_total", reason="guard") == 2.0
    assert value(m, "pgquorum_fencing_events_total", reason="other") == 1.0
    m.count_stonith("kill-old-primary", "success")
    m.count_stonith("kill-old-primary", "weird")
    assert value(m, "pgquorum_stonith_results_total", hook="kill-old-primary", outcome="success") == 1.0
    assert value(m, "pgquorum_stonith_results_total", hook="kill-old-primary", outcome="failure") == 1.0
    m.observe_failover({"election": 0.3, "promotion": 0.08, "made-up": 1.0})
    m.count_switchover()
    assert value(m, "pgquorum_failovers_total") == 1.0
    assert value(m, "pgquorum_switchovers_total") == 1.0
    assert value(m, "pgquorum_failover_duration_seconds_count", phase="promotion") == 1.0
    assert value(m, "pgquorum_failover_duration_seconds_bucket", phase="promotion", le="0.1") == 1.0
    assert value(m, "pgquorum_failover_duration_seconds_bucket", phase="promotion", le="0.05") == 0.0
    assert value(m, "pgquorum_failover_duration_seconds_sum", phase="election") == 0.3
    assert value(m, "pgquorum_failover_duration_seconds_count", phase="detection") == 0.0
    assert not [k for k in samples(m) if ("phase", "made-up") in k[1]]


def test_fence_kind_is_low_cardinality() -> None:
    assert fence_kind(None, "a") == "dcs_unreachable"
    assert fence_kind(cluster(leader=None), "a") == "no_leader_key"
    assert fence_kind(cluster(leader="b"), "a") == "other_leader"
    assert fence_kind(cluster(leader="a"), "a") == "lease_expired"


def test_two_agents_in_one_process_do_not_collide() -> None:
    a = AgentMetrics("a", "main", T)
    b = AgentMetrics("b", "main", T)
    a.count_switchover()
    assert value(a, "pgquorum_switchovers_total") == 1.0
    assert value(b, "pgquorum_switchovers_total") == 0.0


def test_quorum_answers_and_the_failsafe_gauges() -> None:
    from pgquorum.agent.metrics import FailsafeState

    clock = FakeClock(100.0)
    m = AgentMetrics("a", "main", T, clock)
    m.count_answer("vote", True, None)
    m.count_answer("vote", False, "promised")
    m.count_answer("promise", False, "newer_term")
    m.failsafe = lambda: FailsafeState(voting_members=3, promises_held=2, majority=True, deadline=101.5)
    m.voting_members = lambda: 3
    m.observe_loop(LoopView(cluster(), PRIMARY, None, True, 100.0), 0.01, 100.0, memory=LEADING)
    samples = {
        (s.name, tuple(sorted((k, v) for k, v in s.labels.items() if k not in ("cluster", "member")))): s.value
        for family in text_string_to_metric_families(m.render()[0].decode())
        for s in family.samples
    }
    answers = "pgquorum_quorum_answers_total"
    assert samples[(answers, (("kind", "vote"), ("outcome", "granted"), ("reason", "granted")))] == 1
    assert samples[(answers, (("kind", "vote"), ("outcome", "refused"), ("reason", "promised")))] == 1
    assert samples[(answers, (("kind", "promise"), ("outcome", "refused"), ("reason", "newer_term")))] == 1
    assert samples[("pgquorum_promise_majority", ())] == 1
    assert samples[("pgquorum_promises_held", ())] == 2
    assert samples[("pgquorum_promise_seconds_remaining", ())] == 1.5
    assert samples[("pgquorum_voting_members", ())] == 3
    m.failsafe = lambda: None  # not leading: the leader-only gauges are absent, not zero
    assert "pgquorum_promise_majority" not in m.render()[0].decode()
