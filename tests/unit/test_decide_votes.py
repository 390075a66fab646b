"""The HA decision with quorum votes and the failsafe (invariant I5), on plain data.

Three voting members by default: data members ``a`` and ``b`` and the witness ``w``. Promises are
the primary's copies (dated at the send time of their request); votes are keys read back from etcd.
"""

from __future__ import annotations

from dataclasses import replace

from pgquorum.agent.config import Timing
from pgquorum.agent.ha.actions import (
    AcquireLeader,
    AdvanceTerm,
    DeleteVotes,
    Fence,
    Promote,
    PublishStatus,
    ReleaseLeader,
    RequestVotes,
)
from pgquorum.agent.ha.decide import (
    ELECTION_RETRY,
    Election,
    Inputs,
    Memory,
    Voting,
    decide,
    guard_must_fence,
    serving_deadline_at,
)
from pgquorum.agent.model import (
    ClusterState,
    LeaderInfo,
    LeaderStatus,
    MemberInfo,
    PeerStatus,
    PostgresState,
    Role,
    VoterEntry,
)
from pgquorum.agent.quorum.failsafe import Promise
from pgquorum.agent.quorum.votes import Vote

T = Timing(ttl=3, loop_wait=1, retry_timeout=1, safety_margin=0.5)
SYSID = "7300000000000000001"
NOW = 100.0
VOTERS = ("a", "b", "w")


def member(name: str, **kw: object) -> MemberInfo:
    base: dict[str, object] = dict(
        role=Role.REPLICA, state="running", api_url=f"http://{name}", conn_url=f"pg://{name}"
    )
    base.update(kw)
    return MemberInfo(name=name, **base)  # type: ignore[arg-type]


def cluster(leader: str | None = "a", term: int = 3, votes: tuple[Vote, ...] = (), **kw: object) -> ClusterState:
    return ClusterState(
        revision=10,
        initialize=SYSID,
        leader=LeaderInfo(leader, 5, 99) if leader else None,
        term=term,
        members=(member("a"), member("b"), member("w", role=Role.WITNESS, witness=True)),
        status=kw.pop("status", LeaderStatus(term, 2, 1000)),  # type: ignore[arg-type]
        voters=(VoterEntry("a"), VoterEntry("b"), VoterEntry("w", witness=True)),
        votes=votes,
    )


PRIMARY = PostgresState(True, True, True, in_recovery=False, timeline=2, system_id=SYSID, wal_lsn=1000)
REPLICA = PostgresState(
    True, True, True, in_recovery=True, timeline=2, system_id=SYSID, received_lsn=1000, upstream="a", streaming=True
)


def promise(voter: str, sent_at: float = NOW - 0.5, term: int = 3, primary: str = "a") -> Promise:
    return Promise(voter, primary, term, sent_at, T.ttl)


def voting(*promises: Promise, election: Election | None = None) -> Voting:
    return Voting(VOTERS, tuple(promises), election)


LEADING = Memory(leader_term=3, last_renew_sent=NOW - 0.1, leading_since=50.0, since_term=3)


def inputs(me: str = "a", **kw: object) -> Inputs:
    base: dict[str, object] = dict(
        me=me,
        now=NOW,
        timing=T,
        cluster=cluster(),
        pg=PRIMARY,
        memory=LEADING,
        lease_renewed_at=NOW - 0.1,
        voting=voting(promise("b")),
    )
    base.update(kw)
    return Inputs(**base)  # type: ignore[arg-type]


def vote(voter: str, candidate: str = "b", lsn: int | None = 1000, term: int = 4) -> Vote:
    return Vote(voter, term, candidate, lsn, lsn is None, 0.0, None if lsn is None else 2)


# -- the primary serves on a majority of promises -------------------------------------------------


def test_primary_with_a_majority_of_promises_leads_on() -> None:
    d = decide(inputs())
    assert d.role is Role.LEADER
    assert isinstance(d.actions[0], PublishStatus)
    assert not any(isinstance(a, Fence) for a in d.actions)


def test_the_witness_promise_alone_is_a_majority_of_two_data_plus_one_witness() -> None:
    d = decide(inputs(voting=voting(promise("w"))))
    assert d.role is Role.LEADER


def test_without_a_majority_of_promises_the_primary_fences_and_releases_its_key_even_with_etcd_up() -> None:
    """2 data + 1 witness, the replica and the witness gone: the lease is fresh, writes must stop."""
    d = decide(inputs(voting=voting(promise("b", sent_at=NOW - 2.6))))  # expired at NOW - 0.1
    assert isinstance(d.actions[0], Fence) and isinstance(d.actions[1], ReleaseLeader)
    assert d.role is Role.DEMOTED
    assert d.memory.leader_term is None
    assert "only 1 of 3" in d.actions[0].reason
    assert d.actions[0].kind == "no_majority"  # the metrics label


def test_a_new_leader_serves_on_its_lease_while_its_first_promises_are_on_their_way() -> None:
    """A bootstrap leader whose peers registered as voters during initdb has no promise on its
    first pass: fencing then (before quorum commit has a record) left a cluster no one could lead."""
    fresh = replace(LEADING, leading_since=NOW - 0.05)
    d = decide(inputs(memory=fresh, voting=voting()))
    assert d.role is Role.LEADER and not any(isinstance(a, Fence) for a in d.actions)
    # a whole ttl later and still no promise: fenced as any leader without a majority
    late = replace(LEADING, leading_since=NOW - T.ttl)
    d = decide(inputs(memory=late, voting=voting()))
    assert isinstance(d.actions[0], Fence) and d.actions[0].kind == "no_majority"
    # the lease still bounds it: not renewed in time, fenced even while collecting
    stale = replace(fresh, last_renew_sent=NOW - T.fence_after() - 0.01)
    d = decide(inputs(memory=stale, voting=voting(), lease_renewed_at=NOW - T.fence_after() - 0.01))
    assert any(isinstance(a, Fence) for a in d.actions)


def test_promises_to_another_primary_or_an_older_leadership_do_not_count() -> None:
    stale = promise("b", term=2)  # our leadership began at term 3: a term-2 promise is someone else's
    other = promise("w", primary="b")
    d = decide(inputs(voting=voting(stale, other)))
    assert isinstance(d.actions[0], Fence)


def test_serving_deadline_is_the_promise_majority_not_the_lease() -> None:
    v = voting(promise("b", sent_at=90.0), promise("w", sent_at=99.0))
    # The lease would end at 99.9 + 2.5; the promises: the newer one, 99.0 + 3 - 0.5 = 101.5.
    assert serving_deadline_at(LEADING, T, v, "a", NOW) == 101.5


def test_fence_guard_follows_the_promises() -> None:
    v = voting(promise("b", sent_at=99.0))
    assert not guard_must_fence(101.4, LEADING, T, v, "a")
    assert guard_must_fence(101.5, LEADING, T, v, "a")
    # A leader that never held a majority is left to the loop during its first ttl (the promises
    # it asked for are on their way)...
    assert not guard_must_fence(NOW, replace(LEADING, leading_since=NOW - 1.0), T, voting(), "a")
    # ...and fenced by the guard once that ttl is over, between loops as the loop would: a primary
    # whose agent restarted (found by the property test) must not serve on without a majority.
    assert guard_must_fence(NOW, replace(LEADING, leading_since=NOW - T.ttl), T, voting(), "a")
    assert serving_deadline_at(replace(LEADING, leading_since=NOW - 1.0), T, voting(), "a", NOW) == NOW - 1.0 + T.ttl


# -- without etcd ---------------------------------------------------------------------------------


def test_etcd_down_the_primary_serves_past_its_lease_while_a_majority_promises() -> None:
    renewed_long_ago = replace(LEADING, last_renew_sent=NOW - 10)
    d = decide(inputs(cluster=None, memory=renewed_long_ago, voting=voting(promise("b", sent_at=NOW - 0.2))))
    assert d.actions == () and d.role is Role.LEADER
    assert "majority of promises" in d.reason


def test_etcd_down_and_no_majority_fences() -> None:
    d = decide(inputs(cluster=None, voting=voting()))
    assert isinstance(d.actions[0], Fence) and d.role is Role.DEMOTED


def test_agent_restarted_without_etcd_beside_a_running_primary_fences_it() -> None:
    for v in (voting(promise("b")), None):  # with votes or lease-only: it holds nothing
        d = decide(inputs(cluster=None, memory=Memory(), voting=v))
        assert isinstance(d.actions[0], Fence), v
        assert "restarted" in d.reason


# -- elections ------------------------------------------------------------------------------------

LEADERLESS = cluster(leader=None)


def replica_inputs(**kw: object) -> Inputs:
    base: dict[str, object] = dict(
        me="b", cluster=LEADERLESS, pg=REPLICA, memory=Memory(), lease_renewed_at=None, voting=voting()
    )
    base.update(kw)
    return inputs(**base)


def test_no_leader_a_healthy_replica_asks_for_votes_for_the_next_term() -> None:
    d = decide(replica_inputs())
    assert d.actions == (RequestVotes(4),) and d.again


def test_a_majority_of_votes_takes_the_key_checking_exactly_the_counted_votes() -> None:
    keys = ((vote("b"), 41), (vote("w", lsn=None), 42), (vote("a", candidate="a"), 43))
    d = decide(replica_inputs(voting=voting(election=Election(4, NOW - 0.01, keys))))
    assert d.actions == (AcquireLeader(3, (("b", 41), ("w", 42))),)
    assert d.election is not None and d.election.may_promote


def test_no_majority_waits_and_asks_again_after_loop_wait() -> None:
    keys = ((vote("b"), 41),)
    e = Election(4, NOW - 0.3, keys)
    d = decide(replica_inputs(voting=voting(election=e)))
    assert d.actions == () and not d.again
    assert d.retry_in is not None and abs(d.retry_in - 0.7) < 1e-9
    assert "no majority" in d.reason
    later = decide(replica_inputs(now=NOW + 0.8, voting=voting(election=e)))
    assert later.actions == (RequestVotes(4),)


def test_a_refusal_about_to_expire_is_retried_soon_then_less_often() -> None:
    e = Election(4, NOW, ((vote("b"), 41),), transient=True)
    d = decide(replica_inputs(voting=voting(election=e)))
    assert d.retry_in == ELECTION_RETRY
    # A promise the primary keeps renewing (it is cut from etcd, not dead): back off to loop_wait.
    later = [decide(replica_inputs(voting=voting(election=replace(e, attempt=n)))).retry_in for n in (2, 3, 6)]
    assert later == [2 * ELECTION_RETRY, 4 * ELECTION_RETRY, T.loop_wait]


def test_a_candidate_behind_a_vote_of_the_term_never_takes_the_key() -> None:
    keys = ((vote("b", lsn=900), 41), (vote("w", lsn=None), 42), (vote("a", candidate="a", lsn=1000), 43))
    d = decide(replica_inputs(voting=voting(election=Election(4, NOW, keys))))
    assert not any(isinstance(a, AcquireLeader) for a in d.actions)
    assert "behind a" in d.reason


def test_the_candidates_own_vote_for_another_does_not_block_a_majority() -> None:
    """The deadlock a chaos run found: b held the votes of a and w, but its own had gone to a."""
    keys = ((vote("a"), 41), (vote("w", lsn=None), 42), (vote("b", candidate="a"), 43))
    d = decide(replica_inputs(voting=voting(election=Election(4, NOW - 0.01, keys))))
    assert d.actions == (AcquireLeader(3, (("a", 41), ("w", 42))),), d.reason


def test_a_split_election_is_closed_after_ttl_so_the_next_term_gets_fresh_votes() -> None:
    keys = ((vote("b"), 41), (vote("a", candidate="a"), 42), (vote("w", lsn=None, candidate="c"), 43))
    split = Election(4, NOW - 0.01, keys, started=NOW - T.ttl + 0.5)
    early = decide(replica_inputs(voting=voting(election=split)))
    assert not any(isinstance(a, AdvanceTerm) for a in early.actions), "not before ttl"
    d = decide(replica_inputs(voting=voting(election=replace(split, started=NOW - T.ttl))))
    assert d.actions == (AdvanceTerm(3),) and d.again and d.role is Role.STANDBY
    assert "split" in d.reason and "term 5" in d.reason


def test_a_candidate_that_voted_for_itself_and_sees_a_better_one_closes_the_term_at_once() -> None:
    """Both replicas of a stopped leader voted for themselves at once: the worse one yields the term."""
    a_ties = (PeerStatus("a", True, True, True, timeline=2, lsn=1000),)
    keys = ((vote("b"), 41), (vote("a", candidate="a"), 42))
    own = voting(election=Election(4, NOW - 0.01, keys, started=NOW - 0.05))
    d = decide(replica_inputs(peers=a_ties, voting=own))
    assert d.actions == (AdvanceTerm(3),) and d.again and d.role is Role.STANDBY, d.reason
    assert "a is ahead or ties" in d.reason and "a is elected in term 5" in d.reason
    # without our own vote for ourselves in that term, or in the next term, we only wait
    for keys_ in (((vote("a", candidate="a"), 42),), ((vote("b", term=3), 41),)):
        d = decide(replica_inputs(peers=a_ties, voting=voting(election=Election(4, NOW, keys_))))
        assert d.actions == () and "letting it take the key" in d.reason, keys_
    d = decide(replica_inputs(peers=a_ties, voting=voting()))
    assert d.actions == ()
    # the better candidate, short of our vote, asks again soon: the term may be closed for it
    keys = ((vote("a", candidate="a"), 42), (vote("b", candidate="b"), 41))
    d = decide(replica_inputs(me="a", voting=voting(election=Election(4, NOW, keys))))
    assert d.actions == () and d.retry_in == ELECTION_RETRY, d.reason


def test_refusals_alone_never_close_an_election() -> None:
    """Voters that promised a primary (etcd cut from it) leave no vote: the term stays open."""
    e = Election(4, NOW - 0.01, ((vote("b"), 41),), transient=True, started=NOW - 10 * T.ttl)
    d = decide(replica_inputs(voting=voting(election=e)))
    assert not any(isinstance(a, AdvanceTerm) for a in d.actions)


def test_votes_of_another_term_are_not_tallied() -> None:
    stale = Election(3, NOW, ((vote("b", term=3), 1), (vote("w", lsn=None, term=3), 2)))
    d = decide(replica_inputs(voting=voting(election=stale)))
    assert d.actions == (RequestVotes(4),)


def test_lease_only_mode_takes_the_key_directly() -> None:
    d = decide(replica_inputs(voting=None))
    assert d.actions == (AcquireLeader(3),)


# -- after winning: promote once a majority promised ---------------------------------------------


def elected(**kw: object) -> Inputs:
    memory = Memory(leader_term=4, last_renew_sent=NOW - 0.1, leading_since=NOW - 0.2, since_term=4)
    base: dict[str, object] = dict(me="b", cluster=cluster(leader="b", term=4), pg=REPLICA, memory=memory)
    base.update(kw)
    return inputs(**base)


def test_elected_standby_waits_for_promises_before_promoting() -> None:
    d = decide(elected(voting=voting()))
    assert d.actions == () and d.retry_in == ELECTION_RETRY
    assert "promoting once a majority promised" in d.reason


def test_elected_standby_promotes_with_a_majority_of_promises() -> None:
    d = decide(elected(voting=voting(promise("w", term=4, primary="b"))))
    assert d.actions == (Promote(4),)


def test_elected_standby_gives_the_key_back_without_promises_within_ttl() -> None:
    d = decide(elected(now=NOW + 3.0, voting=voting()))
    assert isinstance(d.actions[0], ReleaseLeader) and d.alert is not None


# -- a primary whose key expired (etcd was away) -------------------------------------------------


def test_primary_whose_key_expired_keeps_serving_on_promises_and_runs_for_the_next_term() -> None:
    d = decide(inputs(cluster=cluster(leader=None), voting=voting(promise("b"))))
    assert d.actions == (RequestVotes(4),)
    assert d.memory.leader_term == 3 and d.memory.since_term == 3


def test_primary_whose_key_expired_without_promises_fences_before_the_election() -> None:
    d = decide(inputs(cluster=cluster(leader=None), voting=voting()))
    assert isinstance(d.actions[0], Fence) and d.role is Role.DEMOTED


def test_restarted_agent_beside_a_primary_with_no_key_fences_first() -> None:
    d = decide(inputs(cluster=cluster(leader=None), memory=Memory(), voting=voting(promise("b"))))
    assert isinstance(d.actions[0], Fence)
    assert "no leadership known" in d.reason


def test_re_elected_primary_keeps_counting_its_earlier_promises() -> None:
    first = decide(inputs(cluster=cluster(leader=None), voting=voting(promise("b"))))
    again = decide(inputs(cluster=cluster(leader="a", term=4), memory=first.memory, voting=voting(promise("b"))))
    assert again.memory.leader_term == 4 and again.memory.since_term == 3
    assert again.role is Role.LEADER  # the term-3 promise of b still counts for the term-4 leader


# -- bookkeeping ----------------------------------------------------------------------------------


def test_leader_deletes_the_votes_of_settled_elections() -> None:
    settled = cluster(votes=(vote("b", term=3), vote("w", lsn=None, term=2)))
    d = decide(inputs(cluster=settled))
    assert d.actions[-1] == DeleteVotes(3)
    pending = cluster(votes=(vote("b", term=4),))  # an election for the next term: not ours to delete
    assert not any(isinstance(a, DeleteVotes) for a in decide(inputs(cluster=pending)).actions)
