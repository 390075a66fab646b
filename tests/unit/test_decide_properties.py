"""Property tests: the decision function inside a model of etcd and postgres, any interleaving.

The model is deliberately small: etcd is a leader key + term counter with compare-and-swap and
leases that expire ``ttl`` after their last keepalive; postgres is running / in recovery / an LSN.
Hypothesis drives HA loops, clock advances, etcd disconnections, SIGSTOP pauses and crashes.
The fence guard is modelled as in the agent: it fires when ``guard_must_fence`` becomes true.

Properties:
* at most one member ever leads a given term;
* a member accepts writes only while it holds the leader key in etcd and before its fence
  deadline, so two members never accept writes at the same instant.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from hypothesis import given, settings
from hypothesis import strategies as st

from pgquorum.agent.config import Timing
from pgquorum.agent.ha.actions import (
    AcquireLeader,
    Fence,
    Follow,
    Promote,
    PublishStatus,
    Rejoin,
    ReleaseLeader,
    StartPostgres,
)
from pgquorum.agent.ha.decide import Inputs, Memory, decide, fence_deadline, guard_must_fence
from pgquorum.agent.model import ClusterState, LeaderInfo, MemberInfo, PeerStatus, PostgresState, Role

TIMING = Timing(ttl=3, loop_wait=1, retry_timeout=1, safety_margin=0.5)
NAMES = ("a", "b", "c")
SYSID = "42"


@dataclass
class Etcd:
    leader: str | None = "a"
    leader_lease: str | None = "a"
    term: int = 1
    lease_expiry: dict[str, float] = field(default_factory=lambda: {n: TIMING.ttl for n in NAMES})

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
    memory: Memory = field(default_factory=Memory)
    connected: bool = True
    paused: bool = False

    def writable(self) -> bool:
        return self.pg.running and self.pg.in_recovery is False and not self.paused


@dataclass
class World:
    now: float = 0.0
    etcd: Etcd = field(default_factory=Etcd)
    nodes: dict[str, Node] = field(default_factory=dict)
    leaders_of_term: dict[int, set[str]] = field(default_factory=dict)
    lsn: int = 1000

    @classmethod
    def start(cls) -> World:
        w = cls()
        primary = PostgresState(True, True, True, in_recovery=False, timeline=1, system_id=SYSID, wal_lsn=1000)
        w.nodes["a"] = Node("a", primary, Memory(leader_term=1, last_renew_sent=0.0))
        for n in NAMES[1:]:
            replica = PostgresState(
                True,
                True,
                True,
                in_recovery=True,
                timeline=1,
                system_id=SYSID,
                received_lsn=1000,
                upstream="a",
                streaming=True,
            )
            w.nodes[n] = Node(n, replica)
        w.leaders_of_term[1] = {"a"}
        return w

    def snapshot(self) -> ClusterState:
        members = tuple(
            MemberInfo(n, Role.REPLICA, "running", f"http://{n}", f"postgres://{n}")
            for n in NAMES
            if n in self.etcd.lease_expiry
        )
        leader = LeaderInfo(self.etcd.leader, 1, 1) if self.etcd.leader else None
        return ClusterState(revision=1, initialize=SYSID, leader=leader, term=self.etcd.term, members=members)

    def peers_of(self, me: str) -> tuple[PeerStatus, ...]:
        out = []
        for n, node in self.nodes.items():
            if n == me:
                continue
            pg = node.pg
            out.append(
                PeerStatus(
                    n,
                    reachable=not node.paused,
                    postgres_running=pg.running,
                    in_recovery=pg.in_recovery,
                    timeline=pg.timeline,
                    lsn=pg.best_lsn(),
                )
            )
        return tuple(out)

    # -- events ---------------------------------------------------------------------------
    def advance(self, dt: float) -> None:
        # Walk in small steps so the fence guard fires at (not after) the deadline.
        target = self.now + dt
        while self.now < target:
            self.now = min(target, self.now + 0.05)
            self.etcd.expire(self.now)
            for node in self.nodes.values():
                if not node.paused and guard_must_fence(self.now, node.memory, TIMING):
                    self.fence(node)
            self.check()

    def fence(self, node: Node) -> None:
        node.pg = replace(
            node.pg,
            running=False,
            accepting_connections=False,
            in_recovery=None,
            was_primary=node.pg.was_primary or node.pg.in_recovery is False,
        )
        node.memory = replace(node.memory, leader_term=None, last_renew_sent=None)

    def loop(self, name: str) -> None:
        node = self.nodes[name]
        if node.paused:
            return
        renewed = None
        if node.connected:
            self.etcd.lease_expiry[name] = self.now + TIMING.ttl  # keepalive or fresh grant
            renewed = self.now
        cluster = self.snapshot() if node.connected else None
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
            )
        )
        node.memory = d.memory
        for action in d.actions:
            self.apply(node, action, renewed)
        self.check()

    def apply(self, node: Node, action: object, renewed: float | None) -> None:
        e = self.etcd
        match action:
            case AcquireLeader(expected_term=t):
                assert node.connected
                if e.leader is None and e.term == t:
                    e.leader, e.leader_lease, e.term = node.name, node.name, t + 1
                    node.memory = replace(node.memory, leader_term=t + 1, last_renew_sent=renewed)
                    self.leaders_of_term.setdefault(t + 1, set()).add(node.name)
                    assert len(self.leaders_of_term[t + 1]) == 1, "two leaders for one term"
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
                if e.leader == node.name:
                    e.leader, e.leader_lease = None, None
            case Follow(leader=up):
                node.pg = replace(node.pg, upstream=up, streaming=True)
            case PublishStatus():
                pass
            case _:
                raise AssertionError(f"unexpected action {action!r}")

    def check(self) -> None:
        writers = [n for n in self.nodes.values() if n.writable()]
        for n in writers:
            deadline = fence_deadline(n.memory.last_renew_sent, TIMING)
            assert deadline is not None and self.now < deadline, f"{n.name} writable past its fence deadline"
            assert self.etcd.leader == n.name, f"{n.name} writable while etcd leader is {self.etcd.leader}"
        assert len(writers) <= 1, "two primaries accept writes at once"


event = st.one_of(
    st.tuples(st.just("loop"), st.sampled_from(NAMES)),
    st.tuples(st.just("advance"), st.floats(min_value=0.0, max_value=2.5)),
    st.tuples(st.just("disconnect"), st.sampled_from(NAMES)),
    st.tuples(st.just("reconnect"), st.sampled_from(NAMES)),
    st.tuples(st.just("pause"), st.sampled_from(NAMES)),
    st.tuples(st.just("resume"), st.sampled_from(NAMES)),
    st.tuples(st.just("crash"), st.sampled_from(NAMES)),
)


@settings(max_examples=400, deadline=None)
@given(st.lists(event, min_size=1, max_size=80))
def test_one_leader_per_term_and_no_writes_past_the_fence_deadline(events: list[tuple[str, object]]) -> None:
    w = World.start()
    for kind, arg in events:
        if kind == "advance":
            assert isinstance(arg, float)
            w.advance(arg)
            continue
        assert isinstance(arg, str)
        node = w.nodes[arg]
        if kind == "loop":
            w.loop(arg)
        elif kind == "disconnect":
            node.connected = False
        elif kind == "reconnect":
            node.connected = True
        elif kind == "pause":
            node.paused = True
        elif kind == "resume":
            node.paused = False
            # On SIGCONT the agent's guard runs before anything else of ours.
            if guard_must_fence(w.now, node.memory, TIMING):
                w.fence(node)
            w.check()
        elif kind == "crash":
            node.pg = replace(
                node.pg,
                running=False,
                accepting_connections=False,
                in_recovery=None,
                was_primary=node.pg.was_primary or node.pg.in_recovery is False,
            )
    for terms in w.leaders_of_term.values():
        assert len(terms) == 1


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(NAMES), min_size=1, max_size=40), st.sampled_from(NAMES))
def test_cluster_recovers_a_leader_after_the_primary_dies(order: list[str], victim: str) -> None:
    """Liveness in the model: kill the leader, keep looping the others, a new leader appears."""
    w = World.start()
    leader = w.nodes["a"]
    leader.paused = True  # node death: neither agent nor postgres runs again
    for _ in range(6):
        w.advance(1.0)
        for name in order + [n for n in NAMES if n != "a"]:
            if name != "a":
                w.loop(name)
    assert w.etcd.leader in {"b", "c"}
    assert any(w.nodes[n].writable() for n in ("b", "c"))
