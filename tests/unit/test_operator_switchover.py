"""spec.switchover carried out and audited in status.switchover: plain data through the pure function."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

from pgquorum.agent.model import ClusterState, LeaderInfo, MemberInfo, Role
from pgquorum.agent.model import SwitchoverRequest as SwitchoverRequestKey
from pgquorum.operator.observed import MemberKind, Observed, PodView
from pgquorum.operator.reconcile import StepKind
from pgquorum.operator.spec import SwitchoverRequest
from pgquorum.operator.switchover import progress

NOW = datetime(2026, 12, 4, 7, 0, tzinfo=UTC)
ASK = SwitchoverRequest("db-2", "2026-12-04T07:00:00Z")


def world(leader: str | None = "db-0", ready: tuple[str, ...] = ("db-0", "db-1", "db-2"), **roles: Role) -> Observed:
    names = ("db-0", "db-1", "db-2")
    members = tuple(
        MemberInfo(n, roles.get(n.replace("-", "_"), Role.LEADER if n == leader else Role.REPLICA), "running", "u", "c")
        for n in names
    )
    pods = tuple(PodView(n, MemberKind.DATA, "Running", n in ready, None, "n", "h", False) for n in names)
    etcd = ClusterState(7, "sys", LeaderInfo(leader, 1, 1) if leader else None, 4, members)
    return Observed(pods=pods, etcd=etcd)


def test_a_settled_cluster_hands_over_once_then_records_done() -> None:
    first = progress(ASK, None, world(), NOW, busy=None)
    assert first.step is not None and first.step.kind is StepKind.SWITCHOVER
    assert (first.step.name, first.step.target) == ("db-0", "db-2")
    assert first.record is not None and first.record["state"] == "Pending" and first.record["issued"]
    assert first.event == ("Normal", "Switchover", "db-0 -> db-2: asked for in spec.switchover")
    # the agents have not finished yet: asked once, not again
    waiting = progress(ASK, first.record, world(), NOW + timedelta(seconds=2), busy=None)
    assert waiting.step is None and waiting.record is not None and waiting.record["state"] == "Pending"
    assert waiting.event is None
    done = progress(ASK, waiting.record, world("db-2"), NOW + timedelta(seconds=4), busy=None)
    assert (
        done.record is not None and done.record["state"] == "Done" and "db-2 leads (term 4)" in done.record["message"]
    )
    assert done.event is not None and done.event[1] == "SwitchoverDone"
    # a later failover away from db-2 does not replay the same request
    later = progress(ASK, done.record, world("db-1"), NOW + timedelta(hours=1), busy=None)
    assert later.step is None and later.record == done.record and later.event is None


def test_it_waits_for_the_time_a_settled_cluster_and_a_ready_streaming_target() -> None:
    future = SwitchoverRequest("db-2", "2026-12-04T08:00:00Z")
    assert progress(future, None, world(), NOW, busy=None).record["message"] == "scheduled for 2026-12-04T08:00:00Z"  # type: ignore[index]
    busy = progress(ASK, None, world(), NOW, busy="rolling update: db-1 recreated from the new spec")
    assert busy.step is None and "rolling update" in busy.record["message"]  # type: ignore[index]
    assert busy.event is not None and busy.event[1] == "SwitchoverPending"
    not_ready = progress(ASK, None, world(ready=("db-0", "db-1")), NOW, busy=None)
    assert not_ready.step is None and "db-2 to be ready" in not_ready.record["message"]  # type: ignore[index]
    leaderless = progress(ASK, None, world(None), NOW, busy=None)
    assert leaderless.step is None and "no leader" in leaderless.record["message"]  # type: ignore[index]
    starting = progress(ASK, None, world(db_2=Role.STANDBY), NOW, busy=None)
    assert starting.step is None and "stream as a replica" in starting.record["message"]  # type: ignore[index]


def test_already_leading_is_done_at_once_and_a_stuck_one_is_given_up() -> None:
    noop = progress(ASK, None, world("db-2"), NOW, busy=None)
    assert noop.step is None and noop.record is not None and noop.record["state"] == "Done"
    assert noop.record["message"].endswith("nothing to do")
    issued = progress(ASK, None, world(), NOW, busy=None).record
    stuck = progress(ASK, issued, world(), NOW + timedelta(seconds=121), busy=None)
    assert (
        stuck.record is not None and stuck.record["state"] == "Refused" and "not done 120 s" in stuck.record["message"]
    )
    assert stuck.event is not None and stuck.event[0] == "Warning"


def test_a_new_at_is_a_new_request_and_no_request_keeps_the_record() -> None:
    done = progress(ASK, None, world("db-2"), NOW, busy=None).record
    again = SwitchoverRequest("db-2", "2026-12-04T09:00:00Z")
    assert progress(again, done, world("db-0"), NOW + timedelta(hours=3), busy=None).step is not None
    kept = progress(None, done, world("db-0"), NOW, busy=None)
    assert kept.step is None and kept.record == done


def test_the_agents_refusal_ends_the_request_and_a_replica_off_the_timeline_is_waited_for() -> None:
    issued = progress(ASK, None, world(), NOW, busy=None).record
    base = world()
    assert base.etcd is not None
    refused_key = SwitchoverRequestKey("switchover", "db-2", "db-0", 1.0, failed="candidate db-2 is not healthy")
    refused = Observed(pods=base.pods, etcd=replace(base.etcd, switchover=refused_key))
    got = progress(ASK, issued, refused, NOW + timedelta(seconds=3), busy=None)
    assert got.record is not None and got.record["state"] == "Refused"
    assert "the agents refused it: candidate db-2 is not healthy" in got.record["message"]
    behind = replace(
        base.etcd, members=tuple(replace(m, timeline=1 if m.name == "db-2" else 2) for m in base.etcd.members)
    )
    waiting = progress(ASK, None, Observed(pods=base.pods, etcd=behind), NOW, busy=None)
    assert waiting.step is None and "timeline 2" in waiting.record["message"]  # type: ignore[index]
