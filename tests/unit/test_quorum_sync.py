"""Quorum commit on plain data: the resolver, the candidate check, and a model of a cluster that
acknowledges commits, replicates, loses and regains standbys and fails over (Hypothesis).

The model knows nothing of the resolver's formulas: W + R > N is checked by brute force over every
set of voters a candidate could read, against the highest commit postgres ever acknowledged.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field, replace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pgquorum.agent.config import SyncSettings, Timing
from pgquorum.agent.ha.actions import Promote, PublishStatus
from pgquorum.agent.ha.decide import Inputs, Memory, decide
from pgquorum.agent.model import (
    ClusterState,
    LeaderInfo,
    MemberInfo,
    PeerStatus,
    PostgresState,
    Role,
    StandbyReplication,
    SyncObservation,
    SyncRecord,
)
from pgquorum.agent.quorum.candidate import check_candidate
from pgquorum.agent.quorum.sync import (
    ASYNC,
    PLACEHOLDER,
    UNPROVABLE,
    Durability,
    PgSync,
    Quorum,
    SetSyncStandbys,
    WriteSyncRecord,
    caught_up,
    first_unsafe,
    healthy_standbys,
    overlaps,
    parse_standby_names,
    promotion_standbys,
    resolve,
    stricter,
)

REQ, PREF = Durability.REQUIRED, Durability.PREFERRED
S = frozenset


def rec(k: int, *voters: str, leader: str = "a") -> SyncRecord:
    return SyncRecord(leader, k, tuple(sorted(voters)), mod_revision=7)


def plan(record: SyncRecord | None, pg: PgSync, active: str, k: int = 1, dur: Durability = REQ, caught: str = ""):
    return resolve(me="a", record=record, pg=pg, caught_up=S(caught), active=S(active), wanted_k=k, durability=dur)


# -- synchronous_standby_names -----------------------------------------------------------------------


def test_render_and_parse_round_trip() -> None:
    pg = PgSync(2, S({"b", "c", "pg-3", f"{PLACEHOLDER}1"}))
    assert pg.render() == 'ANY 2 (b, c, "missing:1", "pg-3")'
    assert parse_standby_names(pg.render()) == pg
    assert ASYNC.render() == "" and parse_standby_names("") == ASYNC


def test_parse_other_forms() -> None:
    assert parse_standby_names("FIRST 2 (b, c, d)") == PgSync(2, S("bcd"))
    assert parse_standby_names("b, c") == PgSync(1, S("bc"))  # a plain list is FIRST 1
    assert parse_standby_names('any 1 ("B", c)') == PgSync(1, S({"B", "c"}))
    assert parse_standby_names("*") is None  # any standby at all: cannot be modelled
    assert parse_standby_names("ANY 1 (*)") is None
    assert parse_standby_names('ANY 1 ("unterminated)') is None


# -- the invariant's building blocks ---------------------------------------------------------------


def test_overlaps() -> None:
    assert overlaps(Quorum(1, S("bc")), PgSync(1, S("bc")))  # read 2 of 2
    assert not overlaps(Quorum(2, S("bc")), PgSync(1, S("bc")))  # read 1: may miss the acker
    assert overlaps(Quorum(2, S("bc")), PgSync(2, S("bc")))
    assert not overlaps(Quorum(1, S("b")), PgSync(1, S("bc")))  # c may acknowledge alone, unread
    assert overlaps(Quorum(1, S("bc")), PgSync(1, S("b")))  # postgres a subset, reads cover it
    assert not overlaps(Quorum(1, S("b")), ASYNC)
    assert overlaps(UNPROVABLE, ASYNC)  # nothing can be proven: no candidate passes
    assert overlaps(Quorum(1, S("b")), PgSync(2, S("b")))  # ANY 2 of one name never acknowledges


def test_stricter() -> None:
    assert stricter(Quorum(1, S("bc")), Quorum(1, S("b")))  # one more voter, same k: read one more
    assert not stricter(Quorum(1, S("b")), Quorum(1, S("bc")))
    assert stricter(Quorum(1, S("bc")), Quorum(2, S("bc")))
    assert stricter(UNPROVABLE, Quorum(1, S("b")))
    assert not stricter(Quorum(1, S("b")), UNPROVABLE)


# -- the resolver on the textbook cases --------------------------------------------------------------


def test_steady_state_does_nothing() -> None:
    p = plan(rec(1, "b", "c"), PgSync(1, S("bc")), "bc", caught="bc")
    assert p.transitions == () and p.waiting is None and p.alert is None


def test_enabling_quorum_sets_postgres_first_then_etcd_once_confirmed() -> None:
    p = plan(None, ASYNC, "bc")
    assert p.transitions == (SetSyncStandbys("ANY 1 (b, c)"),)
    assert p.waiting is not None  # the record must wait: commits acknowledged asynchronously
    p = plan(None, PgSync(1, S("bc")), "bc", caught="b")  # one of k=1 flushed past the change
    assert p.transitions == (WriteSyncRecord("a", 1, ("b", "c")),)


def test_a_new_standby_goes_into_etcd_before_postgres() -> None:
    p = plan(rec(1, "b"), PgSync(1, S("b")), "bc", caught="b")
    assert p.transitions == (WriteSyncRecord("a", 1, ("b", "c")), SetSyncStandbys("ANY 1 (b, c)"))


def test_a_lost_standby_leaves_postgres_first_and_etcd_once_confirmed() -> None:
    p = plan(rec(1, "b", "c"), PgSync(1, S("bc")), "b", caught="bc")
    assert p.transitions == (SetSyncStandbys("ANY 1 (b)"),)
    assert "etcd keeps" in (p.waiting or "")
    p = plan(rec(1, "b", "c"), PgSync(1, S("b")), "b", caught="")  # b has not confirmed yet
    assert p.transitions == ()
    p = plan(rec(1, "b", "c"), PgSync(1, S("b")), "b", caught="b")
    assert p.transitions == (WriteSyncRecord("a", 1, ("b",)),)


def test_raising_k_changes_postgres_first() -> None:
    p = plan(rec(1, "b", "c"), PgSync(1, S("bc")), "bc", k=2, caught="bc")
    assert p.transitions == (SetSyncStandbys("ANY 2 (b, c)"),)
    p = plan(rec(1, "b", "c"), PgSync(2, S("bc")), "bc", k=2, caught="bc")
    assert p.transitions == (WriteSyncRecord("a", 2, ("b", "c")),)


def test_lowering_k_changes_etcd_first() -> None:
    p = plan(rec(2, "b", "c"), PgSync(2, S("bc")), "bc", k=1, caught="bc")
    assert p.transitions == (WriteSyncRecord("a", 1, ("b", "c")), SetSyncStandbys("ANY 1 (b, c)"))


def test_preferred_lowers_k_and_goes_asynchronous_without_standbys() -> None:
    p = plan(rec(2, "b", "c"), PgSync(2, S("bc")), "b", k=2, dur=PREF, caught="bc")
    assert p.pg_target == PgSync(1, S("b")) and p.alert and "lowered to 1" in p.alert
    p = plan(rec(1, "b"), PgSync(1, S("b")), "", dur=PREF, caught="b")
    assert p.transitions == (WriteSyncRecord("a", 0, ()), SetSyncStandbys(""))  # etcd promises nothing first
    assert p.alert and "asynchronous" in p.alert


def test_required_keeps_waiting_for_missing_standbys() -> None:
    p = plan(rec(1, "b", "c"), PgSync(1, S("bc")), "", caught="bc")
    assert p.transitions == () and p.alert and "commits wait" in p.alert
    p = plan(None, ASYNC, "", k=2)  # nobody at all: postgres waits for placeholders
    assert p.transitions == (SetSyncStandbys('ANY 2 ("missing:1", "missing:2")'),)
    p = plan(rec(1, "b", "c"), PgSync(1, S("bc")), "b", k=3, caught="bc")
    assert p.pg_target == PgSync(3, S({"b", "c", "missing:1"}))


def test_mode_off_clears_both_etcd_first() -> None:
    p = resolve(
        me="a",
        record=rec(1, "b"),
        pg=PgSync(1, S("b")),
        caught_up=S("b"),
        active=S("b"),
        wanted_k=1,
        durability=REQ,
        mode_quorum=False,
    )
    assert p.transitions == (WriteSyncRecord("a", 0, ()), SetSyncStandbys(""))


def test_new_leader_rewrites_the_record_once_its_standbys_confirm() -> None:
    # b was promoted from {b, c}; postgres waits for c (from the record), nothing confirmed yet
    old = rec(1, "b", "c", leader="a")
    p = resolve(me="b", record=old, pg=PgSync(1, S("c")), caught_up=S(), active=S("c"), wanted_k=1, durability=REQ)
    # the record now names b, and keeps it as a voter: c alone cannot win before confirming
    assert p.transitions == (WriteSyncRecord("b", 1, ("b", "c")),) and p.waiting
    p = resolve(me="b", record=old, pg=PgSync(1, S("c")), caught_up=S("c"), active=S("c"), wanted_k=1, durability=REQ)
    assert p.transitions == (WriteSyncRecord("b", 1, ("c",)),)


def test_promotion_starts_with_the_records_quorum() -> None:
    assert promotion_standbys(rec(1, "b", "c"), "b", 1, REQ) == PgSync(1, S("c"))
    assert promotion_standbys(rec(2, "b", "c", "d"), "b", 1, REQ) == PgSync(2, S("cd"))
    assert promotion_standbys(rec(1, "b"), "b", 1, REQ) == PgSync(1, S({"missing:1"}))
    assert promotion_standbys(rec(1, "b"), "b", 1, PREF) == ASYNC
    assert promotion_standbys(None, "b", 2, PREF) == ASYNC
    assert promotion_standbys(None, "b", 1, REQ) == PgSync(1, S({"missing:1"}))


def test_healthy_standbys_and_caught_up() -> None:
    members = [MemberInfo(n, Role.REPLICA, "running", "", "", nofailover=(n == "e")) for n in "abcde"]
    obs = SyncObservation(
        "ANY 1 (b)",
        flush_lsn=10_000,
        change_lsn=9_000,
        standbys=(
            StandbyReplication("b", "streaming", 1_000),  # far behind, but already listed: stays
            StandbyReplication("c", "streaming", 9_500),
            StandbyReplication("d", "streaming", 2_000),  # far behind and new: not yet
            StandbyReplication("e", "streaming", 10_000),  # nofailover
            StandbyReplication("x", "streaming", 10_000),  # not a member
            StandbyReplication("pgquorum-clone-f", "backup", None),
        ),
    )
    assert healthy_standbys(obs, members, "a", S("b"), max_lag=1024) == S("bc")
    assert caught_up(obs, S("bc")) == S("c")
    assert caught_up(replace(obs, change_lsn=None), S("bc")) == S()


# -- the candidate check -----------------------------------------------------------------------------


def test_candidate_needs_n_minus_k_plus_one_voters() -> None:
    record = rec(1, "b", "c")
    v = check_candidate(record, "b", 100, {"c": None}, REQ)
    assert not v.eligible and "saw 1 of the 2 voters needed (n-k+1 = 2-1+1 = 2)" in v.reason
    assert v.alert and "quorum cannot be proven" in v.alert
    v = check_candidate(record, "b", 100, {"c": 90}, REQ)
    assert v.eligible and v.proven and not v.possible_loss
    v = check_candidate(record, "b", 100, {"c": 120}, REQ)
    assert not v.eligible and v.reason.startswith("c is ahead: 0/78 > our 0/64")
    v = check_candidate(rec(2, "b", "c"), "b", 100, {}, REQ)  # k=2 of 2: reading one is enough
    assert v.eligible and v.proven


def test_preferred_promotes_without_proof_and_says_so() -> None:
    v = check_candidate(rec(1, "b", "c"), "b", 100, {}, PREF)
    assert v.eligible and v.possible_loss and v.alert and "may be lost" in v.alert
    v = check_candidate(None, "b", 100, {}, REQ)
    assert not v.eligible and "no quorum record" in v.reason


@given(
    n=st.integers(1, 5),
    data=st.data(),
)
def test_candidate_refuses_exactly_when_a_commit_could_hide(n: int, data: st.DataObject) -> None:
    """Proven <=> no acknowledged commit beyond our position can exist given what we heard.

    A commit postgres acknowledged sits on k voters; a voter that told us a position at or below
    ours does not have anything beyond it. So a hidden commit exists iff k voters are unheard or ahead.
    """
    voters = [f"v{i}" for i in range(n)]
    k = data.draw(st.integers(1, n))
    me = data.draw(st.sampled_from([*voters, "outsider"]))
    my_lsn = 100
    heard = {v: data.draw(st.sampled_from([None, 50, 100, 150])) for v in voters if v != me}
    v = check_candidate(SyncRecord("old", k, tuple(voters)), me, my_lsn, heard, REQ)
    unheard_or_ahead = [x for x in voters if x != me and (heard.get(x) is None or heard[x] > my_lsn)]
    ahead = [x for x in voters if x != me and heard.get(x) is not None and heard[x] > my_lsn]
    hidden_commit_possible = len(unheard_or_ahead) >= k
    if ahead:
        assert not v.eligible  # a better candidate exists
    else:
        assert v.proven == (not hidden_commit_possible)
        assert v.eligible == v.proven


# -- the model ---------------------------------------------------------------------------------------

NAMES = ("a", "b", "c", "d", "e")


@dataclass
class World:
    """A leader, its standbys' durable WAL positions, postgres's setting and the etcd record."""

    leader: str = "a"
    leader_pos: int = 0
    pos: dict[str, int] = field(default_factory=lambda: dict.fromkeys(NAMES, 0))
    alive: set[str] = field(default_factory=lambda: set(NAMES) - {"a"})
    record: SyncRecord | None = None
    pg: PgSync = ASYNC
    change_lsn: int = 0
    acked: int = 0  # highest commit postgres acknowledged (WAL is one stream: all below it too)
    wanted_k: int = 1
    durability: Durability = REQ
    mode_quorum: bool = True

    def caught_up(self) -> frozenset[str]:
        return frozenset(n for n in self.pg.names if n in self.pos and self.pos[n] >= self.change_lsn)

    def check(self, where: str) -> None:
        """W + R > N by brute force: every set of voters a candidate could read after the leader died
        has one that holds the highest acknowledged commit."""
        q = Quorum.of(self.record)
        if not q.provable:
            return
        answerable = sorted(v for v in q.voters if v != self.leader and v in self.pos)
        for reads in itertools.combinations(answerable, q.reads):
            assert max(self.pos[v] for v in reads) >= self.acked, (
                f"{where}: reading {reads} misses commit {self.acked}; {self}"
            )

    def apply(self, t: SetSyncStandbys | WriteSyncRecord) -> None:
        if isinstance(t, SetSyncStandbys):
            parsed = parse_standby_names(t.value)
            assert parsed is not None
            self.pg, self.change_lsn = parsed, self.leader_pos
        else:
            self.record = SyncRecord(t.leader, t.k, t.voters)

    def resolve(self, active: frozenset[str]):
        return resolve(
            me=self.leader,
            record=self.record,
            pg=self.pg,
            caught_up=self.caught_up(),
            active=active,
            wanted_k=self.wanted_k,
            durability=self.durability,
            mode_quorum=self.mode_quorum,
        )


def _commit(w: World, data: st.DataObject) -> None:
    w.leader_pos += 1
    if w.pg.k == 0:
        w.acked = w.leader_pos  # asynchronous: acknowledged on the leader alone
        return
    able = sorted(n for n in w.pg.names if n in w.alive)
    if len(able) < w.pg.k:
        return  # postgres waits; the commit is not acknowledged (yet)
    ackers = data.draw(st.permutations(able))[: w.pg.k]
    for n in ackers:
        w.pos[n] = w.leader_pos
    w.acked = w.leader_pos


def _failover(w: World, data: st.DataObject) -> None:
    """The leader dies; a candidate that passes the check must hold every acknowledged commit."""
    candidates = sorted(w.alive)
    if not candidates:
        return
    me = data.draw(st.sampled_from(candidates))
    others = [n for n in candidates if n != me]
    heard = {n: w.pos[n] for n in others if data.draw(st.booleans())}
    verdict = check_candidate(w.record, me, w.pos[me], heard, REQ)
    if not verdict.eligible:
        return
    assert w.pos[me] >= w.acked, f"promoted {me} at {w.pos[me]} lost commit {w.acked}: {verdict.reason}"
    old = w.leader
    w.pg = promotion_standbys(w.record, me, w.wanted_k, w.durability)
    w.leader, w.leader_pos, w.change_lsn = me, w.pos[me], w.pos[me]
    w.alive.discard(me)
    # The old primary had everything; pg_rewind (or a re-clone) brings it back to where the new
    # timeline forked. Whatever anyone holds beyond that was never acknowledged: rewound away.
    w.pos[old] = w.leader_pos
    for n in w.pos:
        w.pos[n] = min(w.pos[n], w.leader_pos)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_w_plus_r_exceeds_n_after_every_transition(data: st.DataObject) -> None:
    w = World(durability=data.draw(st.sampled_from([REQ, PREF])))
    for step in range(data.draw(st.integers(5, 60))):
        event = data.draw(
            st.sampled_from(["commit", "commit", "replicate", "resolve", "resolve", "toggle", "k", "mode", "failover"])
        )
        if event == "commit":
            _commit(w, data)
        elif event == "replicate":
            if w.alive:
                n = data.draw(st.sampled_from(sorted(w.alive)))
                w.pos[n] = max(w.pos[n], data.draw(st.integers(w.pos[n], max(w.pos[n], w.leader_pos))))
        elif event == "toggle":  # a standby leaves, crashes, returns
            n = data.draw(st.sampled_from([x for x in NAMES if x != w.leader]))
            w.alive ^= {n}
        elif event == "k":
            w.wanted_k = data.draw(st.integers(1, 4))
        elif event == "mode":
            w.mode_quorum = data.draw(st.booleans()) or data.draw(st.booleans())
        elif event == "failover":
            if w.mode_quorum:
                _failover(w, data)
        else:
            active = frozenset(data.draw(st.sets(st.sampled_from(sorted(w.alive)))) if w.alive else ())
            p = w.resolve(active)
            # the loop stops at the first failure: any prefix may be all that got applied
            applied = data.draw(st.integers(0, len(p.transitions)))
            for t in p.transitions[:applied]:
                w.apply(t)
                w.check(f"step {step} after {t}")
        w.check(f"step {step} after {event}")


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_transitions_converge(data: st.DataObject) -> None:
    """In a world that stops changing, a few loops reach a state that asks for nothing more."""
    w = World(durability=data.draw(st.sampled_from([REQ, PREF])), wanted_k=data.draw(st.integers(1, 3)))
    w.alive = set(data.draw(st.sets(st.sampled_from(NAMES[1:]))))
    for _ in range(data.draw(st.integers(0, 4))):  # start from some half-done state
        p = w.resolve(frozenset(data.draw(st.sets(st.sampled_from(NAMES[1:])))))
        for t in p.transitions[: data.draw(st.integers(0, len(p.transitions)))]:
            w.apply(t)
    active = frozenset(w.alive)
    for _loop in range(4):
        for n in active:  # healthy standbys stream everything
            w.pos[n] = w.leader_pos
        p = w.resolve(active)
        for t in p.transitions:
            w.apply(t)
        w.leader_pos += 1
    assert w.resolve(active).transitions == ()
    want_pg, want_q = p.pg_target, p.quorum_target
    assert w.pg == want_pg
    if want_pg.names <= active:
        assert Quorum.of(w.record) == want_q or (not want_q.provable and not Quorum.of(w.record).provable)


def test_first_unsafe_catches_a_looser_record_before_confirmation() -> None:
    q, pg = Quorum(1, S("bc")), PgSync(1, S("b"))
    assert first_unsafe(q, pg, S(), [WriteSyncRecord("a", 1, ("b",))]) is not None
    assert first_unsafe(q, pg, S("b"), [WriteSyncRecord("a", 1, ("b",))]) is None
    assert first_unsafe(Quorum(1, S("b")), pg, S(), [SetSyncStandbys("ANY 1 (b, c)")]) is not None


# -- decide ------------------------------------------------------------------------------------------

T = Timing(ttl=3, loop_wait=1, retry_timeout=1, safety_margin=0.5)
SYSID = "7300000000000000001"
QUORUM = SyncSettings("quorum", 1, "required")


def member(name: str, **kw: object) -> MemberInfo:
    base: dict[str, object] = dict(role=Role.REPLICA, state="running", api_url=f"http://{name}", conn_url="")
    base.update(kw)
    return MemberInfo(name=name, **base)  # type: ignore[arg-type]


def cluster(leader: str | None, sync: SyncRecord | None) -> ClusterState:
    return ClusterState(
        revision=10,
        initialize=SYSID,
        leader=LeaderInfo(leader, 5, 99) if leader else None,
        term=3,
        members=(member("a"), member("b"), member("c")),
        sync=sync,
    )


PRIMARY = PostgresState(True, True, True, in_recovery=False, timeline=2, system_id=SYSID, wal_lsn=1000)
REPLICA = PostgresState(
    True, True, True, in_recovery=True, timeline=2, system_id=SYSID, received_lsn=1000, upstream="a", streaming=True
)


def test_leader_applies_the_plan_after_publishing_status() -> None:
    obs = SyncObservation("", 1000, 1000, (StandbyReplication("b", "streaming", 1000),))
    d = decide(
        Inputs(
            me="a",
            now=100.0,
            timing=T,
            cluster=cluster("a", None),
            pg=PRIMARY,
            memory=Memory(leader_term=3, last_renew_sent=99.9, leading_since=50.0),
            sync=QUORUM,
            sync_obs=obs,
        )
    )
    assert isinstance(d.actions[0], PublishStatus)
    assert d.actions[1:] == (SetSyncStandbys("ANY 1 (b)"),)
    assert d.sync is not None and d.sync.waiting


def test_new_leader_keeps_listed_standbys_while_they_reconnect() -> None:
    obs = SyncObservation("ANY 1 (c)", 1000, 1000, ())  # c has not reconnected yet
    inp = Inputs(
        me="b",
        now=100.0,
        timing=T,
        cluster=cluster("b", rec(1, "b", "c")),
        pg=PRIMARY,
        memory=Memory(leader_term=3, last_renew_sent=99.9, leading_since=99.0),
        sync=SyncSettings("quorum", 1, "preferred"),
        sync_obs=obs,
    )
    # settling: c stays listed; the record just starts naming its new leader
    assert decide(inp).actions[1:] == (WriteSyncRecord("b", 1, ("b", "c")),)
    later = replace(inp, memory=replace(inp.memory, leading_since=90.0))
    assert SetSyncStandbys("") in decide(later).actions  # preferred, c still gone: asynchronous
    required = replace(later, sync=QUORUM)
    assert not any(isinstance(a, SetSyncStandbys) for a in decide(required).actions)  # keeps waiting for c


def test_promotion_sets_the_records_quorum_first() -> None:
    d = decide(
        Inputs(
            me="b",
            now=100.0,
            timing=T,
            cluster=cluster("b", rec(1, "b", "c")),
            pg=REPLICA,
            memory=Memory(leader_term=3, last_renew_sent=99.9),
            sync=QUORUM,
        )
    )
    assert d.actions == (SetSyncStandbys("ANY 1 (c)"), Promote(3))


def race(peers: tuple[PeerStatus, ...], sync: SyncRecord | None, durability: str = "required") -> Inputs:
    return Inputs(
        me="b",
        now=100.0,
        timing=T,
        cluster=cluster(None, sync),
        pg=REPLICA,
        peers=peers,
        sync=SyncSettings("quorum", 1, durability),
    )


def test_race_refuses_without_proof_and_takes_with_it() -> None:
    gone = (PeerStatus("a", False), PeerStatus("c", False))
    d = decide(race(gone, rec(1, "b", "c")))
    assert d.actions == () and d.quorum is not None and not d.quorum.eligible
    assert d.alert and "quorum cannot be proven" in d.alert
    c_direct = (PeerStatus("a", False), PeerStatus("c", False, direct_lsn=900))  # agent down, postgres answers
    d = decide(race(c_direct, rec(1, "b", "c")))
    assert d.quorum is not None and d.quorum.proven and d.actions and d.alert is None
    c_ahead = (PeerStatus("a", False), PeerStatus("c", True, True, True, 2, lsn=900, direct_lsn=1100))
    d = decide(race(c_ahead, rec(1, "b", "c")))
    assert d.actions == () and "c is ahead" in d.reason
    d = decide(race(gone, rec(1, "b", "c"), "preferred"))
    assert d.actions and d.quorum is not None and d.quorum.possible_loss and d.alert


@pytest.mark.parametrize("mode", ["off", "quorum"])
def test_mode_off_without_record_observes_nothing(mode: str) -> None:
    d = decide(
        Inputs(
            me="a",
            now=100.0,
            timing=T,
            cluster=cluster("a", None),
            pg=PRIMARY,
            memory=Memory(leader_term=3, last_renew_sent=99.9),
            sync=SyncSettings(mode, 1, "required"),
        )
    )
    assert d.sync is None and len(d.actions) == 1


# -- configuration, generated config, etcd payload ---------------------------------------------------


def agent_config(**over: object) -> dict[str, object]:
    from pgquorum.agent.config import default_bin_dir

    data: dict[str, object] = {
        "name": "pg1",
        "cluster": "main",
        "etcd_endpoints": ["http://127.0.0.1:2379"],
        "api_listen": "127.0.0.1:8008",
        "postgres": {"data_dir": "/var/lib/pgquorum/pg1", "bin_dir": default_bin_dir()},
    }
    data.update(over)
    return data


def test_synchronous_settings_default_off_and_validate() -> None:
    from pgquorum.agent.config import config_from_dict

    assert config_from_dict(agent_config()).synchronous == SyncSettings("off", 1, "required")
    cfg = config_from_dict(agent_config(synchronous={"mode": "quorum", "k": 2, "durability": "preferred"}))
    assert cfg.synchronous == SyncSettings("quorum", 2, "preferred") and cfg.synchronous.quorum
    assert config_from_dict(agent_config(synchronous={"mode": False})).synchronous.mode == "off"  # YAML's bare off


@pytest.mark.parametrize(
    ("raw", "needle"),
    [
        ({"mode": "sync"}, "synchronous.mode: expected one of off, quorum, got 'sync'"),
        ({"mode": "quorum", "k": 0}, "synchronous.k: expected a whole number >= 1"),
        ({"k": 1.5}, "synchronous.k: expected a whole number >= 1"),
        ({"k": True}, "synchronous.k"),
        ({"durability": "strict"}, "synchronous.durability: expected one of required, preferred"),
        ({"quorum": 1}, "synchronous.quorum: unknown setting (known: durability, k, mode)"),
        ("quorum", "synchronous: expected a mapping"),
    ],
)
def test_bad_synchronous_settings_name_the_field(raw: object, needle: str) -> None:
    from pgquorum.agent.config import ConfigError, config_from_dict, validate_dynamic

    with pytest.raises(ConfigError) as err:
        config_from_dict(agent_config(synchronous=raw))
    assert needle in str(err.value)
    with pytest.raises(ConfigError) as err:
        validate_dynamic({"synchronous": raw})
    assert needle in str(err.value)


def test_dynamic_synchronous_overrides_the_agents_own() -> None:
    from pgquorum.agent.config import config_from_dict, effective_dynamic, effective_sync, validate_dynamic

    cfg = config_from_dict(agent_config(synchronous={"mode": "quorum", "k": 2}))
    assert validate_dynamic({"synchronous": {"k": 3}}) == {"synchronous": {"k": 3}}  # partial PATCH
    assert effective_sync(cfg, {"synchronous": {"k": 3}}) == SyncSettings("quorum", 3, "required")
    assert effective_sync(cfg, {"synchronous": {"mode": "off"}}).mode == "off"
    assert effective_sync(cfg, {"synchronous": {"k": -1}}) == cfg.synchronous  # bad etcd value: ignored
    assert effective_dynamic(cfg, None)["synchronous"] == {"mode": "quorum", "k": 2, "durability": "required"}


def test_generated_config_carries_and_reads_back_the_standby_names() -> None:
    from pathlib import Path

    from pgquorum.agent.config import PostgresSettings
    from pgquorum.agent.postgres.conf import read_standby_names, render_conf

    settings = PostgresSettings(data_dir=Path("/d"), bin_dir=Path("/b"), parameters={"synchronous_standby_names": "*"})
    value = 'ANY 1 (b, "missing:1")'
    text, ignored = render_conf(settings, "a", Path("/s"), Path("/p"), None, value)
    assert "synchronous_standby_names" in ignored  # owned by the resolver, never the user's
    assert read_standby_names(text) == value
    standby, _ = render_conf(settings, "a", Path("/s"), Path("/p"), None)
    assert read_standby_names(standby) == ""
    assert "synchronous_standby_names = ''" in standby


def test_sync_record_json() -> None:
    r = SyncRecord("a", 1, ("c", "b"), mod_revision=3)
    back = SyncRecord.from_json(r.to_json(), mod_revision=3)
    assert back == SyncRecord("a", 1, ("b", "c"), 3)
    for bad in ('{"leader": "a", "k": -1, "voters": []}', '{"k": 1, "voters": "b"}', '{"k": true}'):
        with pytest.raises(ValueError):
            SyncRecord.from_json(bad)


def test_a_merge_patch_may_remove_one_synchronous_override() -> None:
    from pgquorum.agent.config import validate_dynamic

    assert validate_dynamic({"synchronous": {"k": None, "mode": "quorum"}}) == {
        "synchronous": {"k": None, "mode": "quorum"}
    }


# -- metrics and status ------------------------------------------------------------------------------


def test_metrics_export_the_quorum() -> None:
    from prometheus_client.parser import text_string_to_metric_families

    from pgquorum.agent.ha.decide import Decision
    from pgquorum.agent.ha.loop import LoopView
    from pgquorum.agent.metrics import AgentMetrics

    m = AgentMetrics("a", "main", T, lambda: 101.0)
    c = replace(cluster("a", rec(1, "b", "c")), members=(member("a"), member("b"), member("c")))
    obs = SyncObservation("ANY 1 (b, c)", 1000, 1000)
    decision = Decision((), "t", Role.LEADER, Memory(leader_term=3, last_renew_sent=100.0))
    m.observe_loop(LoopView(c, PRIMARY, decision, True, 101.0, obs, QUORUM), 0.01, 101.0)
    m.count_quorum_refusal()
    m.count_unproven_promotion()
    values = {}
    for family in text_string_to_metric_families(m.render()[0].decode()):
        for s in family.samples:
            values[(s.name, s.labels.get("voter"))] = s.value
    assert values[("pgquorum_sync_quorum", None)] == 1
    assert values[("pgquorum_sync_voters", None)] == 2
    assert values[("pgquorum_sync_voter", "b")] == 1 and values[("pgquorum_sync_voter", "c")] == 1
    assert values[("pgquorum_sync_postgres_k", None)] == 1
    assert values[("pgquorum_quorum_promotion_refused_total", None)] == 1
    assert values[("pgquorum_quorum_unproven_promotions_total", None)] == 1


def test_status_says_whether_a_failover_could_prove_the_quorum() -> None:
    from pgquorum.agent.quorum.status import sync_status

    streaming = (member("a"), member("b", received_lsn=900), member("c", received_lsn=950))
    c = replace(cluster("a", rec(1, "b", "c")), members=streaming)
    body = sync_status(QUORUM, c)
    assert body["record"] == {"leader": "a", "k": 1, "voters": ["b", "c"], "reads": 2} and body["provable"]
    one_down = replace(c, members=(*streaming[:2], member("c", role=Role.STOPPED)))
    body = sync_status(QUORUM, one_down)
    assert not body["provable"] and "must read 2 voters (n-k+1), only 1 up (b); missing c" in body["reason"]
    assert "no quorum record" in sync_status(QUORUM, cluster("a", None))["reason"]


def test_with_no_record_yet_only_the_last_leader_may_retake_the_key() -> None:
    # The bootstrap leader lost its lease before the first standbys joined quorum commit: it
    # acknowledged nothing it does not hold itself, so it may lead again; nobody else may.
    v = check_candidate(None, "a", 100, {"b": 90, "c": None}, REQ, last_leader="a")
    assert v.eligible and v.proven and "we are the last leader" in v.reason
    v = check_candidate(None, "b", 90, {"a": None}, REQ, last_leader="a")
    assert not v.eligible and "no quorum record" in v.reason
    v = check_candidate(None, "b", 90, {}, REQ, last_leader=None)  # a key from an older agent
    assert not v.eligible
    # a member ahead of the last leader is a contradiction worth stopping for
    v = check_candidate(None, "a", 100, {"b": 120}, REQ, last_leader="a")
    assert not v.eligible and v.reason.startswith("b is ahead of the last leader")
    # once a record exists it alone decides, whoever led last
    v = check_candidate(rec(1, "b", "c"), "a", 100, {}, REQ, last_leader="a")
    assert not v.eligible
