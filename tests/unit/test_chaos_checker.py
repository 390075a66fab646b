"""The chaos history checker on synthetic histories: lost writes and split-brain writes must be
flagged, clean histories (failovers, a new primary's lagging term row, a member leading again
later) must pass; bank invariants, phantoms, recovery bounds; JSON round trip; a property test."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pgquorum.chaos.checker import check, reigns, split_brain_writes, unavailability
from pgquorum.chaos.history import (
    FaultWindow,
    FinalState,
    History,
    HistoryError,
    Op,
    PrimaryInterval,
    Transfer,
)


class Recorder:
    """Builds ops with unique keys per client."""

    def __init__(self) -> None:
        self.ops: list[Op] = []
        self.seq: dict[str, int] = {}

    def op(
        self,
        client: str,
        server: str | None,
        term: int | None,
        send: float,
        ack: float | None = None,
        outcome: str = "ok",
        kind: str = "write",
        value: dict[str, object] | None = None,
    ) -> Op:
        n = self.seq[client] = self.seq.get(client, 0) + 1
        key = None if kind == "read" else f"{client}-{n}"
        if ack is None and outcome == "ok":
            ack = send + 0.004
        o = Op(client, n, kind, send, outcome, ack, server, term, key, dict(value or {}))
        self.ops.append(o)
        return o

    def writes(self, client: str, server: str, term: int, start: float, end: float, step: float = 0.1) -> None:
        t = start
        while t < end - 1e-9:
            self.op(client, server, term, t)
            t = round(t + step, 6)

    def present(self) -> frozenset[str]:
        """Keys of every op that committed (acknowledged, and applied for transfers)."""
        return frozenset(o.key for o in self.ops if o.kind == "write" and o.acked and o.key is not None)


def final_of(rec: Recorder, drop: tuple[str, ...] = (), add: tuple[str, ...] = ()) -> FinalState:
    return FinalState(
        writes=(rec.present() - set(drop)) | set(add),
        transfers={},
        balances={"a": 100, "b": 100},
        initial_balance=100,
    )


def failover_history() -> tuple[Recorder, list[PrimaryInterval], list[FaultWindow]]:
    """n1 leads term 1 until it is killed at t=5; n2 takes term 2 at 7.5 and acknowledges from 8."""
    rec = Recorder()
    rec.writes("c1", "n1", 1, 0.0, 5.0)
    rec.op("c1", "n1", None, 5.02, 7.02, outcome="unknown")  # in flight when n1 died
    rec.op("c1", None, None, 7.1, 7.2, outcome="fail")  # connection refused
    rec.writes("c1", "n2", 2, 8.0, 12.0)
    intervals = [PrimaryInterval("n1", 1, 0.0, 5.0), PrimaryInterval("n2", 2, 7.5)]
    faults = [FaultWindow("node-kill", 5.0, heal=9.0, healthy=11.0, target="n1")]
    return rec, intervals, faults


# ----------------------------------------------------------------------------- clean histories


def test_a_clean_failover_passes() -> None:
    rec, intervals, faults = failover_history()
    v = check(History(rec.ops, intervals, final_of(rec), faults), recovery_bound=30)
    assert v.ok, v.problems
    assert v.problems == []
    assert v.counts["lost"] == v.counts["split_brain"] == v.counts["phantoms"] == 0
    assert v.counts["write_ok"] == 90 and v.counts["write_unknown"] == 1 and v.counts["write_fail"] == 1
    (f,) = v.faults
    # last ack before the fault: 4.904; first after: 8.004
    assert f.unavailability_s == pytest.approx(3.1, abs=0.001) and not f.censored
    assert f.recovery_s == 2.0 and f.recovered
    assert v.overlaps == []


def test_in_doubt_write_that_committed_is_fine() -> None:
    rec, intervals, faults = failover_history()
    unknown = next(o for o in rec.ops if o.outcome == "unknown")
    assert unknown.key is not None
    v = check(History(rec.ops, intervals, final_of(rec, add=(unknown.key,)), faults))
    assert v.ok and v.counts["in_doubt_committed"] == 1


def test_the_new_primary_reporting_the_previous_term_is_not_split_brain() -> None:
    """After promotion and before its term row is written, the new primary reports term 1."""
    rec = Recorder()
    rec.writes("c1", "n1", 1, 0.0, 5.0)
    rec.writes("c1", "n2", 1, 8.0, 8.3)  # token lag on n2
    rec.writes("c1", "n2", 2, 8.3, 10.0)
    intervals = [PrimaryInterval("n1", 1, 0.0), PrimaryInterval("n2", 2, 7.9)]
    for ivs in (intervals, []):
        v = check(History(rec.ops, ivs, final_of(rec)))
        assert v.ok, (ivs, v.problems)
    # n1's interval is open (it died without a log line): an overlap, reported but not a violation
    assert check(History(rec.ops, intervals, final_of(rec))).overlaps


def test_a_member_leading_again_later_is_not_split_brain() -> None:
    """n1 (term 1), n2 (term 2), then n1 again (term 3), first with n2's term row (2)."""
    rec = Recorder()
    rec.writes("c1", "n1", 1, 0.0, 2.0)
    rec.writes("c1", "n2", 1, 3.0, 3.2)  # n2's token lag
    rec.writes("c1", "n2", 2, 3.2, 5.0)
    rec.writes("c1", "n1", 2, 6.0, 6.2)  # n1's token lag, replicated from n2
    rec.writes("c1", "n1", 3, 6.2, 8.0)
    intervals = [
        PrimaryInterval("n1", 1, 0.0, 2.0),
        PrimaryInterval("n2", 2, 2.9, 5.0),
        PrimaryInterval("n1", 3, 5.9),
    ]
    for ivs in (intervals, []):
        v = check(History(rec.ops, ivs, final_of(rec)))
        assert v.ok, (ivs, v.problems)


def test_write_in_flight_across_the_failover_is_not_split_brain() -> None:
    """Sent to the old primary before the new term began, acknowledged after: not definite."""
    rec, intervals, faults = failover_history()
    rec.op("c2", "n1", 1, 7.4, 7.6)
    v = check(History(rec.ops, intervals, final_of(rec), faults))
    assert v.ok, v.problems


# ----------------------------------------------------------------------------- lost writes


def test_a_lost_acknowledged_write_is_flagged() -> None:
    rec, intervals, faults = failover_history()
    lost = next(o for o in rec.ops if o.server == "n1" and o.send > 4.8)
    assert lost.key is not None
    v = check(History(rec.ops, intervals, final_of(rec, drop=(lost.key,)), faults))
    assert not v.ok
    assert v.counts["lost"] == 1
    assert v.lost[0]["key"] == lost.key and v.lost[0]["server"] == "n1"
    assert any("missing from the final database" in p for p in v.problems)
    assert v.faults[0].lost == 0  # sent before the fault: not attributed to it


def test_lost_writes_are_attributed_to_the_fault_they_were_sent_in() -> None:
    rec, intervals, faults = failover_history()
    lost = next(o for o in rec.ops if o.server == "n2" and o.send > 9)
    assert lost.key is not None
    v = check(History(rec.ops, intervals, final_of(rec, drop=(lost.key,)), faults))
    assert v.faults[0].lost == 1


def test_a_certainly_failed_write_in_the_database_is_a_phantom() -> None:
    rec, intervals, faults = failover_history()
    failed = next(o for o in rec.ops if o.outcome == "fail")
    assert failed.key is not None
    v = check(History(rec.ops, intervals, final_of(rec, add=(failed.key,)), faults))
    assert not v.ok and v.counts["phantoms"] == 1 and v.phantoms[0]["key"] == failed.key


# ----------------------------------------------------------------------------- split-brain


def test_stale_primary_acknowledging_after_the_new_term_began_is_flagged() -> None:
    """The Patroni pause case: n1 resumes and acknowledges with term 1 after n2 took term 2."""
    rec, intervals, faults = failover_history()
    stale = rec.op("stale", "n1", 1, 9.5, 9.51)
    v = check(History(rec.ops, intervals, final_of(rec), faults))
    assert not v.ok
    assert v.counts["split_brain"] == 1
    (s,) = v.split_brain
    assert s.op["key"] == stale.key and s.newer_member == "n2" and s.newer_term == 2
    assert s.source == "interval" and s.newer_since == 7.5
    assert v.faults[0].split_brain == 1
    assert "split-brain" in v.problems[0] and "n2 began term 2" in v.problems[0]


def test_acks_after_the_key_moved_but_before_the_new_primary_promoted_are_late_not_split_brain() -> None:
    """n2 took the key at 7.5 and began promoting at 7.9: until then it still streamed n1's WAL."""
    rec, _, faults = failover_history()
    intervals = [PrimaryInterval("n1", 1, 0.0, 5.0), PrimaryInterval("n2", 2, 7.5, serving=7.9)]
    late = rec.op("stale", "n1", 1, 7.6, 7.61)
    split = rec.op("stale", "n1", 1, 7.95, 7.96)
    v = check(History(rec.ops, intervals, final_of(rec), faults))
    assert [s.op["key"] for s in v.split_brain] == [split.key]
    assert [s.op["key"] for s in v.late_acks] == [late.key]
    assert v.counts["late_acks"] == 1 and v.counts["split_brain"] == 1
    assert v.faults[0].late_acks == 1 and v.faults[0].split_brain == 1
    # late acks alone are not a violation
    rec.ops.remove(split)
    v = check(History(rec.ops, intervals, final_of(rec), faults))
    assert v.ok and v.counts["late_acks"] == 1


def test_serving_never_precedes_the_key() -> None:
    assert PrimaryInterval("n2", 2, 7.5, serving=7.0).serving_from == 7.5
    assert PrimaryInterval("n2", 2, 7.5).serving_from == 7.5


def test_split_brain_is_found_from_the_history_alone() -> None:
    """Without intervals: n2's first ack with term 2 (8.004) is the evidence."""
    rec, _, _ = failover_history()
    rec.op("stale", "n1", 1, 9.5, 9.51)
    rec.op("stale", "n1", 1, 8.0, 8.01)  # sent before n2's first ack: not definite
    found = split_brain_writes(rec.ops, [])
    assert [(s.op["send"], s.newer_member, s.source) for s in found] == [(9.5, "n2", "history")]


def test_two_members_acknowledging_the_same_term_is_split_brain() -> None:
    """n2 promoted but still reports term 1; n1 keeps acknowledging with term 1 afterwards."""
    rec = Recorder()
    rec.writes("c1", "n1", 1, 0.0, 5.0)
    rec.writes("c2", "n2", 1, 6.0, 6.5)
    rec.op("stale", "n1", 1, 6.3, 6.31)
    v = check(History(rec.ops, [], final_of(rec)))
    assert v.counts["split_brain"] == 1
    assert v.split_brain[0].op["client"] == "stale" and v.split_brain[0].newer_member == "n2"


def test_overlapping_reigns_both_directions() -> None:
    """Each member acknowledging after the other began: the older reign's late writes are flagged."""
    rec = Recorder()
    rec.writes("c1", "n1", 3, 0.0, 1.0)
    rec.writes("c2", "n2", 4, 0.5, 1.5)
    found = split_brain_writes(rec.ops, [])
    assert found and all(s.op["server"] == "n1" and s.newer_term == 4 for s in found)
    # n1's writes sent after n2's first ack (0.504): 0.6 .. 0.9
    assert [s.op["send"] for s in found] == [0.6, 0.7, 0.8, 0.9]


def test_reigns_take_the_earliest_start_of_both_sources() -> None:
    rec = Recorder()
    rec.writes("c1", "n2", 2, 8.0, 8.2)
    rs = reigns(rec.ops, [PrimaryInterval("n2", 2, 7.5), PrimaryInterval("n3", 3, 20.0)])
    assert [(r.member, r.term, r.start, r.source) for r in rs] == [
        ("n2", 2, 7.5, "interval"),
        ("n3", 3, 20.0, "interval"),
    ]


def test_failed_and_unknown_writes_are_never_split_brain() -> None:
    rec, intervals, faults = failover_history()
    rec.op("stale", "n1", 1, 9.5, 11.5, outcome="unknown")
    rec.op("stale", "n1", 1, 9.6, 9.7, outcome="fail")
    v = check(History(rec.ops, intervals, final_of(rec), faults))
    assert v.ok, v.problems


# ----------------------------------------------------------------------------- bank


def bank_history() -> tuple[Recorder, FinalState]:
    rec = Recorder()
    rec.op("t1", "n1", 1, 1.0, kind="transfer", value={"src": "a", "dst": "b", "amount": 30, "applied": True})
    rec.op("t1", "n1", 1, 2.0, kind="transfer", value={"src": "b", "dst": "c", "amount": 5, "applied": True})
    rec.op("t1", "n1", 1, 3.0, kind="transfer", value={"src": "c", "dst": "a", "amount": 999, "applied": False})
    rec.op("r1", "n1", 1, 3.5, kind="read", value={"total": 300, "min": 70, "count": 3})
    final = FinalState(
        writes=frozenset(),
        transfers={"t1-1": Transfer("a", "b", 30), "t1-2": Transfer("b", "c", 5)},
        balances={"a": 70, "b": 125, "c": 105},
        initial_balance=100,
    )
    return rec, final


def test_consistent_bank_passes() -> None:
    rec, final = bank_history()
    v = check(History(rec.ops, [], final))
    assert v.ok, v.problems


def test_bank_violations_are_flagged() -> None:
    rec, final = bank_history()
    rec.op("r1", "n2", 1, 4.0, kind="read", value={"total": 290, "min": -3, "count": 3})
    bad = FinalState(final.writes, final.transfers, {"a": 70, "b": 125, "c": 95}, 100)
    v = check(History(rec.ops, [], bad))
    assert not v.ok
    text = "\n".join(v.bank)
    assert "final total balance 290 != initial total 300" in text
    assert "account c: balance 95 != 105" in text
    assert "saw total 290 != 300" in text and "saw a negative balance (-3)" in text


def test_negative_final_balance_is_flagged() -> None:
    rec = Recorder()
    t = {"a": Transfer("a", "b", 150)}
    v = check(History(rec.ops, [], FinalState(frozenset(), t, {"a": -50, "b": 250}, 100)))
    assert any("account a is negative (-50)" in b for b in v.bank)


def test_lost_and_refused_transfers() -> None:
    rec, final = bank_history()
    # the applied transfer t1-2 vanished from the log and its effect with it (balances still add up)
    gone = FinalState(final.writes, {"t1-1": final.transfers["t1-1"]}, {"a": 70, "b": 130, "c": 100}, 100)
    v = check(History(rec.ops, [], gone))
    assert v.counts["lost"] == 1 and v.lost[0]["key"] == "t1-2" and v.bank == []
    # a transfer refused for lack of funds must not be in the log
    extra = dict(final.transfers, **{"t1-3": Transfer("c", "a", 999)})
    v = check(History(rec.ops, [], FinalState(final.writes, extra, {"a": 1069, "b": 125, "c": -894}, 100)))
    assert v.counts["phantoms"] == 1 and v.phantoms[0]["key"] == "t1-3"


# ----------------------------------------------------------------------------- availability / recovery


def test_unavailability_is_censored_when_writes_never_come_back() -> None:
    rec = Recorder()
    rec.writes("c1", "n1", 1, 0.0, 5.0)
    gap, censored = unavailability(rec.ops, 5.0, 20.0)
    assert censored and gap == pytest.approx(20.0 - 4.904)
    assert unavailability([], 0.0, 1.0) == (None, True)


def test_recovery_bound_and_missing_health_are_flagged() -> None:
    rec, intervals, _ = failover_history()
    faults = [
        FaultWindow("pause-long", 5.0, heal=6.0, healthy=None),
        FaultWindow("partition", 8.0, heal=9.0, healthy=50.0),
        FaultWindow("etcd-quorum", 10.0, heal=None),
    ]
    v = check(History(rec.ops, intervals, final_of(rec), faults), recovery_bound=30)
    assert not v.ok
    assert [f.recovered for f in v.faults] == [False, False, False]
    assert v.faults[1].recovery_s == 41.0
    text = "\n".join(v.problems)
    assert "pause-long: cluster did not recover (not healthy again)" in text
    assert "healthy only after 41.0 s > bound 30 s" in text
    assert "etcd-quorum: cluster did not recover (never healed)" in text


def test_without_final_state_durability_is_not_checked() -> None:
    rec, intervals, _ = failover_history()
    v = check(History(rec.ops, intervals))
    assert v.ok and "not checked" in v.problems[0]


# ----------------------------------------------------------------------------- JSON


def test_history_round_trips_through_json(tmp_path: Path) -> None:
    rec, final = bank_history()
    h = History(
        rec.ops,
        [PrimaryInterval("n1", 1, 0.0, 5.0)],
        final,
        [FaultWindow("x", 1.0, 2.0, 3.0, "n1", "detail")],
        {"seed": 7},
    )
    path = tmp_path / "history.json"
    h.save(path)
    back = History.load(path)
    assert back.to_json() == h.to_json()
    assert json.loads(path.read_text())["version"] == 1
    assert check(back).to_json() == check(h).to_json()
    json.dumps(check(back).to_json())  # the verdict is JSON-able


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"kind": "delete"}, "kind 'delete'"),
        ({"outcome": "maybe"}, "outcome 'maybe'"),
        ({"ack": None}, "needs its ack time"),
        ({"ack": 0.5}, "precedes send"),
        ({"key": None}, "needs its unique key"),
    ],
)
def test_malformed_ops_are_refused(kwargs: dict[str, object], words: str) -> None:
    base: dict[str, object] = {
        "client": "c",
        "op_id": 1,
        "kind": "write",
        "send": 1.0,
        "outcome": "ok",
        "ack": 1.1,
        "key": "k",
    }
    with pytest.raises(HistoryError, match=words):
        Op(**{**base, **kwargs})  # type: ignore[arg-type]


def test_malformed_json_is_refused(tmp_path: Path) -> None:
    with pytest.raises(HistoryError, match="version 1"):
        History.from_json({"ops": []})
    with pytest.raises(HistoryError, match="malformed entry"):
        History.from_json({"version": 1, "ops": [{"client": "c"}]})
    bad = tmp_path / "h.json"
    bad.write_text("{")
    with pytest.raises(HistoryError, match="cannot read a history"):
        History.load(bad)


# ----------------------------------------------------------------------------- property


@st.composite
def linear_runs(draw: st.DrawFn) -> tuple[Recorder, list[PrimaryInterval], list[tuple[str, int, float, float]]]:
    """Reigns one after another (each member change takes a new term; a new primary may report the
    previous term for a while), writes only inside a reign, every acknowledged write kept."""
    rec = Recorder()
    intervals: list[PrimaryInterval] = []
    spans: list[tuple[str, int, float, float]] = []
    t = 0.0
    term = 1
    member = "n1"
    for i in range(draw(st.integers(1, 5))):
        if i:
            member = draw(st.sampled_from([m for m in ("n1", "n2", "n3") if m != member]))
            term += draw(st.integers(1, 2))
            t += draw(st.floats(0.1, 3.0))
        start = t
        intervals.append(PrimaryInterval(member, term, start))
        lag = draw(st.integers(0, 3)) if i else 0
        for j in range(draw(st.integers(1, 12))):
            t += draw(st.floats(0.005, 0.2))
            reported = term if j >= lag else intervals[-2].term
            rec.op(draw(st.sampled_from(["c1", "c2"])), member, reported, t, t + draw(st.floats(0.001, 0.05)))
        t += 0.06
        spans.append((member, term, start, t))
    return rec, intervals, spans


@settings(max_examples=200, deadline=None)
@given(linear_runs(), st.booleans())
def test_property_linear_reigns_pass(run: tuple[Recorder, list[PrimaryInterval], object], with_intervals: bool) -> None:
    rec, intervals, _ = run
    v = check(History(rec.ops, intervals if with_intervals else [], final_of(rec)))
    assert v.ok, v.problems


@settings(max_examples=200, deadline=None)
@given(linear_runs(), st.data())
def test_property_a_late_write_of_an_older_reign_is_flagged(
    run: tuple[Recorder, list[PrimaryInterval], list[tuple[str, int, float, float]]], data: st.DataObject
) -> None:
    rec, intervals, spans = run
    older = [s for s in spans if any(o[0] != s[0] and o[1] > s[1] for o in spans)]
    if not older:
        return
    member, term, _, _ = data.draw(st.sampled_from(older))
    newer = min((o for o in spans if o[0] != member and o[1] > term), key=lambda o: o[2])
    send = newer[2] + data.draw(st.floats(0.001, 1.0))
    # only when no reign of the stale member itself (newer than the evidence) began before the send
    if any(s[0] == member and s[1] >= newer[1] and s[2] <= send for s in spans):
        return
    stale = rec.op("stale", member, term, send, send + 0.01)
    v = check(History(rec.ops, intervals, final_of(rec)))
    assert [s.op["key"] for s in v.split_brain] == [stale.key]
