"""A small world of voting members, etcd and messages, driven by the pure quorum functions.

Used by the property tests of votes and failsafe promises. What is modelled:

* etcd: the term counter, the leader key on a lease (expires ``ttl`` after its last keepalive),
  vote keys created once (``votes/<term>/<voter>``); it can be down for everyone, and each
  member's link to it can be cut;
* members: data members (timeline, WAL position) and witnesses, each with its ``VoterMemory``;
  they crash (losing process memory, keeping WAL and etcd keys) and restart;
* a graceful stop (SIGTERM): a leader stops postgres, frees the voters it reaches from their
  promises (``release_promise``; each release can be lost), deletes its key when it reaches etcd,
  and its process ends; renewals it sent before may still arrive afterwards;
* messages: promise requests travel separately (sent, then delivered later, lost, or with the
  answer lost); vote requests can be lost; links between two members can be cut;
* one clock for everyone (monotonic clocks of machines differ in offset, not noticeably in rate,
  and the functions never compare two machines' instants).

A primary's serving rule, as the lead wires it:

* ``failsafe`` mode: writable while its lease is valid (last keepalive sent + ttl - margin) *or*
  while ``may_keep_serving`` says a majority of promises holds;
* ``quorum`` mode (recommended): writable only while ``may_keep_serving`` holds, the primary
  renewing promises all the time; a new leader promotes once it holds a majority of promises.

Every promotion goes through votes: ``decide_vote`` at each voter, ``tally`` over the vote keys,
then one transaction taking the leader key if the term is unchanged and the key absent.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from hypothesis import strategies as st

from pgquorum.agent.config import Timing
from pgquorum.agent.quorum.failsafe import (
    KeepServing,
    Promise,
    PromiseRequest,
    VoterMemory,
    grant_promise,
    majority,
    may_keep_serving,
    observe_etcd,
    release_promise,
    serving_deadline,
)
from pgquorum.agent.quorum.votes import Grant, Vote, VoteRequest, VoterView, decide_vote, record_vote, tally

TIMING = Timing(ttl=3, loop_wait=1, retry_timeout=1, safety_margin=0.5)
Mode = Literal["failsafe", "quorum"]


@dataclass
class Node:
    name: str
    witness: bool
    memory: VoterMemory
    timeline: int = 1
    lsn: int = 100
    alive: bool = True
    etcd_link: bool = True
    view: tuple[int, str | None] | None = None  # (term, leader) of its last etcd read since start
    state: str = "standby"  # standby | elected (holds the key, not yet writable) | primary
    term_led: int | None = None
    since_term: int | None = None  # first term of its unbroken leadership
    last_renew_sent: float | None = None
    promises: dict[str, Promise] = field(default_factory=dict)  # primary's copies, dated at send time
    incarnation: int = 0


@dataclass
class Etcd:
    up: bool = True
    term: int = 1
    leader: str | None = "a"
    lease_until: float = 0.0
    votes: dict[tuple[int, str], Vote] = field(default_factory=dict)


@dataclass(frozen=True)
class InFlight:
    sent_at: float
    primary: str
    incarnation: int
    term: int
    voter: str


@dataclass
class World:
    mode: Mode
    now: float
    nodes: dict[str, Node]
    etcd: Etcd
    cut: set[frozenset[str]] = field(default_factory=set)
    inflight: list[InFlight] = field(default_factory=list)
    elected: dict[int, set[str]] = field(default_factory=dict)
    writes_by_term: dict[int, int] = field(default_factory=dict)

    @classmethod
    def start(cls, data: tuple[str, ...], witnesses: tuple[str, ...], mode: Mode) -> World:
        """``data[0]`` leads term 1, holding fresh promises from every other member."""
        now = TIMING.ttl + 0.01  # past everyone's start-up quiet period
        nodes: dict[str, Node] = {}
        primary = data[0]
        for name in data + witnesses:
            memory = observe_etcd(VoterMemory(name, TIMING.ttl, started_at=0.0), 1)
            node = Node(name, name in witnesses, memory, view=(1, primary))
            if node.witness:
                node.timeline, node.lsn = 0, 0
            nodes[name] = node
        w = cls(mode, now, nodes, Etcd(lease_until=now + TIMING.ttl), elected={1: {primary}})
        p = nodes[primary]
        p.state, p.term_led, p.since_term, p.last_renew_sent = "primary", 1, 1, now
        for name, node in nodes.items():
            if name != primary:
                node.memory, answer = grant_promise(node.memory, PromiseRequest(primary, 1), now)
                assert isinstance(answer, Promise)
                p.promises[name] = Promise(name, primary, 1, now, answer.ttl)
        w.check()
        return w

    # -- observations -------------------------------------------------------------------------
    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self.nodes)

    def reaches_etcd(self, n: Node) -> bool:
        return self.etcd.up and n.etcd_link and n.alive

    def linked(self, a: str, b: str) -> bool:
        return self.nodes[a].alive and self.nodes[b].alive and frozenset((a, b)) not in self.cut

    def deadline(self, n: Node) -> float:
        assert n.term_led is not None
        verdict = self.verdict(n)
        lease = n.last_renew_sent + TIMING.fence_after() if n.last_renew_sent is not None else None
        deadline = serving_deadline(lease, verdict, require_majority=self.mode == "quorum")
        return deadline if deadline is not None else -math.inf

    def verdict(self, n: Node) -> KeepServing:
        assert n.term_led is not None
        return may_keep_serving(
            n.promises.values(), self.names, self.now, TIMING, me=n.name, term=n.term_led, since_term=n.since_term
        )

    def writable(self, n: Node) -> bool:
        return n.alive and n.state == "primary" and self.now < self.deadline(n)

    def writers(self) -> list[Node]:
        return [n for n in self.nodes.values() if self.writable(n)]

    def majorities(self, term: int) -> set[str]:
        """Candidates holding a majority of the vote keys of ``term``."""
        counts: dict[str, int] = {}
        for (t, _), vote in self.etcd.votes.items():
            if t == term:
                counts[vote.candidate] = counts.get(vote.candidate, 0) + 1
        return {c for c, k in counts.items() if k >= majority(len(self.nodes))}

    def check(self) -> None:
        writers = self.writers()
        assert len(writers) <= 1, f"two primaries accept writes: {[n.name for n in writers]}"
        vote_terms = {t for t, _ in self.etcd.votes}
        for term in vote_terms:
            assert len(self.majorities(term)) <= 1, f"two candidates hold a majority in term {term}"  # (a)
        for term, leaders in self.elected.items():
            assert len(leaders) <= 1, f"two leaders elected for term {term}: {leaders}"
        newest = max(self.elected)
        for p in writers:
            assert p.term_led == newest, f"{p.name} (term {p.term_led}) writable after term {newest} was elected"
            for term in vote_terms:  # (b); the primary itself may win the next term (its key expired)
                if term > p.term_led:
                    assert not self.majorities(term) - {p.name}, (
                        f"{self.majorities(term)} collected a majority for term {term} while {p.name} "
                        f"of term {p.term_led} may still serve"
                    )

    # -- events -------------------------------------------------------------------------------
    def advance(self, dt: float) -> None:
        target = self.now + dt
        while self.now < target:
            self.now = min(target, self.now + 0.05)
            if self.etcd.leader is not None and self.now >= self.etcd.lease_until:
                self.etcd.leader = None
            for n in self.nodes.values():
                if n.alive and n.state == "primary" and self.now >= self.deadline(n):
                    self.fence(n)  # the fence guard: at the deadline, not a loop later
            self.check()

    def fence(self, n: Node) -> None:
        if self.reaches_etcd(n) and self.etcd.leader == n.name:
            self.etcd.leader = None  # quorum mode: let the majority elect someone
        n.state, n.term_led, n.since_term, n.last_renew_sent, n.promises = "standby", None, None, None, {}

    def loop(self, name: str) -> None:
        n = self.nodes[name]
        if not n.alive:
            return
        if self.reaches_etcd(n):
            e = self.etcd
            if e.leader == name and n.state != "standby" and e.term == n.term_led:
                e.lease_until = self.now + TIMING.ttl
                n.last_renew_sent = self.now
            n.view = (e.term, e.leader)
            own = [(t, v.candidate) for (t, voter), v in e.votes.items() if voter == name]
            n.memory = observe_etcd(n.memory, e.term, own)
            if n.state != "standby" and (e.term != n.term_led or e.leader not in (None, name)):
                self.fence(n)  # a newer term exists
            elif n.state == "elected" and e.leader is None:
                self.fence(n)  # lost the key before promoting
        self.maybe_promote(n)
        if self.writable(n):
            n.lsn += 1
            assert n.term_led is not None
            self.writes_by_term[n.term_led] = self.writes_by_term.get(n.term_led, 0) + 1
        elif not n.witness and n.state == "standby":
            for p in self.writers():
                if self.linked(name, p.name):
                    n.timeline, n.lsn = p.timeline, p.lsn  # streaming (or rewound onto the leader)
        self.check()

    def maybe_promote(self, n: Node) -> None:
        if n.state != "elected" or n.term_led is None:
            return
        if self.mode == "failsafe" or self.verdict(n).allowed:
            n.state = "primary"
            n.timeline = max(x.timeline for x in self.nodes.values()) + 1

    def live_primary_seen_by(self, v: Node, poll_failed: bool = False) -> str | None:
        if self.writable(v):
            return v.name
        if poll_failed:
            return None  # its poll of the leader's API timed out: it sees no live primary
        for p in self.writers():
            if v.view is not None and p.term_led == v.view[0] and self.linked(v.name, p.name):
                return p.name
        return None

    def voter_view(self, v: Node, poll_failed: bool = False) -> VoterView:
        term = v.view[0] if v.view is not None and self.reaches_etcd(v) else None
        leader = v.view[1] if v.view is not None else None
        position = (None, None) if v.witness else (v.timeline, v.lsn)
        return VoterView(
            v.name,
            v.witness,
            position[0],
            position[1],
            term,
            leader,
            self.live_primary_seen_by(v, poll_failed),
            v.memory,
        )

    def can_elect(self, name: str) -> bool:
        """A standby data member, or a primary whose key expired (etcd was away) re-running for itself."""
        c = self.nodes[name]
        if not c.alive or c.witness or not self.reaches_etcd(c):
            return False
        lost_key = c.state == "primary" and self.etcd.leader is None and self.etcd.term == c.term_led
        return c.state == "standby" or lost_key

    def elect(self, name: str, lost: int = 0) -> bool:
        """``name`` runs an election for the next term.

        Bit i of ``lost`` drops the request to voter i; bit i + 5 *clear*: voter i's poll of the
        primary's API failed, so it sees no live primary. Failed polls are the default because
        safety must not rest on them (they are an early, best-effort refusal).
        """
        c = self.nodes[name]
        if not self.can_elect(name):
            return False
        self.loop(name)  # a fresh read of etcd first
        e = self.etcd
        if e.leader is not None:
            return False
        term = e.term + 1
        request = VoteRequest(name, term, c.timeline, c.lsn)
        for i, voter in enumerate(self.names):
            if voter != name and (lost >> i & 1 or not self.linked(name, voter)):
                continue
            v = self.nodes[voter]
            result = decide_vote(self.voter_view(v, not lost >> (i + 5) & 1), request, self.now)
            if isinstance(result, Grant):
                v.memory = record_vote(v.memory, result.vote)
                if self.reaches_etcd(v):
                    e.votes.setdefault((term, voter), result.vote)  # create_revision == 0
        counted = tally([v for (t, _), v in e.votes.items() if t == term], self.names, term, name)
        if not counted.may_promote or e.term != term - 1 or e.leader is not None:
            self.check()
            return False
        e.term, e.leader, e.lease_until = term, name, self.now + TIMING.ttl
        if c.state == "primary":  # re-elected: its earlier promises bind voters to it until renewed
            c.term_led, c.last_renew_sent = term, self.now
        else:
            c.state, c.term_led, c.since_term, c.last_renew_sent, c.promises = "elected", term, term, self.now, {}
        c.view = (term, name)
        self.elected.setdefault(term, set()).add(name)
        self.maybe_promote(c)
        self.check()
        return True

    def send_promises(self, name: str) -> None:
        p = self.nodes[name]
        if not p.alive or p.state == "standby" or p.term_led is None:
            return
        for voter in self.names:
            if voter != name:
                self.inflight.append(InFlight(self.now, name, p.incarnation, p.term_led, voter))

    def deliver(self, index: int, answer_lost: bool = False) -> None:
        if not self.inflight:
            return
        msg = self.inflight.pop(index % len(self.inflight))
        v, p = self.nodes[msg.voter], self.nodes[msg.primary]
        if not self.linked(msg.primary, msg.voter):
            return
        v.memory, result = grant_promise(v.memory, PromiseRequest(msg.primary, msg.term), self.now)
        current = (
            p.incarnation == msg.incarnation
            and p.state != "standby"
            and p.since_term is not None
            and p.term_led is not None
            and p.since_term <= msg.term <= p.term_led
        )
        if isinstance(result, Promise) and not answer_lost and current:
            p.promises[msg.voter] = Promise(msg.voter, msg.primary, msg.term, msg.sent_at, result.ttl)
            self.maybe_promote(p)
        self.check()

    def drop(self, index: int) -> None:
        if self.inflight:
            self.inflight.pop(index % len(self.inflight))

    def crash(self, name: str) -> None:
        n = self.nodes[name]
        n.alive = False
        n.state, n.term_led, n.since_term, n.last_renew_sent, n.promises = "standby", None, None, None, {}
        self.check()

    def shutdown(self, name: str, lost: int = 0) -> None:
        """SIGTERM: postgres stops first; only then are promises released and the key deleted."""
        n = self.nodes[name]
        if not n.alive:
            return
        term = n.term_led
        n.state, n.term_led, n.since_term, n.last_renew_sent, n.promises = "standby", None, None, None, {}
        if term is not None:
            for j, voter in enumerate(self.names):
                v = self.nodes[voter]
                if voter != name and v.alive and self.linked(name, voter) and not lost >> j & 1:
                    v.memory, _ = release_promise(v.memory, PromiseRequest(name, term))
            if self.reaches_etcd(n) and self.etcd.leader == name and self.etcd.term == term:
                self.etcd.leader = None
        n.alive = False
        self.check()

    def restart(self, name: str) -> None:
        n = self.nodes[name]
        if n.alive:
            return
        n.alive, n.incarnation, n.view = True, n.incarnation + 1, None
        n.memory = VoterMemory(name, TIMING.ttl, started_at=self.now)  # process memory is gone
        self.check()

    # -- a well-behaved cluster, for liveness ------------------------------------------------
    def run(self, seconds: float, step: float = 0.5) -> None:
        """Loops, promise renewals and elections with no message loss, for ``seconds``."""
        end = self.now + seconds
        while self.now < end:
            self.advance(step)
            for name in self.names:
                self.loop(name)
            for n in self.nodes.values():
                if n.alive and n.state != "standby":
                    self.send_promises(n.name)
            while self.inflight:
                self.deliver(0)
            for n in self.writers():
                if self.can_elect(n.name):
                    self.elect(n.name)  # etcd is back and our key expired meanwhile
            if self.etcd.leader is None and not self.writers():
                data = [n for n in self.nodes.values() if n.alive and not n.witness and self.reaches_etcd(n)]
                if data:
                    best = max(data, key=lambda n: (n.timeline, n.lsn, n.name))
                    self.elect(best.name)


# -- random interleavings ----------------------------------------------------------------------

# Each kind is listed as often as it should happen: faults are rarer than loops and messages.
KINDS = (
    ["tick"] * 6  # clock advance, then a loop of every member whose bit in the mask is clear
    + ["renew"] * 4  # every leader asks everyone for a promise; mask bits: request / answer lost
    + ["elect"] * 4  # member i runs an election; mask bit j: the vote request to member j is lost
    + ["send", "deliver"]  # promise requests that arrive later (or never)
    + ["etcd_link"] * 2  # member i's link to etcd up (mask even) or down
    + ["etcd", "cut", "heal", "crash", "restart", "shutdown"]
)
Event = tuple[str, int, int, float]


def events(min_size: int = 0, max_size: int = 70) -> st.SearchStrategy[list[Event]]:
    """Swarm testing: each example enables a random subset of the kinds, then draws events from it.

    Runs without crashes, or without elections, or with etcd always up, reach the deep corners
    far more often than one fixed mix of everything.
    """
    return st.lists(st.sampled_from(KINDS), min_size=4, max_size=len(KINDS)).flatmap(
        lambda enabled: st.lists(
            st.tuples(
                st.sampled_from(enabled),
                st.integers(0, 40),
                st.one_of(st.just(0), st.integers(0, 1023)),  # half the time, nothing lost or skipped
                st.floats(0.0, 2.0),
            ),
            min_size=min_size,
            max_size=max_size,
        )
    )


def apply(w: World, event: Event) -> None:
    kind, i, mask, dt = event
    names = w.names
    name = names[i % len(names)]
    other = names[mask % len(names)]
    if kind == "tick":
        w.advance(dt)
        for j, member in enumerate(names):
            if not mask >> j & 1:
                w.loop(member)
    elif kind == "renew":
        first = len(w.inflight)
        for leader in names:
            w.send_promises(leader)
        for j in range(len(w.inflight) - first):
            if mask >> (2 * j) & 1:
                w.drop(first)  # the request is lost
            else:
                w.deliver(first, answer_lost=bool(mask >> (2 * j + 1) & 1))
    elif kind == "elect":
        # Member i of those that could run an election (alive data members that reach etcd).
        able = [n for n in names if w.can_elect(n)]
        if able:
            w.elect(able[i % len(able)], mask)
    elif kind == "send":
        w.send_promises(name)
    elif kind == "deliver":
        w.deliver(i, answer_lost=mask % 5 == 0)
    elif kind == "etcd_link":
        w.nodes[name].etcd_link = mask % 2 == 0
    elif kind == "etcd":
        w.etcd.up = mask % 3 != 1
    elif kind == "cut" and name != other:
        w.cut.add(frozenset((name, other)))
    elif kind == "heal":
        w.cut.discard(frozenset((name, other)))
    elif kind == "crash":
        w.crash(name)
    elif kind == "restart":
        w.restart(name)
    elif kind == "shutdown":
        w.shutdown(name, mask)
