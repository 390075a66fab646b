"""The STONITH gate's pure rule: an old leader whose vote elected us is not fenced again."""

from __future__ import annotations

from pgquorum.agent.ha.stonith_gate import voted_for_us
from pgquorum.agent.quorum.votes import Vote


def vote(voter: str, term: int, candidate: str) -> Vote:
    return Vote(voter, term, candidate, 100, False, 0.0, 1)


def test_an_old_leader_that_voted_for_us_in_this_term_has_stopped_writes() -> None:
    votes = [vote("db-1", 6, "db-0"), vote("db-0", 6, "db-0")]
    assert voted_for_us("db-1", "db-0", 6, votes)


def test_any_other_vote_proves_nothing() -> None:
    assert not voted_for_us("db-1", "db-0", 6, [vote("db-1", 5, "db-0")])  # an older term
    assert not voted_for_us("db-1", "db-0", 6, [vote("db-1", 6, "db-2")])  # for someone else
    assert not voted_for_us("db-1", "db-0", 6, [vote("db-2", 6, "db-0")])  # another voter
    assert not voted_for_us("db-1", "db-0", 6, [])
