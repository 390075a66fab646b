"""Quorum failsafe promises: voter side, primary side, and the invariant I5 claims as properties.

Plain data first; then Hypothesis drives ``quorum_model.World`` (data members and witnesses,
etcd loss, message loss, promise renewals, crashes, clock advance and vote requests).
"""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from quorum_model import TIMING, Event, Mode, World, apply, events

from pgquorum.agent.quorum.failsafe import (
    KeepServing,
    Promise,
    PromiseRequest,
    VoterMemory,
    grant_promise,
    may_keep_serving,
    observe_etcd,
    promise_blocks_vote,
    release_promise,
    serving_deadline,
)
from pgquorum.agent.quorum.refusal import Refusal, RefusalCode

NOW = 100.0
SYNCED = observe_etcd(VoterMemory("c", ttl=3.0, started_at=0.0), 7)
ASK = PromiseRequest("a", 7)


def refused(answer: Promise | Refusal, code: RefusalCode, *words: str) -> None:
    assert isinstance(answer, Refusal), answer
    assert answer.code is code and answer.reason.endswith("."), answer
    for word in words:
        assert word in answer.reason, answer.reason


# -- voter side ---------------------------------------------------------------------------------


def test_grants_a_promise_for_ttl_from_its_answer() -> None:
    memory, answer = grant_promise(SYNCED, ASK, NOW)
    assert answer == Promise("c", "a", 7, NOW, 3.0)
    assert memory.promise == answer


def test_renewal_moves_the_promise_forward() -> None:
    memory, _ = grant_promise(SYNCED, ASK, NOW)
    memory, answer = grant_promise(memory, ASK, NOW + 1.0)
    assert isinstance(answer, Promise) and answer.expires_at() == NOW + 4.0


def test_promises_nothing_before_reading_etcd_since_start() -> None:
    fresh = VoterMemory("c", 3.0, started_at=NOW)
    memory, answer = grant_promise(fresh, ASK, NOW)
    refused(answer, RefusalCode.NOT_SYNCED, "c has not read etcd since it started", "term after 7")
    assert memory == fresh and answer.status == 503  # type: ignore[union-attr]


def test_refuses_when_etcd_shows_a_newer_term() -> None:
    _, answer = grant_promise(observe_etcd(SYNCED, 8), ASK, NOW)
    refused(answer, RefusalCode.NEWER_TERM, "term 8", "a's term 7")


def test_refuses_after_voting_in_a_newer_term() -> None:
    voted = replace(SYNCED, votes_cast=((8, "b"),))
    _, answer = grant_promise(voted, ASK, NOW)
    refused(answer, RefusalCode.VOTED_NEWER, "already voted for b in term 8", "two primaries")


def test_a_vote_in_the_primarys_own_term_does_not_prevent_the_promise() -> None:
    voted = replace(SYNCED, votes_cast=((7, "b"),))  # voted for a loser of the election a won
    assert isinstance(grant_promise(voted, ASK, NOW)[1], Promise)


def test_refuses_a_second_primary_while_the_first_promise_binds() -> None:
    memory, _ = grant_promise(SYNCED, PromiseRequest("b", 7), NOW)
    _, answer = grant_promise(memory, ASK, NOW + 1.0)
    refused(answer, RefusalCode.PROMISED, "promised b", "2.0s")
    assert isinstance(grant_promise(memory, ASK, NOW + 3.0)[1], Promise), "free again once expired"


def test_a_newer_terms_primary_replaces_an_older_promise() -> None:
    at_term_6 = observe_etcd(VoterMemory("c", 3.0, 0.0), 6)
    memory, _ = grant_promise(at_term_6, PromiseRequest("b", 6), NOW)
    memory, answer = grant_promise(memory, ASK, NOW + 1.0)
    assert isinstance(answer, Promise) and memory.promise == answer
    _, older = grant_promise(memory, PromiseRequest("b", 6), NOW + 1.5)
    refused(older, RefusalCode.PROMISED, "promised a")


def test_promise_blocks_votes_for_others_for_ttl() -> None:
    memory, _ = grant_promise(SYNCED, ASK, NOW)
    reason = promise_blocks_vote(memory, NOW + 2.9, "b")
    assert reason is not None and "c promised a" in reason and "0.1s" in reason
    assert promise_blocks_vote(memory, NOW + 2.9) is not None
    assert promise_blocks_vote(memory, NOW + 2.9, "a") is None, "the promised primary itself may be elected"
    assert promise_blocks_vote(memory, NOW + 3.0, "b") is None


def test_a_release_by_the_stopped_primary_frees_the_vote_at_once() -> None:
    memory, _ = grant_promise(SYNCED, ASK, NOW)
    assert promise_blocks_vote(memory, NOW + 0.5, "b")
    memory, dropped = release_promise(memory, ASK)
    assert dropped and memory.promise is None
    assert promise_blocks_vote(memory, NOW + 0.5, "b") is None


def test_a_renewal_arriving_after_the_release_binds_nobody() -> None:
    memory, _ = grant_promise(SYNCED, ASK, NOW)
    memory, _ = release_promise(memory, ASK)
    memory, answer = grant_promise(memory, ASK, NOW + 0.1)
    refused(answer, RefusalCode.RELEASED, "a released c's promise for term 7")
    assert memory.promise is None and promise_blocks_vote(memory, NOW + 0.2, "b") is None
    # the same member elected again later, in a newer term, is promised as before
    memory = observe_etcd(memory, 8)
    memory, answer = grant_promise(memory, PromiseRequest("a", 8), NOW + 5)
    assert isinstance(answer, Promise) and answer.term == 8


def test_a_release_drops_only_that_primarys_promise_up_to_its_term() -> None:
    memory, _ = grant_promise(SYNCED, ASK, NOW)
    for other in (PromiseRequest("b", 7), PromiseRequest("a", 6)):
        kept, dropped = release_promise(memory, other)
        assert not dropped and kept.promise == memory.promise, other
    # a release for a newer term than the promise's (the primary re-elected itself) drops it
    kept, dropped = release_promise(memory, PromiseRequest("a", 9))
    assert dropped and kept.promise is None and kept.released == PromiseRequest("a", 9)
    # an older release does not undo a newer one
    kept, _ = release_promise(kept, PromiseRequest("a", 8))
    assert kept.released == PromiseRequest("a", 9)


def test_a_restarted_voter_votes_for_nobody_for_ttl() -> None:
    memory = observe_etcd(VoterMemory("c", 3.0, started_at=NOW), 7)
    reason = promise_blocks_vote(memory, NOW + 1.0, "b")
    assert reason is not None and "started 1.0s ago" in reason
    assert promise_blocks_vote(memory, NOW + 3.0, "b") is None


def test_observe_etcd_learns_the_term_and_its_own_votes() -> None:
    memory = observe_etcd(VoterMemory("c", 3.0, 0.0), 7, [(8, "b"), (5, "x")])
    assert memory.etcd_term == 7 and memory.votes_cast == ((8, "b"),)
    memory = observe_etcd(memory, 6)
    assert memory.etcd_term == 7, "a stale read never moves the term back"
    assert observe_etcd(memory, 8).votes_cast == ((8, "b"),)
    assert observe_etcd(memory, 9).votes_cast == ()


# -- primary side -------------------------------------------------------------------------------

FIVE = ("a", "b", "c", "w", "x")


def promise(voter: str, sent: float, ttl: float = 3.0, primary: str = "a", term: int = 7) -> Promise:
    return Promise(voter, primary, term, sent, ttl)


def keep(promises: list[Promise], now: float, members: tuple[str, ...] = FIVE) -> KeepServing:
    return may_keep_serving(promises, members, now, TIMING, me="a", term=7)


def test_a_majority_counting_itself_keeps_the_primary_serving() -> None:
    verdict = keep([promise("b", 10.0), promise("w", 10.5)], 11.0)
    assert verdict.allowed and verdict.deadline == 12.5  # sent 10.0 + ttl 3 - margin 0.5
    assert "3 of 5 voting members (a, b, w)" in verdict.reason


def test_the_deadline_is_the_majoritys_weakest_promise() -> None:
    verdict = keep([promise("b", 10.0), promise("w", 11.0), promise("x", 9.0)], 11.0)
    assert verdict.deadline == 12.5  # the 2nd latest of the others: a majority needs 2 besides a


def test_measured_from_the_send_time_minus_the_margin() -> None:
    verdict = keep([promise("b", 10.0), promise("w", 10.0)], 12.5)
    assert not verdict.allowed and verdict.deadline == 12.5
    assert "only 1 of 5" in verdict.reason and "fence now" in verdict.reason


def test_a_minority_of_promises_never_allows_serving() -> None:
    verdict = keep([promise("b", 10.0)], 10.0)
    assert verdict == KeepServing(False, verdict.reason, None)
    assert "only 2 of 5 voting members (a, b)" in verdict.reason


def test_promises_for_another_primary_term_or_non_members_do_not_count() -> None:
    others = [promise("b", 10.0, primary="b"), promise("w", 10.0, term=6), promise("zz", 10.0), promise("a", 10.0)]
    assert not keep(others, 10.0).allowed


def test_a_voters_shorter_ttl_wins_and_a_longer_one_is_capped() -> None:
    assert keep([promise("b", 10.0, ttl=2.0), promise("w", 10.0, ttl=2.0)], 11.0).deadline == 11.5
    assert keep([promise("b", 10.0, ttl=60.0), promise("w", 10.0, ttl=60.0)], 11.0).deadline == 12.5


def test_the_latest_renewal_per_voter_counts() -> None:
    verdict = keep([promise("b", 10.0), promise("b", 11.0), promise("w", 11.0)], 11.0)
    assert verdict.deadline == 13.5


def test_three_members_need_one_other_and_a_single_member_needs_none() -> None:
    assert keep([promise("b", 10.0)], 11.0, ("a", "b", "w")).deadline == 12.5
    alone = keep([], 11.0, ("a",))
    assert alone.allowed and alone.deadline == math.inf


def test_a_primary_that_is_not_a_voting_member_does_not_count_itself() -> None:
    assert not keep([promise("b", 10.0)], 11.0, ("b", "c", "w")).allowed
    assert keep([promise("b", 10.0), promise("c", 10.0)], 11.0, ("b", "c", "w")).allowed


def test_a_primary_re_elected_for_itself_counts_its_earlier_terms_promises() -> None:
    earlier = [promise("b", 10.0, term=7), promise("w", 10.0, term=6)]
    assert not may_keep_serving(earlier, FIVE, 11.0, TIMING, me="a", term=8).allowed
    verdict = may_keep_serving(earlier, FIVE, 11.0, TIMING, me="a", term=8, since_term=6)
    assert verdict.allowed and verdict.deadline == 12.5
    assert not may_keep_serving(earlier, FIVE, 11.0, TIMING, me="a", term=8, since_term=7).allowed


def test_serving_deadline_with_and_without_the_majority_rule() -> None:
    held = KeepServing(True, "", 12.5)
    lost = KeepServing(False, "", None)
    assert serving_deadline(20.0, held, require_majority=True) == 12.5
    assert serving_deadline(20.0, lost, require_majority=True) is None
    assert serving_deadline(10.0, held, require_majority=False) == 12.5, "promises extend the lease"
    assert serving_deadline(20.0, held, require_majority=False) == 20.0
    assert serving_deadline(10.0, lost, require_majority=False) == 10.0
    assert serving_deadline(None, lost, require_majority=False) is None


# -- properties ---------------------------------------------------------------------------------

CLUSTERS = [(("a", "b", "c"), ()), (("a", "b"), ("w",)), (("a", "b", "c"), ("w",)), (("a", "b", "c"), ("w", "x"))]


def run_events(w: World, events: list[Event]) -> None:
    for event in events:
        apply(w, event)  # the world checks its invariants after every step


@settings(max_examples=150, deadline=None)
@given(
    st.sampled_from(CLUSTERS),
    st.sampled_from(["quorum", "failsafe"]),
    st.booleans(),
    events(20, 70),
)
def test_no_election_while_the_old_primary_may_serve(
    cluster: tuple[tuple[str, ...], tuple[str, ...]], mode: Mode, primary_cut_from_etcd: bool, events: list[Event]
) -> None:
    """(b) invariant I5: a minority that still reaches etcd cannot be promoted.

    After every step: no candidate holds a majority of vote keys for a term newer than that of
    a primary that may still accept writes, at most one member accepts writes, and none does
    once a newer term was elected.
    """
    w = World.start(*cluster, mode=mode)
    w.nodes["a"].etcd_link = not primary_cut_from_etcd
    run_events(w, events)


@settings(max_examples=60, deadline=None)
@given(
    st.sampled_from(["a", "b", "w"]),
    st.sampled_from(["up", "primary_cut", "down"]),
    events(0, 15),
)
def test_two_data_one_witness_survives_losing_any_one_member(lost: str, etcd: str, before: list[Event]) -> None:
    """(c) 2 data + 1 witness, after any history: lose one member, the rest keeps a writable primary.

    Losing the primary needs etcd for the election (the new leader key); losing b or w does
    not need etcd at all: the primary serves on the other one's promise.
    """
    w = World.start(("a", "b"), ("w",), mode="quorum")
    run_events(w, before)
    heal(w)
    w.run(2 * TIMING.ttl)  # back to a healthy cluster, whoever leads
    leader = w.writers()[0].name
    if lost == "a":
        lost = leader
    elif lost == "b":
        lost = "b" if leader != "b" else "a"
    w.crash(lost)
    if etcd == "primary_cut" or (etcd == "down" and lost != leader):
        w.nodes[leader].etcd_link = False
        w.etcd.up = etcd != "down"
    w.run(3 * TIMING.ttl)
    survivors = [n.name for n in w.writers()]
    assert len(survivors) == 1 and survivors[0] != lost


@settings(max_examples=60, deadline=None)
@given(
    st.sampled_from([("a", "b"), ("a", "w"), ("b", "w")]),
    st.sampled_from(["up", "down"]),
    events(0, 15),
)
def test_two_data_one_witness_stops_writes_after_losing_two(
    lost: tuple[str, str], etcd: str, before: list[Event]
) -> None:
    """(c) Losing two of three: the survivor neither keeps serving nor gets elected, in time."""
    w = World.start(("a", "b"), ("w",), mode="quorum")
    run_events(w, before)
    heal(w)
    w.run(2 * TIMING.ttl)
    for name in lost:
        w.crash(name)
    w.etcd.up = etcd == "up"
    w.advance(TIMING.ttl)  # every promise the survivor holds has run out by now
    assert not w.writers()
    w.run(3 * TIMING.ttl)
    assert not w.writers()
    assert all(n.state == "standby" for n in w.nodes.values())


def test_two_data_one_witness_failsafe_mode_stops_writes_only_without_etcd() -> None:
    """With the lease rule alone (failsafe mode), etcd keeps a primary whose voters are gone.

    That is why the recommended wiring renews promises all the time (quorum mode): invariant I5's
    "losing two stops writes" then holds whether etcd is reachable or not.
    """
    w = World.start(("a", "b"), ("w",), mode="failsafe")
    w.crash("b")
    w.crash("w")
    w.run(3 * TIMING.ttl)
    assert [n.name for n in w.writers()] == ["a"]
    w.nodes["a"].etcd_link = False
    w.run(TIMING.ttl)
    assert not w.writers()


def heal(w: World) -> None:
    for name in w.names:
        w.restart(name)
        w.nodes[name].etcd_link = True
    w.etcd.up = True
    w.cut.clear()
    w.inflight.clear()


# -- directed attacks: each rule, the history that would make two primaries without it -------------


def tick(w: World, dt: float = 0.5) -> None:
    w.advance(dt)
    for name in w.names:
        w.loop(name)


def renew(w: World, leader: str, to: set[str]) -> None:
    """``leader`` asks everyone for a promise; only the requests to ``to`` arrive."""
    first = len(w.inflight)
    w.send_promises(leader)
    while len(w.inflight) > first:
        if w.inflight[first].voter in to:
            w.deliver(first)
        else:
            w.drop(first)


def three_with_primary_cut_from_etcd(mode: Mode) -> World:
    w = World.start(("a", "b", "c"), (), mode=mode)
    w.nodes["a"].etcd_link = False  # its key expires TTL after the start; only promises keep it
    return w


@pytest.mark.parametrize("mode", ["quorum", "failsafe"])
def test_a_primary_cut_from_everyone_fences_before_the_majority_elects(mode: Mode) -> None:
    w = three_with_primary_cut_from_etcd(mode)
    w.cut |= {frozenset("ab"), frozenset("ac")}
    fenced_at = elected_at = None
    while elected_at is None and w.now < 20:
        tick(w, 0.1)
        renew(w, "a", {"b", "c"})  # lost on the cut links
        if fenced_at is None and not w.writable(w.nodes["a"]):
            fenced_at = w.now
        if w.elect("c"):
            elected_at = w.now
    assert fenced_at is not None and elected_at is not None and fenced_at < elected_at
    assert elected_at - w.nodes["c"].memory.started_at < 4 * TIMING.ttl


@pytest.mark.parametrize("mode", ["quorum", "failsafe"])
def test_a_promise_blocks_the_minority_that_still_reaches_etcd(mode: Mode) -> None:
    """c reaches etcd and b, not a; b promised a: c cannot be elected while a serves."""
    w = three_with_primary_cut_from_etcd(mode)
    w.cut.add(frozenset("ac"))
    for _ in range(30):
        w.advance(0.5)
        w.loop("b")  # a does not loop: no writes, so c is not behind b and only the promise stops b
        w.loop("c")
        renew(w, "a", {"b"})
        assert not w.elect("c"), "elected while a serves on b's promise"
        assert w.writable(w.nodes["a"])
    assert w.etcd.leader is None and w.etcd.term == 1


@pytest.mark.parametrize("mode", ["quorum", "failsafe"])
def test_a_voter_that_voted_in_a_newer_term_refuses_the_old_primary(mode: Mode) -> None:
    w = three_with_primary_cut_from_etcd(mode)
    while w.etcd.leader is not None or w.now < 6.5:  # b's first promise lapses, a renews only c's
        tick(w)
        renew(w, "a", {"c"})
    assert not w.elect("c"), "c promised a, so its own vote is missing"
    assert (2, "b") in w.etcd.votes, "b was free and voted for c in term 2"
    asked_at = w.now
    renew(w, "a", {"b", "c"})
    assert w.nodes["a"].promises["b"].granted_at < asked_at, "b refused: it voted in term 2"
    while not w.elect("c"):  # a keeps only b's (refused) requests; c's promise runs out
        tick(w)
        renew(w, "a", {"b"})
    assert not w.writable(w.nodes["a"]) and w.etcd.leader == "c"


@pytest.mark.parametrize("mode", ["quorum", "failsafe"])
def test_a_restarted_voter_promises_nothing_before_it_reads_its_votes(mode: Mode) -> None:
    w = three_with_primary_cut_from_etcd(mode)
    while w.etcd.leader is not None or w.now < 6.5:
        tick(w)
        renew(w, "a", {"c"})
    w.elect("c")
    assert (2, "b") in w.etcd.votes
    w.crash("b")
    w.restart("b")
    w.nodes["b"].etcd_link = False  # it cannot read its vote back
    renew(w, "a", {"b", "c"})
    assert w.nodes["b"].memory.promise is None, "not synced with etcd: no promise"
    while not w.elect("c"):
        tick(w)
        renew(w, "a", {"b"})
    assert not w.writable(w.nodes["a"]) and w.etcd.leader == "c"


@pytest.mark.parametrize("mode", ["quorum", "failsafe"])
def test_a_restarted_voter_votes_for_nobody_while_its_forgotten_promise_may_bind(mode: Mode) -> None:
    w = three_with_primary_cut_from_etcd(mode)
    while w.etcd.leader is not None or w.now < 6.5:  # now a serves on b's promise alone
        tick(w)
        renew(w, "a", {"b"})
    w.crash("b")
    w.restart("b")  # forgets its promise to a, which a still counts
    w.loop("b")
    assert not w.elect("c"), "b votes for nobody during its first ttl"
    assert w.writable(w.nodes["a"])


@pytest.mark.parametrize("mode", ["quorum", "failsafe"])
def test_etcd_down_for_everyone_then_back_the_primary_serves_throughout(mode: Mode) -> None:
    """The failsafe's purpose: an etcd outage longer than ttl costs no write availability."""
    w = World.start(("a", "b"), ("w",), mode=mode)
    w.etcd.up = False
    for _ in range(4 * int(TIMING.ttl)):
        tick(w, 0.5)
        renew(w, "a", {"b", "w"})
        assert [n.name for n in w.writers()] == ["a"]
    w.etcd.up = True
    assert w.etcd.leader is None and w.etcd.term == 1, "the key expired during the outage"
    for _ in range(4):
        tick(w, 0.5)
        renew(w, "a", {"b", "w"})
        if w.can_elect("a"):
            assert w.elect("a"), "a's voters promised it, so they vote for it"
        assert [n.name for n in w.writers()] == ["a"], "serving on its term-1 promises meanwhile"
    a = w.nodes["a"]
    assert (w.etcd.leader, w.etcd.term, a.term_led, a.since_term, a.state) == ("a", 2, 2, 1, "primary")


@pytest.mark.parametrize("mode", ["quorum", "failsafe"])
def test_a_leader_stopped_gracefully_frees_its_voters_and_a_late_renewal_binds_nobody(mode: Mode) -> None:
    """SIGTERM: a stops postgres, releases b's and c's promises and its key; c is elected at once,
    though a renewal a sent before the stop is delivered afterwards."""
    w = World.start(("a", "b", "c"), (), mode=mode)
    w.run(3 * TIMING.ttl)
    assert [n.name for n in w.writers()] == ["a"]
    renew(w, "a", {"b", "c"})
    w.send_promises("a")  # in flight while a stops
    w.shutdown("a")
    assert not w.writers() and w.etcd.leader is None
    while w.inflight:
        w.deliver(0)  # the late renewals: refused as released
    assert all(n.memory.promise is None for n in w.nodes.values() if n.name != "a")
    tick(w, 0.01)  # b and c read etcd: no leader key
    assert w.elect("c"), "the promises to the stopped leader still bind its voters"
    tick(w)
    renew(w, "c", {"b"})
    assert [n.name for n in w.writers()] == ["c"]


def test_without_the_release_the_successor_waits_out_the_promises() -> None:
    """The same stop with every release lost: c is elected only once the promises have ended."""
    w = World.start(("a", "b", "c"), (), mode="quorum")
    w.run(3 * TIMING.ttl)
    renew(w, "a", {"b", "c"})
    stopped = w.now
    w.shutdown("a", lost=0b111)
    tick(w, 0.01)
    assert not w.elect("c")
    while not w.elect("c"):
        tick(w, 0.1)
    assert w.now - stopped >= TIMING.ttl - 0.5
