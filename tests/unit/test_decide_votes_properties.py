"""Property test: ``decide`` with quorum votes and promises, inside a model of etcd, two data
members, a witness and the messages between them (invariant I5).

Where ``quorum_model.py`` drives the pure vote and promise functions directly, this drives the HA
decision itself, executing its actions the way ``loop.py`` does: ``RequestVotes`` asks every voter
(``decide_vote``, keys created once), ``AcquireLeader`` checks the counted vote keys, the primary
renews promises every loop and from its keeper's timer, and the fence guard fires at the serving
deadline. Hypothesis interleaves loops, clock advances, etcd loss per member, cut links between
members, SIGSTOP pauses, postgres crashes and agent restarts (process memory lost).

Properties: at most one member ever wins a term; never two writable primaries at the same instant;
a writable primary is always before its serving deadline.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from hypothesis import given, settings
from hypothesis import strategies as st

from pgquorum.agent.config import Timing
from pgquorum.agent.ha.actions import (
    AcquireLeader,
    AdvanceTerm,
    DeleteVotes,
    Fence,
    Follow,
    Promote,
    PublishStatus,
    Rejoin,
    ReleaseLeader,
    RequestVotes,
    StartPostgres,
)
from pgquorum.agent.ha.decide import Election, Inputs, Memory, Voting, decide, guard_must_fence, serving_deadline_at
from pgquorum.agent.model import (
    ClusterState,
    LeaderInfo,
    MemberInfo,
    PeerStatus,
    PostgresState,
    Role,
    VoterEntry,
)
from pgquorum.agent.quorum.failsafe import Promise, PromiseRequest, VoterMemory, grant_promise, observe_etcd
from pgquorum.agent.quorum.votes import Grant, Vote, VoteRequest, VoterView, confirm_vote, decide_vote, record_vote

TIMING = Timing(ttl=3, loop_wait=1, retry_timeout=1, safety_margin=0.5)
DATA = ("a", "b")
WITNESS = "w"
VOTERS = (*DATA, WITNESS)
SYSID = "42"


@dataclass
class Etcd:
    leader: str | None = "a"
    leader_lease: str | None = "a"
    term: int = 1
    lease_expiry: dict[str, float] = field(default_factory=lambda: {n: TIMING.ttl for n in VOTERS})
    votes: dict[tuple[int, str], tuple[Vote, int]] = field(default_factory=dict)  # (vote, mod revision)
    revision: int = 100

    def expire(self, now: float) -> None:
        for name, expiry in list(self.lease_expiry.items()):
            if now >= expiry:
                del self.lease_expiry[name]
                if self.leader_lease == name:
                    self.leader, self.leader_lease = None, None


@dataclass
class Node:
    name: str
    pg: PostgresState
    voter: VoterMemory
    memory: Memory = field(default_factory=Memory)
    promises: dict[str, Promise] = field(default_factory=dict)  # the keeper's table (send-time dated)
    election: Election | None = None
    connected: bool = True
    paused: bool = False

    def writable(self) -> bool:
        return self.pg.running and self.pg.in_recovery is False and not self.paused


def replica_pg(upstream: str | None) -> PostgresState:
    return PostgresState(
        True,
        True,
        True,
        in_recovery=True,
        timeline=1,
        system_id=SYSID,
        received_lsn=1000,
        upstream=upstream,
        streaming=upstream is not None,
    )


WITNESS_PG = PostgresState(False, False)


@dataclass
class World:
    now: float = TIMING.ttl + 0.01  # past everyone's start-up quiet period
    etcd: Etcd = field(default_factory=Etcd)
    nodes: dict[str, Node] = field(default_factory=dict)
    cut: set[frozenset[str]] = field(default_factory=set)
    leaders_of_term: dict[int, set[str]] = field(default_factory=dict)
    lsn: int = 1000

    @classmethod
    def start(cls) -> World:
        w = cls()
        w.etcd.lease_expiry = {n: w.now + TIMING.ttl for n in VOTERS}
        primary = PostgresState(True, True, True, in_recovery=False, timeline=1, system_id=SYSID, wal_lsn=1000)
        for n in VOTERS:
            memory = observe_etcd(VoterMemory(n, TIMING.ttl, started_at=0.0), 1)
            pg = primary if n == "a" else (WITNESS_PG if n == WITNESS else replica_pg("a"))
            w.nodes[n] = Node(n, pg, memory)
        a = w.nodes["a"]
        a.memory = Memory(leader_term=1, last_renew_sent=w.now, leading_since=0.0, since_term=1)
        w.leaders_of_term[1] = {"a"}
        w.promise_round("a")
        return w

    # -- observations ---------------------------------------------------------------------------
    def linked(self, a: str, b: str) -> bool:
        return a == b or (not self.nodes[a].paused and not self.nodes[b].paused and frozenset((a, b)) not in self.cut)

    def voting(self, node: Node) -> Voting:
        return Voting(VOTERS, tuple(node.promises.values()), node.election)

    def deadline(self, node: Node) -> float | None:
        return serving_deadline_at(node.memory, TIMING, self.voting(node), node.name, self.now)

    def snapshot(self) -> ClusterState:
        members = tuple(
            MemberInfo(
                n,
                Role.WITNESS if n == WITNESS else Role.REPLICA,
                "running",
                f"http://{n}",
                f"pg://{n}",
                witness=n == WITNESS,
            )
            for n in VOTERS
            if n in self.etcd.lease_expiry
        )
        leader = LeaderInfo(self.etcd.leader, 1, 1) if self.etcd.leader else None
        return ClusterState(
            revision=self.etcd.revision,
            initialize=SYSID,
            leader=leader,
            term=self.etcd.term,
            members=members,
            voters=tuple(VoterEntry(n, n == WITNESS) for n in VOTERS),
            votes=tuple(v for v, _ in self.etcd.votes.values()),
        )

    def peers_of(self, me: str) -> tuple[PeerStatus, ...]:
        out = []
        for n in DATA:
            if n == me:
                continue
            node = self.nodes[n]
            pg = node.pg
            reachable = self.linked(me, n)
            out.append(
                PeerStatus(n, reachable, pg.running, pg.in_recovery, pg.timeline, pg.best_lsn())
                if reachable
                else PeerStatus(n, False)
            )
        return tuple(out)

    def check(self) -> None:
        writers = [n for n in self.nodes.values() if n.writable()]
        assert len(writers) <= 1, f"two primaries accept writes at once: {[n.name for n in writers]}"
        for n in writers:
            deadline = self.deadline(n)
            assert deadline is not None and self.now < deadline, f"{n.name} writable past its serving deadline"
        for term, leaders in self.leaders_of_term.items():
            assert len(leaders) == 1, f"two leaders for term {term}: {leaders}"

    # -- events ---------------------------------------------------------------------------------
    def advance(self, dt: float) -> None:
        target = self.now + dt
        while self.now < target:
            self.now = min(target, self.now + 0.05)
            self.etcd.expire(self.now)
            for node in self.nodes.values():
                if not node.paused and guard_must_fence(self.now, node.memory, TIMING, self.voting(node), node.name):
                    self.fence(node)
            self.check()

    def fence(self, node: Node) -> None:
        if node.pg.running:
            node.pg = replace(
                node.pg,
                running=False,
                accepting_connections=False,
                in_recovery=None,
                was_primary=node.pg.was_primary or node.pg.in_recovery is False,
            )
        node.memory = replace(node.memory, leader_term=None, last_renew_sent=None, since_term=None)
        node.promises.clear()

    def promise_round(self, name: str) -> None:
        """The keeper: ask every linked voter for a promise for the term we lead (any time, no etcd)."""
        node = self.nodes[name]
        term = node.memory.leader_term
        if node.paused or term is None:
            return
        for v in VOTERS:
            if v == name or not self.linked(name, v):
                continue
            voter = self.nodes[v]
            voter.voter, result = grant_promise(voter.voter, PromiseRequest(name, term), self.now)
            if isinstance(result, Promise):
                node.promises[v] = Promise(v, name, term, self.now, result.ttl)

    def restart_agent(self, name: str) -> None:
        node = self.nodes[name]
        node.memory, node.promises, node.election = Memory(), {}, None
        node.voter = VoterMemory(name, TIMING.ttl, started_at=self.now)

    def loop(self, name: str) -> None:
        node = self.nodes[name]
        if node.paused:
            return
        renewed = None
        cluster = None
        if node.connected:
            self.etcd.lease_expiry[name] = self.now + TIMING.ttl
            renewed = self.now
            cluster = self.snapshot()
            own = [(v.term, v.candidate) for v in cluster.votes if v.voter == name]
            node.voter = observe_etcd(node.voter, cluster.term, own)
        if name == WITNESS:
            return
        # The keeper: a round whenever we lead (the loop's own, after a renewal; or the timer's).
        leading = node.memory.leader_term
        if cluster is not None and cluster.leader is not None and cluster.leader.name == name:
            leading = cluster.term
        if leading is not None:
            since = node.memory.since_term if node.memory.since_term is not None else leading
            self._round_for(node, leading, since)
        if node.election is not None and (cluster is None or node.election.term != cluster.term + 1):
            node.election = None
        peers = self.peers_of(name) if cluster is not None and cluster.leader is None else ()
        d = decide(
            Inputs(
                me=name,
                now=self.now,
                timing=TIMING,
                cluster=cluster,
                pg=node.pg,
                memory=node.memory,
                lease_renewed_at=renewed,
                peers=peers,
                voting=self.voting(node),
            )
        )
        node.memory = d.memory
        for action in d.actions:
            self.apply(node, action, renewed)
        if node.memory.leader_term is None:
            node.promises.clear()
        self.check()

    def _round_for(self, node: Node, term: int, since: int) -> None:
        for v in VOTERS:
            if v == node.name or not self.linked(node.name, v):
                continue
            voter = self.nodes[v]
            voter.voter, result = grant_promise(voter.voter, PromiseRequest(node.name, term), self.now)
            if isinstance(result, Promise):
                node.promises[v] = Promise(v, node.name, term, self.now, result.ttl)
        node.promises = {v: p for v, p in node.promises.items() if p.term >= since}

    def vote(self, candidate: Node, v: str, request: VoteRequest) -> None:
        voter = self.nodes[v]
        e = self.etcd
        fresh = voter.connected
        writable_leader = voter.writable() and voter.memory.leader_term is not None
        position = None if v == WITNESS or not voter.pg.running else (voter.pg.timeline, voter.pg.best_lsn())
        view = VoterView(
            v,
            v == WITNESS,
            position[0] if position else None,
            position[1] if position else None,
            e.term if fresh else None,
            e.leader if fresh else None,
            v if writable_leader else None,  # peers' polls may fail: safety must not rest on them
            voter.voter,
        )
        result = decide_vote(view, request, self.now)
        if not isinstance(result, Grant):
            return
        voter.voter = record_vote(voter.voter, result.vote)
        if not fresh:
            return
        key = (request.term, v)
        if key in e.votes:
            confirm_vote(result.vote, e.votes[key][0])
            return
        if e.term == request.term - 1 and e.leader is None:
            e.revision += 1
            e.votes[key] = (result.vote, e.revision)

    def apply(self, node: Node, action: object, renewed: float | None) -> None:
        e = self.etcd
        match action:
            case RequestVotes(term=want):
                pg = node.pg
                request = VoteRequest(node.name, want, pg.timeline or 1, pg.best_lsn() or 0)
                for v in VOTERS:
                    if self.linked(node.name, v):
                        self.vote(node, v, request)
                keys = tuple(pair for (t, _), pair in e.votes.items() if t == want)
                prev = node.election
                same = prev is not None and prev.term == want
                attempt = prev.attempt + 1 if prev is not None and same else 1
                started = (prev.started or prev.at) if prev is not None and same else self.now
                node.election = Election(want, self.now, keys, False, attempt, started)
            case AdvanceTerm(expected_term=t):
                assert node.connected
                if e.leader is None and e.term == t:
                    e.term = t + 1
            case AcquireLeader(expected_term=t, votes=votes):
                assert node.connected
                unchanged = all(e.votes.get((t + 1, v), (None, -1))[1] == rev for v, rev in votes)
                if e.leader is None and e.term == t and unchanged:
                    e.leader, e.leader_lease, e.term = node.name, node.name, t + 1
                    since = node.memory.since_term if node.memory.leader_term == t else t + 1
                    node.memory = replace(node.memory, leader_term=t + 1, last_renew_sent=renewed, since_term=since)
                    self.leaders_of_term.setdefault(t + 1, set()).add(node.name)
            case Promote(term=t):
                assert e.leader == node.name and e.term == t, "promoted without holding the key"
                self.lsn += 10
                node.pg = replace(
                    node.pg,
                    in_recovery=False,
                    timeline=(node.pg.timeline or 1) + 1,
                    wal_lsn=self.lsn,
                    upstream=None,
                    streaming=False,
                )
            case StartPostgres(as_primary=True):
                assert e.leader == node.name, "started as primary without the key"
                node.pg = replace(node.pg, running=True, accepting_connections=True, in_recovery=False)
            case StartPostgres(as_primary=False, upstream=up):
                node.pg = replace(
                    node.pg,
                    running=True,
                    accepting_connections=True,
                    in_recovery=True,
                    upstream=up,
                    streaming=up is not None,
                    was_primary=False,
                )
            case Rejoin(leader=up):
                lead = self.nodes[up].pg
                node.pg = replace(
                    node.pg,
                    running=True,
                    accepting_connections=True,
                    in_recovery=True,
                    upstream=up,
                    streaming=True,
                    was_primary=False,
                    timeline=lead.timeline,
                    received_lsn=lead.best_lsn(),
                    wal_lsn=None,
                )
            case Fence():
                self.fence(node)
            case ReleaseLeader():
                if e.leader == node.name and node.connected:
                    e.leader, e.leader_lease = None, None
            case Follow(leader=up):
                node.pg = replace(node.pg, upstream=up, streaming=True)
            case DeleteVotes(up_to_term=t):
                for key in [k for k in e.votes if k[0] <= t]:
                    del e.votes[key]
            case PublishStatus():
                pass
            case _:
                raise AssertionError(f"unexpected action {action!r}")


# Each kind is listed as often as it should happen. Swarm testing: each example enables a random
# subset of kinds (runs without pauses, or without etcd loss, reach deeper corners than one mix).
KINDS = (
    ["loop"] * 8
    + ["advance"] * 4
    + ["keeper"] * 2
    + [
        "disconnect",
        "reconnect",
        "cut",
        "heal",
        "pause",
        "resume",
        "crash",
        "restart",
    ]
)
Event = tuple[str, int, float]
events = st.lists(st.sampled_from(KINDS), min_size=4, max_size=len(KINDS)).flatmap(
    lambda enabled: st.lists(
        st.tuples(st.sampled_from(enabled), st.integers(0, 8), st.floats(min_value=0.0, max_value=2.5)),
        min_size=20,
        max_size=150,
    )
)


def run(w: World, event: Event) -> None:
    kind, i, dt = event
    name, other = VOTERS[i % 3], VOTERS[(i // 3) % 3]
    node = w.nodes[name]
    if kind == "advance":
        w.advance(dt)
        return
    if kind in ("cut", "heal"):
        if name != other:
            (w.cut.add if kind == "cut" else w.cut.discard)(frozenset((name, other)))
        return
    if kind == "loop":
        w.loop(name)
    elif kind == "keeper" and name != WITNESS:
        w.promise_round(name)
    elif kind == "disconnect":
        node.connected = False
    elif kind == "reconnect":
        node.connected = True
    elif kind == "pause":
        node.paused = True
    elif kind == "resume":
        node.paused = False
        # On SIGCONT the agent's guard runs before anything else of ours.
        if guard_must_fence(w.now, node.memory, TIMING, w.voting(node), node.name):
            w.fence(node)
    elif kind == "crash" and name != WITNESS and node.pg.running:
        node.pg = replace(
            node.pg,
            running=False,
            accepting_connections=False,
            in_recovery=None,
            was_primary=node.pg.was_primary or node.pg.in_recovery is False,
        )
    elif kind == "restart" and not node.paused:
        # The agent process restarts (memory lost) and runs its first loop at once: a primary's
        # postgres left without any agent is the STONITH/watchdog case, outside this model.
        w.restart_agent(name)
        w.loop(name)
    w.check()


@settings(max_examples=400, deadline=None)
@given(events)
def test_votes_and_promises_never_allow_two_writable_primaries(history: list[Event]) -> None:
    w = World.start()
    for e in history:
        run(w, e)


@settings(max_examples=100, deadline=None)
@given(st.sampled_from(["a", "b", WITNESS]))
def test_two_data_and_a_witness_survive_the_loss_of_any_one(victim: str) -> None:
    """Liveness in the model: one member dies for good; within a few ttl a writable primary exists."""
    w = World.start()
    w.nodes[victim].paused = True
    for _ in range(12):
        w.advance(0.5)
        for name in VOTERS:
            w.loop(name)
            w.loop(name)  # an election takes two loops: gather, then tally and take the key
    assert any(w.nodes[n].writable() for n in DATA if n != victim)


def test_losing_two_of_three_stops_writes_within_ttl() -> None:
    w = World.start()
    w.nodes["b"].paused = True
    w.nodes[WITNESS].paused = True
    lost_at = w.now
    while w.nodes["a"].writable():
        w.advance(0.05)
        w.loop("a")
        assert w.now - lost_at < TIMING.ttl, "the primary kept writing without a majority"
    for _ in range(20):  # and it stays that way
        w.advance(0.5)
        w.loop("a")
        w.loop("a")
    assert not w.nodes["a"].writable()
