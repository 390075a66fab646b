"""Votes for promotion: every refusal of ``decide_vote``, ``tally``, the JSON forms and validators.

Plain data, no processes. The property test at the end drives the model in ``quorum_model``.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from quorum_model import Event, Mode, World, apply, events

from pgquorum.agent.quorum.failsafe import Promise, PromiseRequest, VoterMemory, observe_etcd
from pgquorum.agent.quorum.refusal import Refusal, RefusalCode
from pgquorum.agent.quorum.votes import (
    FieldError,
    Grant,
    Vote,
    VoteRequest,
    VoterView,
    confirm_vote,
    decide_vote,
    parse_promise_request,
    parse_vote_request,
    promise_response,
    read_promise_response,
    read_vote_response,
    record_vote,
    tally,
    vote_key,
    vote_response,
    votes_prefix,
)

NOW = 100.0
MEMORY = observe_etcd(VoterMemory("c", ttl=3.0, started_at=0.0), 7)


def view(**kw: object) -> VoterView:
    base: dict[str, object] = dict(
        name="c",
        witness=False,
        timeline=3,
        wal_lsn=5000,
        term=7,
        leader=None,
        live_primary=None,
        memory=MEMORY,
        wall=1_795_000_000.0,
    )
    base.update(kw)
    return VoterView(**base)  # type: ignore[arg-type]


REQ = VoteRequest("b", 8, 3, 5000)


def refused(result: Grant | Refusal, code: RefusalCode, *words: str) -> Refusal:
    assert isinstance(result, Refusal), result
    assert result.code is code, result
    for word in words:
        assert word in result.reason, result.reason
    assert result.reason.endswith("."), "reasons are full sentences"
    return result


def vote(voter: str, candidate: str, lsn: int | None, term: int = 8, timeline: int | None = 3) -> Vote:
    witness = lsn is None
    return Vote(voter, term, candidate, lsn, witness, 0.0, None if witness else timeline)


# -- decide_vote ---------------------------------------------------------------------------------


def test_grants_a_candidate_as_advanced_as_itself() -> None:
    result = decide_vote(view(), REQ, NOW)
    assert result == Grant(Vote("c", 8, "b", 5000, False, 1_795_000_000.0, 3))


def test_grants_a_candidate_further_ahead() -> None:
    assert isinstance(decide_vote(view(), replace(REQ, wal_lsn=9000), NOW), Grant)


def test_refuses_without_etcd_because_the_key_is_the_vote() -> None:
    refused(decide_vote(view(term=None), REQ, NOW), RefusalCode.ETCD_UNREACHABLE, "c cannot reach etcd", "term 8")


def test_refuses_a_term_that_is_not_the_next_one() -> None:
    refused(decide_vote(view(), replace(REQ, term=7), NOW), RefusalCode.WRONG_TERM, "already 7", "over")
    refused(decide_vote(view(), replace(REQ, term=10), NOW), RefusalCode.WRONG_TERM, "only term 8")


def test_refuses_a_second_candidate_in_the_same_term() -> None:
    memory = record_vote(MEMORY, vote("c", "d", 5000))
    refused(decide_vote(view(memory=memory), REQ, NOW), RefusalCode.ALREADY_VOTED, "already voted for d in term 8")


def test_asking_again_for_the_same_candidate_is_granted_again() -> None:
    memory = record_vote(MEMORY, vote("c", "b", 5000))
    assert isinstance(decide_vote(view(memory=memory), REQ, NOW), Grant)


def test_refuses_while_the_leader_key_is_held() -> None:
    refused(decide_vote(view(leader="a"), REQ, NOW), RefusalCode.LEADER_KEY_HELD, "a holding the leader key", "7")


def test_refuses_while_it_sees_a_live_writable_primary() -> None:
    refused(decide_vote(view(live_primary="a"), REQ, NOW), RefusalCode.LIVE_PRIMARY, "a alive", "two primaries")


def test_a_live_primary_may_vote_for_itself() -> None:
    """A primary that lost its key (failsafe) re-runs an election for itself."""
    me = view(name="a", live_primary="a", memory=observe_etcd(VoterMemory("a", 3.0, 0.0), 7))
    assert isinstance(decide_vote(me, VoteRequest("a", 8, 3, 5000), NOW), Grant)


def test_refuses_while_its_promise_to_the_primary_binds() -> None:
    memory = replace(MEMORY, promise=Promise("c", "a", 7, NOW - 1.0, 3.0))
    refused(decide_vote(view(memory=memory), REQ, NOW), RefusalCode.PROMISED, "promised a", "2.0s")
    assert isinstance(decide_vote(view(memory=memory), REQ, NOW + 2.0), Grant), "expired at granted_at + ttl"


def test_a_promise_does_not_block_a_vote_for_the_promised_primary() -> None:
    memory = replace(MEMORY, promise=Promise("c", "b", 7, NOW - 1.0, 3.0))
    assert isinstance(decide_vote(view(memory=memory), REQ, NOW), Grant)


def test_votes_for_nobody_during_its_first_ttl_after_a_restart() -> None:
    memory = observe_etcd(VoterMemory("c", 3.0, started_at=NOW - 1.0), 7)
    refused(decide_vote(view(memory=memory), REQ, NOW), RefusalCode.STARTING, "started 1.0s ago", "2.0s")
    assert isinstance(decide_vote(view(memory=memory), REQ, NOW + 2.0), Grant)


def test_a_data_voter_must_know_its_own_position() -> None:
    refused(decide_vote(view(wal_lsn=None), REQ, NOW), RefusalCode.POSITION_UNKNOWN, "own WAL position")


def test_refuses_a_candidate_behind_it() -> None:
    result = decide_vote(view(), replace(REQ, wal_lsn=4744), NOW)
    refused(result, RefusalCode.CANDIDATE_BEHIND, "b is behind c", "0/1288", "0/1388", "256 bytes")


def test_timelines_compare_before_positions() -> None:
    """As Raft compares the last log term before the index: newer timeline wins."""
    assert isinstance(decide_vote(view(), VoteRequest("b", 8, 4, 10), NOW), Grant)
    refused(decide_vote(view(), VoteRequest("b", 8, 2, 99_999), NOW), RefusalCode.CANDIDATE_BEHIND, "timeline 2")


def test_a_witness_votes_without_a_position() -> None:
    witness = view(name="w", witness=True, timeline=None, wal_lsn=None)
    result = decide_vote(witness, replace(REQ, wal_lsn=0), NOW)
    assert isinstance(result, Grant)
    assert result.vote.witness and result.vote.wal_lsn is None and result.vote.timeline is None


def test_record_vote_keeps_the_first_vote_of_a_term() -> None:
    memory = record_vote(MEMORY, vote("c", "b", 1))
    assert record_vote(memory, vote("c", "d", 1)) == memory
    assert memory.vote_in(8) == "b" and memory.voted_term() == 8


def test_the_existing_key_decides_after_a_restart() -> None:
    mine = vote("c", "b", 5000)
    assert confirm_vote(mine, None) == Grant(mine)
    assert confirm_vote(mine, replace(mine, at=5.0)) == Grant(replace(mine, at=5.0))
    refused(confirm_vote(mine, vote("c", "d", 5000)), RefusalCode.ALREADY_VOTED, "already names d", "none for b")


# -- tally --------------------------------------------------------------------------------------

MEMBERS = ("a", "b", "c", "w", "x")


def test_tally_majority_of_voting_members_including_witnesses() -> None:
    votes = [vote("b", "b", 5000), vote("w", "b", None), vote("x", "b", None)]
    t = tally(votes, MEMBERS, 8, "b")
    assert (t.granted, t.needed, t.majority, t.may_promote) == (("b", "w", "x"), 3, True, True)
    assert t.missing == ("a", "c") and t.most_advanced_lsn == 5000
    assert "b won term 8" in t.reason


def test_tally_without_majority_says_who_is_missing_and_who_voted_elsewhere() -> None:
    votes = [vote("b", "b", 5000), vote("c", "c", 5000), vote("w", "b", None)]
    t = tally(votes, MEMBERS, 8, "b")
    assert not t.majority and not t.may_promote
    assert t.others == ("c",) and t.missing == ("a", "x")
    assert "2 of 5 votes" in t.reason and "c" in t.reason and "a, x" in t.reason


def test_tally_even_membership_needs_more_than_half() -> None:
    votes = [vote("a", "a", 10), vote("b", "a", 10)]
    assert tally(votes, ("a", "b", "c", "d"), 8, "a").needed == 3
    assert not tally(votes, ("a", "b", "c", "d"), 8, "a").majority


def test_tally_refuses_a_candidate_behind_any_voter_of_the_term() -> None:
    """c voted for someone else but reported more WAL: b would lose it."""
    votes = [vote("b", "b", 5000), vote("w", "b", None), vote("x", "b", None), vote("c", "c", 6000)]
    t = tally(votes, MEMBERS, 8, "b")
    assert t.majority and not t.may_promote
    assert t.ahead == ("c",) and t.most_advanced_lsn == 6000
    assert "behind c" in t.reason


def test_tally_does_not_need_the_candidates_own_vote_but_its_position() -> None:
    """A majority of the others is a majority; the candidate's position then comes from its state."""
    votes = [vote("w", "b", None), vote("x", "b", None), vote("c", "b", 10), vote("b", "c", 12)]
    t = tally(votes, MEMBERS, 8, "b", position=(3, 12))
    assert t.majority and t.may_promote, t.reason
    assert not tally(votes, MEMBERS, 8, "b").may_promote, "no known position: nothing to promote"
    behind = tally(votes, MEMBERS, 8, "b", position=(3, 5))
    assert not behind.may_promote and "c" in behind.ahead


def test_tally_never_promotes_a_witness() -> None:
    votes = [vote("w", "w", None), vote("x", "w", None), vote("c", "w", 10)]
    t = tally(votes, MEMBERS, 8, "w")
    assert not t.may_promote and "holds no data" in t.reason


def test_tally_ignores_other_terms_and_non_members() -> None:
    votes = [vote("b", "b", 1), vote("w", "b", None, term=7), vote("zz", "b", 1), vote("x", "b", None)]
    t = tally(votes, MEMBERS, 8, "b")
    assert t.granted == ("b", "x") and "w" in t.missing


def test_vote_keys() -> None:
    assert votes_prefix("pgquorum", "main", 8) == "/pgquorum/main/votes/8/"
    assert vote_key("/pgquorum/", "main", 8, "c") == "/pgquorum/main/votes/8/c"


# -- JSON and HTTP bodies -------------------------------------------------------------------------


def test_vote_json_round_trip() -> None:
    v = vote("c", "b", 5000)
    assert Vote.from_json(v.to_json()) == v
    w = vote("w", "b", None)
    assert Vote.from_json(w.to_json().encode()) == w


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ("[]", "vote"),
        ('{"voter": "c", "term": 8, "candidate": "B!", "wal_lsn": 1, "witness": false, "at": 0}', "candidate"),
        ('{"voter": "c", "term": 0, "candidate": "b", "wal_lsn": 1, "witness": false, "at": 0}', "term"),
        ('{"voter": "c", "term": 8, "candidate": "b", "wal_lsn": -1, "witness": false, "at": 0}', "wal_lsn"),
        ('{"voter": "c", "term": 8, "candidate": "b", "wal_lsn": 1, "witness": "no", "at": 0}', "witness"),
        ("not json", "vote"),
    ],
)
def test_vote_from_json_names_the_bad_field(raw: str, field: str) -> None:
    with pytest.raises(ValueError, match=f"^{field}:"):
        Vote.from_json(raw)


def test_parse_vote_request() -> None:
    body = {"candidate": "b", "term": 8, "timeline": 3, "wal_lsn": 50331744}
    assert parse_vote_request(body) == VoteRequest("b", 8, 3, 50331744)


@pytest.mark.parametrize(
    ("body", "field", "words"),
    [
        ([1], "body", "expected a JSON object"),
        ({"candidate": "b", "term": 8, "timeline": 3}, "wal_lsn", "required field is missing"),
        ({"candidate": "b", "term": 8, "timeline": 3, "wal_lsn": 1, "force": True}, "force", "unknown field"),
        ({"candidate": 5, "term": 8, "timeline": 3, "wal_lsn": 1}, "candidate", "expected a string"),
        ({"candidate": "B b", "term": 8, "timeline": 3, "wal_lsn": 1}, "candidate", "not a member name"),
        ({"candidate": "b", "term": True, "timeline": 3, "wal_lsn": 1}, "term", "got a boolean"),
        ({"candidate": "b", "term": 0, "timeline": 3, "wal_lsn": 1}, "term", ">= 1"),
        ({"candidate": "b", "term": 8.5, "timeline": 3, "wal_lsn": 1}, "term", "whole number"),
        ({"candidate": "b", "term": 8, "timeline": "3", "wal_lsn": 1}, "timeline", "got a string"),
        ({"candidate": "b", "term": 8, "timeline": 3, "wal_lsn": -5}, "wal_lsn", "WAL byte position"),
        ({"candidate": "b", "term": 8, "timeline": 3, "wal_lsn": 2**64}, "wal_lsn", "WAL byte position"),
    ],
)
def test_parse_vote_request_names_the_field(body: object, field: str, words: str) -> None:
    error = parse_vote_request(body)
    assert isinstance(error, FieldError) and error.status == 400
    assert error.field == field and error.message.startswith(f"{field}: ") and words in error.message


def test_parse_promise_request() -> None:
    assert parse_promise_request({"primary": "a", "term": 7}) == PromiseRequest("a", 7)
    for body, field in [
        ({"primary": "a"}, "term"),
        ({"primary": "", "term": 7}, "primary"),
        ({"primary": "a", "term": -1}, "term"),
        ({"primary": "a", "term": 7, "ttl": 30}, "ttl"),
        ("a", "body"),
    ]:
        error = parse_promise_request(body)
        assert isinstance(error, FieldError) and error.field == field, (body, error)


def test_vote_answers_round_trip() -> None:
    grant = decide_vote(view(), REQ, NOW)
    status, body = vote_response(grant)
    assert status == 200 and body["granted"] is True
    assert isinstance(grant, Grant) and read_vote_response(status, body, "c", REQ) == grant.vote
    refusal = decide_vote(view(leader="a"), REQ, NOW)
    status, body = vote_response(refusal)
    assert (status, body["code"]) == (409, "leader_key_held")
    assert read_vote_response(status, body, "c", REQ) == refusal
    status, body = vote_response(decide_vote(view(term=None), REQ, NOW))
    assert (status, body["code"], body["granted"]) == (503, "etcd_unreachable", False)


def test_a_vote_answer_for_another_request_is_not_a_vote() -> None:
    _, body = vote_response(decide_vote(view(), REQ, NOW))
    result = read_vote_response(200, body, "c", replace(REQ, candidate="d"))
    assert isinstance(result, Refusal) and result.code is RefusalCode.BAD_ANSWER
    garbage = read_vote_response(500, "Internal Server Error", "c", REQ)
    assert isinstance(garbage, Refusal) and garbage.code is RefusalCode.BAD_ANSWER and "HTTP 500" in garbage.reason


def test_promise_answer_is_dated_at_the_send_time() -> None:
    request = PromiseRequest("a", 7)
    status, body = promise_response(Promise("c", "a", 7, granted_at=5000.0, ttl=3.0))
    assert (status, body) == (200, {"granted": True, "voter": "c", "primary": "a", "term": 7, "ttl": 3.0})
    assert read_promise_response(status, body, "c", request, sent_at=12.5) == Promise("c", "a", 7, 12.5, 3.0)
    wrong = read_promise_response(200, {**body, "term": 6}, "c", request, sent_at=12.5)
    assert isinstance(wrong, Refusal) and wrong.code is RefusalCode.BAD_ANSWER
    no_ttl = read_promise_response(200, {**body, "ttl": None}, "c", request, sent_at=12.5)
    assert isinstance(no_ttl, Refusal) and "ttl" in no_ttl.reason


# -- property (a) ---------------------------------------------------------------------------------

CLUSTERS = [(("a", "b", "c"), ()), (("a", "b"), ("w",)), (("a", "b", "c"), ("w",)), (("a", "b", "c"), ("w", "x"))]


@settings(max_examples=150, deadline=None)
@given(st.sampled_from(CLUSTERS), st.sampled_from(["quorum", "failsafe"]), events(20, 70))
def test_never_two_candidates_with_a_majority_for_one_term(
    cluster: tuple[tuple[str, ...], tuple[str, ...]], mode: Mode, history: list[Event]
) -> None:
    """(a) Competing candidates, lost requests, crashes that erase voters' memory, stale views.

    The world checks after every step that no term has two candidates holding a majority of vote
    keys and no term two elected leaders; the create-once key is what makes this hold across
    restarts, ``decide_vote`` what makes it hold within one process (no two grants per term).
    """
    w = World.start(*cluster, mode=mode)
    grants: dict[tuple[str, int, int], set[str]] = {}  # (voter, incarnation, term) -> candidates granted
    for event in history:
        apply(w, event)
        for n in w.nodes.values():
            for term, candidate in n.memory.votes_cast:
                grants.setdefault((n.name, n.incarnation, term), set()).add(candidate)
    for key, candidates in grants.items():
        assert len(candidates) == 1, f"{key} granted {candidates} in one term"
