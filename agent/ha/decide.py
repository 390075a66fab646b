"""The HA decision: a pure function from one immutable snapshot to the actions of this loop.

No I/O, no clock reads, no globals: ``Inputs`` carries everything (``now`` is monotonic seconds),
``Decision`` carries everything the executor needs, including the agent's updated ``Memory``.
The rules follow invariants I1-I3; each branch returns a reason written for the 3 a.m. log.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from pgquorum.agent.config import SyncSettings, Timing
from pgquorum.agent.ha.actions import (
    AcquireLeader,
    Action,
    AdvanceTerm,
    Bootstrap,
    ClearRequest,
    Clone,
    DeleteVotes,
    Fence,
    Follow,
    HandOver,
    Promote,
    PublishStatus,
    Reinitialize,
    Rejoin,
    ReleaseLeader,
    RequestVotes,
    RestartPostgres,
    StartPostgres,
)
from pgquorum.agent.model import ClusterState, PeerStatus, PostgresState, Role, SyncObservation
from pgquorum.agent.quorum.candidate import CandidateVerdict, check_candidate
from pgquorum.agent.quorum.failsafe import KeepServing, Promise, may_keep_serving, serving_deadline
from pgquorum.agent.quorum.sync import (
    ASYNC,
    Durability,
    SetSyncStandbys,
    SyncPlan,
    caught_up,
    healthy_standbys,
    parse_standby_names,
    promotion_standbys,
    resolve,
)
from pgquorum.agent.quorum.votes import Tally, Vote, tally


@dataclass(frozen=True)
class Memory:
    """What the agent remembers between loops (returned, updated, by every decision)."""

    leader_term: int | None = None  # the term we lead, None when we are not the leader
    last_renew_sent: float | None = None  # send time of the last renewal that kept our leader key
    pg_down_since: float | None = None  # leader only: when postgres was first seen down
    leaderless_since: float | None = None  # when this agent first saw no leader key (election timing)
    # (member, last seen) of data members the leader keeps a replication slot for: a member whose key
    # lapsed for a while (killed, restarting, a long rewind) still finds its WAL when it comes back.
    slot_seen: tuple[tuple[str, float], ...] = ()
    leading_since: float | None = None  # first loop that saw us hold the leader key (quorum settling)
    since_term: int | None = None  # first term of our unbroken leadership (its promises still count)
    # when this standby was first seen not streaming on an older timeline than its leader's
    behind_timeline_since: float | None = None


@dataclass(frozen=True)
class Election:
    """What our last ``RequestVotes`` gathered: the vote keys of ``term`` read back from etcd."""

    term: int
    at: float  # monotonic instant the keys were read
    votes: tuple[tuple[Vote, int], ...]  # (vote, its key's mod_revision)
    transient: bool = False  # a voter refused only for now (a promise or its start-up about to end)
    attempt: int = 1  # gatherings for this term so far: quick retries back off towards loop_wait
    started: float | None = None  # monotonic instant of the first gathering for this term (None: ``at``)


@dataclass(frozen=True)
class Voting:
    """Quorum votes and the failsafe (invariant I5), gathered by the executor for this loop.

    ``members``: the voting members (``voters/`` registry plus ourselves). ``promises``: our copies
    of the promises voters granted us (dated at the send time of each request), while we lead.
    """

    members: tuple[str, ...]
    promises: tuple[Promise, ...] = ()
    election: Election | None = None


@dataclass(frozen=True)
class Inputs:
    me: str
    now: float
    timing: Timing
    cluster: ClusterState | None  # None: etcd unreachable in this loop
    pg: PostgresState
    memory: Memory = field(default_factory=Memory)
    lease_renewed_at: float | None = None  # send time of this loop's successful lease keepalive
    peers: tuple[PeerStatus, ...] = ()  # gathered only while there is no leader
    nofailover: bool = False
    maximum_lag_on_failover: int = 1024 * 1024
    primary_start_timeout: float = 10.0
    member_slots_ttl: float = 1800.0  # keep a departed member's slot this long (Patroni's member_slots_ttl)
    wall: float = 0.0  # unix time: only to compare with operators' request times, never for leases
    command: str | None = None  # operator command for this member: "restart" | "reinitialize"
    sync: SyncSettings = field(default_factory=SyncSettings)  # quorum commit settings in force
    sync_obs: SyncObservation | None = None  # leader only: our postgres's quorum-commit state
    voting: Voting | None = None  # None: lease-only mode (quorum_votes: false)


# A manual failover request that nobody could carry out stops steering the race after this long.
REQUEST_TTL = 30.0


@dataclass(frozen=True)
class Decision:
    actions: tuple[Action, ...]
    reason: str
    role: Role
    memory: Memory
    again: bool = False  # state changed: run the next loop at once instead of sleeping
    alert: str | None = None  # a condition a human must look at (logged at error, exported)
    sync: SyncPlan | None = None  # leader: quorum-commit plan of this loop (its transitions are in actions)
    quorum: CandidateVerdict | None = None  # leader race in quorum mode: our candidate check
    retry_in: float | None = None  # run the next loop after this many seconds if sooner than loop_wait
    election: Tally | None = None  # leader race with votes: the tally of our last election


# An election that failed only because a promise or a voter's start-up quiet period was about to
# end is retried this soon, rather than a whole loop_wait later.
ELECTION_RETRY = 0.05


def fence_deadline(last_renew_sent: float | None, timing: Timing) -> float | None:
    """The instant the leader must have stopped accepting writes (invariant I1)."""
    if last_renew_sent is None:
        return None
    return last_renew_sent + timing.fence_after()


def failsafe_verdict(memory: Memory, timing: Timing, voting: Voting | None, me: str, now: float) -> KeepServing | None:
    """The failsafe verdict for the primary we are (None: lease-only mode, or not leading)."""
    if voting is None or memory.leader_term is None:
        return None
    return may_keep_serving(
        voting.promises,
        voting.members,
        now,
        timing,
        me=me,
        term=memory.leader_term,
        since_term=memory.since_term,
    )


def serving_deadline_at(memory: Memory, timing: Timing, voting: Voting | None, me: str, now: float) -> float | None:
    """The instant we must have stopped accepting writes: with votes, a majority of promises
    (renewed every loop, whether etcd is up or not); in lease-only mode, the lease (invariant I1)."""
    lease = fence_deadline(memory.last_renew_sent, timing)
    verdict = failsafe_verdict(memory, timing, voting, me, now)
    if verdict is None:
        return lease
    if verdict.deadline is None:
        window = first_promises_window(memory, timing)
        if window is not None and lease is not None:
            return min(lease, window)
    return serving_deadline(lease, verdict, require_majority=True)


def first_promises_window(memory: Memory, timing: Timing) -> float | None:
    """The end of a leader's first ttl, while the promises its first renewal asked for may still
    be on their way. Until then a leader that never held a majority serves on its etcd lease
    alone, which is safe: no other member is elected while its key lives, and the lease fences it
    before the key can expire. Without this, a bootstrap leader whose peers registered as voters
    while it ran initdb fenced itself on its first pass, before quorum commit had a record, and no
    member could ever promote (measured on Kubernetes). The window is a deadline, not a test of
    ``now``: once it passes without a majority the deadline is in the past and the guard fences
    between loops (a test of ``now`` turned into "no deadline" there, which the guard skips)."""
    return None if memory.leading_since is None else memory.leading_since + timing.ttl


def keep_serving(inp: Inputs, memory: Memory) -> KeepServing | None:
    return failsafe_verdict(memory, inp.timing, inp.voting, inp.me, inp.now)


def serving_deadline_of(inp: Inputs, memory: Memory) -> float | None:
    return serving_deadline_at(memory, inp.timing, inp.voting, inp.me, inp.now)


def _no_deadline_reason(inp: Inputs, memory: Memory) -> str:
    verdict = keep_serving(inp, memory)
    return "lease not renewed in time" if verdict is None else "no majority of promises"


def decide(inp: Inputs) -> Decision:
    memory = _remember_renewal(inp)
    inp = replace(inp, memory=memory)
    cluster = inp.cluster
    if cluster is None:
        return _without_dcs(inp)
    if cluster.initialize is None:
        return _uninitialized(inp)
    if cluster.initialize == "":
        return _wait(inp, "another member is bootstrapping the cluster", Role.UNINITIALIZED)
    if not inp.pg.data_initialized:
        return _empty_data_dir(inp, cluster)
    if inp.pg.system_id is not None and inp.pg.system_id != cluster.initialize:
        return _wait(
            inp,
            f"local system identifier {inp.pg.system_id} differs from the cluster's "
            f"{cluster.initialize}: refusing to touch this data directory",
            Role.STOPPED,
            alert="system identifier mismatch; reinitialize this member",
        )
    if not inp.pg.running:
        return _postgres_down(inp, cluster)
    if not inp.pg.accepting_connections or inp.pg.in_recovery is None:
        return _wait(inp, "postgres is starting up", Role.STOPPED)
    leader = cluster.leader
    if inp.command is not None:
        return _command(inp, cluster, inp.command)
    if leader is None:
        return _race(inp, cluster)
    if leader.name == inp.me:
        return _lead(inp, cluster)
    return _follow(inp, cluster, leader.name)


def _remember_renewal(inp: Inputs) -> Memory:
    """Our renewal counts only if the fresh snapshot still shows the leader key as ours."""
    m = inp.memory
    cluster = inp.cluster
    if cluster is None:
        return m
    leader = cluster.leader
    if cluster.leader is None:
        m = replace(m, leaderless_since=m.leaderless_since if m.leaderless_since is not None else inp.now)
    else:
        m = replace(m, leaderless_since=None)
    if (
        leader is None
        and inp.voting is not None
        and m.leader_term is not None
        and m.leader_term == cluster.term
        and _is_writable_primary(inp.pg)
    ):
        # Our key expired (etcd was away) and no newer term exists: we serve on our promises while
        # we run for the next term ourselves; the promises decide when we must stop.
        return m
    if leader is None or leader.name != inp.me:
        return replace(
            m, leader_term=None, last_renew_sent=None, pg_down_since=None, leading_since=None, since_term=None
        )
    renewed = inp.lease_renewed_at if inp.lease_renewed_at is not None else m.last_renew_sent
    since = m.leading_since if m.leading_since is not None else inp.now
    unbroken = (
        m.leader_term is not None and m.since_term is not None and cluster.term in (m.leader_term, m.leader_term + 1)
    )
    first = m.since_term if unbroken else cluster.term
    return replace(m, leader_term=cluster.term, last_renew_sent=renewed, leading_since=since, since_term=first)


def _wait(inp: Inputs, reason: str, role: Role, alert: str | None = None, memory: Memory | None = None) -> Decision:
    return Decision((), reason, role, memory or inp.memory, alert=alert)


def _observed_role(inp: Inputs) -> Role:
    pg = inp.pg
    if not pg.data_initialized:
        return Role.UNINITIALIZED
    if not pg.running:
        return Role.STOPPED
    if pg.in_recovery is False:
        return Role.LEADER if inp.memory.leader_term is not None else Role.DEMOTED
    return Role.STANDBY


def _is_writable_primary(pg: PostgresState) -> bool:
    return pg.running and pg.in_recovery is False


def _without_dcs(inp: Inputs) -> Decision:
    m = inp.memory
    deadline = serving_deadline_of(inp, m)
    if m.leader_term is None and _is_writable_primary(inp.pg):
        # An agent (re)started beside a running primary while etcd is away: it holds no lease and no
        # promise, so nothing stops another member from being elected; stop writes now.
        return Decision(
            (Fence("etcd unreachable and this agent holds no leadership for the running primary"),),
            "etcd unreachable: a writable primary we do not know we lead (agent restarted?): fencing",
            Role.DEMOTED,
            m,
            again=True,
        )
    if m.leader_term is not None and _is_writable_primary(inp.pg):
        verdict = keep_serving(inp, m)
        what = "the lease" if verdict is None else "the majority of promises"
        if deadline is None or inp.now >= deadline:
            why = verdict.reason if verdict is not None else f"the lease of term {m.leader_term} may have expired"
            return Decision(
                (Fence(f"etcd unreachable and {why}", "no_majority" if verdict is not None else None),),
                f"etcd unreachable: fencing, {what} ended {inp.now - (deadline or inp.now):.2f}s ago",
                Role.DEMOTED,
                replace(m, leader_term=None, last_renew_sent=None, since_term=None),
                again=True,
            )
        return _wait(
            inp,
            f"etcd unreachable: still leader of term {m.leader_term} on {what}, fencing in {deadline - inp.now:.2f}s",
            Role.LEADER,
        )
    return _wait(inp, "etcd unreachable: keeping the current state", _observed_role(inp))


def _uninitialized(inp: Inputs) -> Decision:
    if not inp.pg.data_initialized:
        return Decision(
            (Bootstrap(),),
            "cluster not initialized: racing to bootstrap",
            Role.UNINITIALIZED,
            inp.memory,
            again=True,
        )
    return _wait(
        inp,
        "etcd has no 'initialize' key but this member has a data directory: refusing to guess which "
        "data is authoritative",
        Role.STOPPED,
        alert="etcd lost the cluster's keys; restore etcd or reinitialize members",
    )


def _empty_data_dir(inp: Inputs, cluster: ClusterState) -> Decision:
    leader = cluster.leader
    if leader is None or leader.name == inp.me:
        return _wait(inp, "no data directory and no leader to clone from yet", Role.UNINITIALIZED)
    source = cluster.member(leader.name)
    if source is None or not source.conn_url:
        return _wait(inp, f"leader {leader.name} has not published its address yet", Role.UNINITIALIZED)
    return Decision(
        (Clone(leader.name),),
        f"empty data directory: cloning from leader {leader.name}",
        Role.UNINITIALIZED,
        inp.memory,
        again=True,
    )


def _postgres_down(inp: Inputs, cluster: ClusterState) -> Decision:
    m = inp.memory
    leader = cluster.leader
    if leader is not None and leader.name == inp.me:
        deadline = serving_deadline_of(inp, m)
        if deadline is None or inp.now >= deadline:
            return Decision(
                (ReleaseLeader(_no_deadline_reason(inp, m) + " while postgres was down"),),
                "no time left to restart as primary: releasing the leader key",
                Role.STOPPED,
                replace(m, leader_term=None, last_renew_sent=None, pg_down_since=None),
                again=True,
            )
        down_since = m.pg_down_since if m.pg_down_since is not None else inp.now
        if inp.now - down_since >= inp.primary_start_timeout:
            return Decision(
                (
                    ReleaseLeader(
                        f"postgres did not come back within primary_start_timeout ({inp.primary_start_timeout:g}s)"
                    ),
                ),
                f"postgres down for {inp.now - down_since:.1f}s: giving up the leader key of term {cluster.term}",
                Role.STOPPED,
                replace(m, leader_term=None, last_renew_sent=None, pg_down_since=None),
                again=True,
                alert="primary postgres failed to restart; leadership released",
            )
        return Decision(
            (StartPostgres(as_primary=True),),
            f"postgres is down while we lead term {cluster.term}: restarting it",
            Role.STOPPED,
            replace(m, pg_down_since=down_since),
            again=True,
        )
    if leader is not None:
        if inp.pg.was_primary:
            return Decision(
                (Rejoin(leader.name),),
                f"former primary rejoining leader {leader.name} (term {cluster.term}) via pg_rewind",
                Role.STOPPED,
                m,
                again=True,
            )
        return Decision(
            (StartPostgres(as_primary=False, upstream=leader.name),),
            f"starting as a standby of leader {leader.name}",
            Role.STOPPED,
            m,
            again=True,
        )
    # No leader: come up read-only; the race happens once postgres reports its position.
    return Decision(
        (StartPostgres(as_primary=False, upstream=None),),
        "no leader: starting read-only to join the leader race",
        Role.STOPPED,
        m,
        again=True,
    )


def _lead(inp: Inputs, cluster: ClusterState) -> Decision:
    m = replace(inp.memory, pg_down_since=None)
    pg = inp.pg
    if pg.in_recovery and inp.voting is not None:
        gate = _promotion_gate(inp, cluster, m)
        if gate is not None:
            return gate
    deadline = serving_deadline_of(inp, m)
    if deadline is None or inp.now >= deadline:
        verdict = keep_serving(inp, m)
        if verdict is not None:
            # Voters may elect someone else now: stop writes, and hand the key back so they can.
            return Decision(
                (
                    Fence(f"term {cluster.term}: {verdict.reason}", "no_majority"),
                    ReleaseLeader(f"fenced for lack of a majority of promises in term {cluster.term}"),
                ),
                "no majority of promises: fencing and releasing the leader key",
                Role.DEMOTED,
                replace(m, leader_term=None, last_renew_sent=None, since_term=None),
                again=True,
            )
        return Decision(
            (Fence(f"leader lease of term {cluster.term} not renewed before the fence deadline"),),
            "lease renewal too old: fencing",
            Role.DEMOTED,
            replace(m, leader_term=None, last_renew_sent=None),
            again=True,
        )
    if pg.in_recovery:
        promote: tuple[Action, ...] = (Promote(cluster.term),)
        if inp.sync.quorum:
            # Before the first write is possible: wait for the record's quorum (invariant I4).
            first = promotion_standbys(cluster.sync, inp.me, inp.sync.k, Durability(inp.sync.durability))
            promote = (SetSyncStandbys(first.render(), f"before promotion: {first} from the etcd record"), *promote)
        return Decision(
            promote,
            f"we hold the leader key for term {cluster.term}: promoting",
            Role.STANDBY,
            m,
            again=True,
        )
    others = tuple(x.name for x in cluster.members if x.name != inp.me and not x.witness)
    slots, seen = slot_members(others, m.slot_seen, inp.now, inp.member_slots_ttl)
    m = replace(m, slot_seen=seen)
    status = PublishStatus(cluster.term, pg.timeline or 0, pg.wal_lsn or 0, slots, inp.me)
    plan = sync_plan(inp, cluster)
    settled = any(v.term <= cluster.term for v in cluster.votes)
    gc: tuple[Action, ...] = (DeleteVotes(cluster.term),) if settled else ()
    steady = Decision(
        (status, *(plan.transitions if plan else ()), *gc),
        f"leader of term {cluster.term}, lease renewed",
        Role.LEADER,
        m,
        alert=plan.alert if plan else None,
        sync=plan,
    )
    req = cluster.switchover
    if req is None or req.failed:
        return steady
    if req.leader not in (None, inp.me) or req.candidate == inp.me:
        return replace(steady, actions=(status, ClearRequest(f"request done or void: {inp.me} leads", False)))
    if req.scheduled_at is not None and inp.wall < req.scheduled_at:
        return replace(
            steady,
            reason=f"{req.kind} to {req.candidate or 'the best replica'} scheduled "
            f"in {req.scheduled_at - inp.wall:.0f}s",
        )
    candidate, problem = switchover_candidate(req.candidate, cluster, inp.me, pg.timeline)
    if candidate is None:
        return replace(
            steady,
            actions=(status, ClearRequest(f"{req.kind} refused: {problem}", True)),
            reason=f"{req.kind} refused: {problem}",
        )
    return Decision(
        (HandOver(candidate, cluster.term, req.kind),),
        f"{req.kind} requested: handing term {cluster.term} over to {candidate}",
        Role.LEADER,
        m,
        again=True,
    )


def _promotion_gate(inp: Inputs, cluster: ClusterState, m: Memory) -> Decision | None:
    """Elected, not promoted yet: promote only once a majority of voters promised us (None: go on).

    With promises required to serve, a primary without them would fence at once; waiting costs one
    round trip to the voters, who voted for us a moment ago.
    """
    verdict = keep_serving(inp, m)
    if verdict is None or verdict.allowed:
        return None
    since = m.leading_since if m.leading_since is not None else inp.now
    if inp.now - since >= inp.timing.ttl:
        return Decision(
            (ReleaseLeader(f"no majority of promises within ttl after winning term {cluster.term}"),),
            f"elected for term {cluster.term} but {verdict.reason}: giving the key back",
            Role.STANDBY,
            replace(m, leader_term=None, last_renew_sent=None, since_term=None),
            again=True,
            alert="elected leader could not gather a majority of promises",
        )
    return Decision(
        (),
        f"won term {cluster.term}; promoting once a majority promised: {verdict.reason}",
        Role.STANDBY,
        m,
        retry_in=ELECTION_RETRY,
    )


def settle_seconds(timing: Timing) -> float:
    """After a promotion, standbys need a moment to re-point and stream: keep them in the quorum meanwhile."""
    return timing.ttl + 2 * timing.loop_wait


def sync_plan(inp: Inputs, cluster: ClusterState) -> SyncPlan | None:
    """The leader's quorum-commit transitions for this loop (None: nothing observed, nothing to do)."""
    obs = inp.sync_obs
    if obs is None:
        return None
    pg_now = parse_standby_names(obs.standby_names) or ASYNC  # unknown ('*'): as unsafe as asynchronous
    listed = pg_now.names
    active = healthy_standbys(obs, cluster.members, inp.me, listed, inp.maximum_lag_on_failover)
    since = inp.memory.leading_since
    if since is not None and inp.now - since < settle_seconds(inp.timing):
        members = {x.name for x in cluster.members if not x.witness and not x.nofailover and x.name != inp.me}
        active |= listed & members
    return resolve(
        me=inp.me,
        record=cluster.sync,
        pg=pg_now,
        caught_up=caught_up(obs, listed),
        active=active,
        wanted_k=inp.sync.k,
        durability=Durability(inp.sync.durability),
        mode_quorum=inp.sync.quorum,
    )


def switchover_candidate(
    wanted: str | None, cluster: ClusterState, me: str, timeline: int | None
) -> tuple[str | None, str]:
    """The member to hand over to: ``wanted`` if it is a healthy replica of ours, else the best one."""
    replicas = [
        m
        for m in cluster.members
        if m.name != me
        and not m.witness
        and m.role is Role.REPLICA
        and not m.nofailover
        and (timeline is None or m.timeline == timeline)
    ]
    if wanted is not None:
        member = cluster.member(wanted)
        if member is None:
            return None, f"candidate {wanted} is not a member of the cluster"
        if member not in replicas:
            return None, (
                f"candidate {wanted} is not a healthy streaming replica on our timeline "
                f"(role {member.role.value}, timeline {member.timeline}, nofailover {member.nofailover})"
            )
        return wanted, ""
    if not replicas:
        return None, "no healthy streaming replica to hand over to"
    best = min(replicas, key=lambda x: (-(x.best_lsn() or 0), x.name))  # most advanced; ties: smallest name
    return best.name, ""


def _command(inp: Inputs, cluster: ClusterState, command: str) -> Decision:
    leader = cluster.leader.name if cluster.leader else None
    if command == "restart":
        as_primary = leader == inp.me and inp.pg.in_recovery is False
        return Decision(
            (RestartPostgres(as_primary),),
            "restart requested by an operator",
            _observed_role(inp),
            inp.memory,
            again=True,
        )
    if command == "reinitialize":
        if leader is None or leader == inp.me:
            return _wait(
                inp, "reinitialize refused: it needs another member as leader to clone from", _observed_role(inp)
            )
        return Decision(
            (Reinitialize(leader),),
            f"reinitialize requested: re-cloning from {leader}",
            Role.STANDBY,
            inp.memory,
            again=True,
        )
    return _wait(inp, f"unknown operator command {command!r} ignored", _observed_role(inp))


def _follow(inp: Inputs, cluster: ClusterState, leader: str) -> Decision:
    pg = inp.pg
    if pg.in_recovery is False:
        return Decision(
            (Fence(f"{leader} holds the leader key for term {cluster.term}; we are a stale primary"),),
            f"demoting: {leader} leads term {cluster.term}",
            Role.DEMOTED,
            inp.memory,
            again=True,
        )
    if pg.upstream != leader:
        return Decision(
            (Follow(leader),),
            f"re-pointing replication from {pg.upstream} to leader {leader}",
            Role.STANDBY,
            inp.memory,
        )
    role = Role.REPLICA if pg.streaming else Role.STANDBY
    m = inp.memory
    info = cluster.member(leader)
    leader_tl = info.timeline if info is not None else None
    if pg.timeline is not None and leader_tl is not None and pg.timeline < leader_tl:
        # A standby re-pointed at a newer timeline switches to it within a second. One that still
        # has not after ttl holds WAL past the fork point: a former primary's unacknowledged tail
        # (fenced, then started read-only for the race) or a restart that lost that knowledge. Its
        # WAL receiver reconnects in a loop, so "streaming" flickers: only the timeline counts.
        # pg_rewind cuts the tail; it finds nothing to do when there is none.
        since = m.behind_timeline_since if m.behind_timeline_since is not None else inp.now
        waited = inp.now - since
        if waited >= inp.timing.ttl:
            return Decision(
                (Rejoin(leader),),
                f"standby on timeline {pg.timeline} has not followed {leader} onto timeline {leader_tl} for "
                f"{waited:.1f}s (its WAL diverged from the new timeline): rejoining via pg_rewind",
                Role.STOPPED,
                replace(m, behind_timeline_since=None),
                again=True,
            )
        m = replace(m, behind_timeline_since=since)
    elif m.behind_timeline_since is not None:
        m = replace(m, behind_timeline_since=None)
    return _wait(inp, f"replica of {leader} (term {cluster.term})", role, memory=m)


def _race(inp: Inputs, cluster: ClusterState) -> Decision:
    """No leader key: only the healthiest eligible member takes it (invariant I3)."""
    pg = inp.pg
    take = Decision(
        (AcquireLeader(cluster.term),),
        f"no leader: we are the healthiest eligible member, taking term {cluster.term + 1}",
        _observed_role(inp),
        inp.memory,
        again=True,
    )
    if _is_writable_primary(pg):
        # We lost the key while running as primary (deleted, or released): we are the most advanced.
        if inp.nofailover:
            return Decision(
                (Fence("no leader key and this member is nofailover"),),
                "primary without leader key: fencing (nofailover)",
                Role.DEMOTED,
                inp.memory,
                again=True,
            )
        if inp.voting is not None:
            m = inp.memory
            deadline = serving_deadline_of(inp, m)
            if m.leader_term is None or deadline is None or inp.now >= deadline:
                # Not leading a term we know of (agent restarted?), or our promises ran out: another
                # member may be elected any moment, so stop writes first and run as a standby.
                why = "no leadership known" if m.leader_term is None else "no majority of promises"
                return Decision(
                    (Fence(f"writable primary without the leader key and {why}", "no_majority"),),
                    f"primary without leader key and {why}: fencing before the election",
                    Role.DEMOTED,
                    replace(m, leader_term=None, last_renew_sent=None, since_term=None),
                    again=True,
                )
            return _elect(inp, cluster, take)
        return take
    req = cluster.switchover
    if req is not None and req.kind == "failover" and not req.failed and inp.wall - req.requested_at < REQUEST_TTL:
        if req.candidate != inp.me:
            return _wait(inp, f"manual failover to {req.candidate} requested: not racing", Role.STANDBY)
        if inp.nofailover:
            return _wait(
                inp,
                "manual failover to us requested, but this member is nofailover",
                Role.STANDBY,
                alert="manual failover candidate is tagged nofailover",
            )
        take = replace(take, reason=f"manual failover to us requested: taking term {cluster.term + 1}")
        return _elect(inp, cluster, take) if inp.voting is not None else take
    alive = [p.name for p in inp.peers if p.reachable and p.postgres_running and p.in_recovery is False]
    if alive:
        return _wait(inp, f"no leader key but {alive[0]} is still a running primary: not racing", Role.STANDBY)
    problems = ineligibility(inp.me, pg.timeline, pg.best_lsn(), inp.nofailover, inp, cluster)
    eligible_peers = [
        p
        for p in inp.peers
        if p.reachable
        and p.postgres_running
        and not ineligibility(p.name, p.timeline, p.lsn, p.nofailover, inp, cluster)
    ]
    if problems:
        alert = None
        if not eligible_peers:
            alert = "no member is eligible for failover: " + "; ".join(problems)
        return _wait(inp, "no leader, not eligible: " + "; ".join(problems), Role.STANDBY, alert=alert)
    verdict = None
    if inp.sync.quorum:
        heard = {p.name: _freshest(p) for p in inp.peers}
        last = cluster.status.leader if cluster.status is not None else None
        verdict = check_candidate(
            cluster.sync, inp.me, pg.best_lsn(), heard, Durability(inp.sync.durability), last_leader=last
        )
        if not verdict.eligible:
            refused = _wait(inp, "no leader, not promoting: " + verdict.reason, Role.STANDBY, alert=verdict.alert)
            return replace(refused, quorum=verdict)
        take = replace(take, quorum=verdict, alert=verdict.alert)
    mine = (pg.best_lsn() or 0, inp.me)
    for p in eligible_peers:
        theirs = (p.lsn or 0, p.name)
        if theirs[0] > mine[0] or (theirs[0] == mine[0] and theirs[1] < mine[1]):
            waiting = _wait(
                inp,
                f"no leader: {p.name} is ahead or ties with a smaller name "
                f"({p.lsn} vs our {mine[0]}), letting it take the key",
                Role.STANDBY,
            )
            return _yield_term(inp, cluster, p.name, waiting)
    return _elect(inp, cluster, take) if inp.voting is not None else take


def _yield_term(inp: Inputs, cluster: ClusterState, better: str, waiting: Decision) -> Decision:
    """We asked for the next term's votes and voted for ourselves; now ``better`` outranks us.

    Our vote of that term can never go to ``better`` (one vote per voter per term), so if the
    others split the same way nobody wins until the split is closed after ttl -- measured: 3 s
    lost when a leader stopped gracefully and its two replicas, woken by the same watch event,
    each voted for itself before seeing the other. Close the term at once instead (compare-and-
    swap on the term, only while no leader key exists): ``better`` collects fresh votes in the
    next one, ours among them. A term ``better`` had already won costs it one round.
    """
    voting = inp.voting
    e = voting.election if voting is not None else None
    if e is None or e.term != cluster.term + 1:
        return waiting
    if not any(v.voter == inp.me and v.candidate == inp.me and v.term == e.term for v, _ in e.votes):
        return waiting
    return replace(
        waiting,
        actions=(AdvanceTerm(cluster.term),),
        reason=f"{waiting.reason}; we voted for ourselves in term {e.term}, so {better} cannot have "
        f"our vote in it: closing term {e.term} so that {better} is elected in term {e.term + 1}",
        again=True,
    )


def _elect(inp: Inputs, cluster: ClusterState, take: Decision) -> Decision:
    """We would take the key: with votes, first win a majority of them for the next term.

    ``take`` is the lease-only decision (its reason and quorum verdict are kept). The executor
    gathers the votes (``RequestVotes``); the next loop tallies the keys it read back and takes the
    key in one transaction that checks the term, the key's absence and every counted vote.
    """
    voting = inp.voting
    assert voting is not None
    want = cluster.term + 1
    e = voting.election
    if e is not None and e.term == want:
        position = (inp.pg.timeline, lsn) if inp.pg.timeline is not None and (lsn := inp.pg.best_lsn()) else None
        result = tally((v for v, _ in e.votes), voting.members, want, inp.me, position)
        if result.may_promote:
            revisions = tuple((v.voter, rev) for v, rev in e.votes if v.voter in result.granted)
            return replace(
                take,
                actions=(AcquireLeader(cluster.term, revisions),),
                reason=f"{take.reason}; {result.reason}",
                election=result,
            )
        started = e.started if e.started is not None else e.at
        if result.others and not result.majority and inp.now - started >= inp.timing.ttl:
            # Votes of this term went to other candidates and nobody took the key within ttl: the
            # term may be split for good (one vote per voter per term). Like Raft's election
            # timeout, move on: bumping etcd's term (only while no leader key exists, by
            # compare-and-swap) opens term want + 1 with fresh votes. Promises are untouched: a
            # voter that refused because it promised a primary left no vote, so it is not in
            # ``others`` and never triggers this.
            return replace(
                take,
                actions=(AdvanceTerm(cluster.term),),
                reason=f"election for term {want} is split and nobody won it in {inp.now - started:.1f}s "
                f"({result.reason}): closing it so that term {want + 1} starts with fresh votes",
                role=Role.STANDBY if not _is_writable_primary(inp.pg) else take.role,
                again=True,
                election=result,
            )
        # A promise about to expire is worth a quick retry; one the primary keeps renewing is not.
        # Votes gone to another candidate too: it may close the term for us (``_yield_term``).
        quick = ELECTION_RETRY * 2 ** min(e.attempt - 1, 16)
        retry = min(quick, inp.timing.loop_wait) if e.transient or result.others else inp.timing.loop_wait
        if inp.now - e.at < retry:
            return replace(
                take,
                actions=(),
                reason=f"election for term {want}: {result.reason}",
                role=Role.STANDBY if not _is_writable_primary(inp.pg) else take.role,
                again=False,
                retry_in=retry - (inp.now - e.at),
                election=result,
            )
    return replace(
        take,
        actions=(RequestVotes(want),),
        reason=f"{take.reason}: asking the {len(voting.members)} voting members for their votes",
    )


def _freshest(p: PeerStatus) -> int | None:
    """A peer's WAL position for the quorum check: its own postgres's answer if we got one."""
    known = [x for x in (p.lsn if p.reachable else None, p.direct_lsn) if x is not None]
    return max(known) if known else None


def slot_members(
    current: tuple[str, ...], seen: tuple[tuple[str, float], ...], now: float, ttl: float
) -> tuple[tuple[str, ...], tuple[tuple[str, float], ...]]:
    """The members the leader keeps slots for: present ones, and departed ones seen within ``ttl``."""
    last = {name: at for name, at in seen if now - at <= ttl}
    last.update({name: now for name in current})
    kept = tuple(sorted(last.items()))
    return tuple(name for name, _ in kept), kept


def ineligibility(
    name: str, timeline: int | None, lsn: int | None, nofailover: bool, inp: Inputs, cluster: ClusterState
) -> list[str]:
    """Why ``name`` may not be promoted (empty list: eligible)."""
    problems: list[str] = []
    if nofailover:
        problems.append(f"{name} is tagged nofailover")
    newest_tl = max(
        [p.timeline or 0 for p in inp.peers if p.reachable]
        + [inp.pg.timeline or 0]
        + [cluster.status.timeline if cluster.status else 0]
    )
    if timeline is None or timeline < newest_tl:
        problems.append(f"{name} is on timeline {timeline}, the newest is {newest_tl}")
    if lsn is None:
        problems.append(f"{name} reported no WAL position")
    elif cluster.status is not None and cluster.status.wal_lsn - lsn > inp.maximum_lag_on_failover:
        problems.append(
            f"{name} is {cluster.status.wal_lsn - lsn} bytes behind the last leader position "
            f"(maximum_lag_on_failover {inp.maximum_lag_on_failover})"
        )
    return problems


def guard_must_fence(now: float, memory: Memory, timing: Timing, voting: Voting | None = None, me: str = "") -> bool:
    """The fence guard's rule, checked between loops: a leader past its deadline stops writes now.

    With ``voting`` the deadline is the majority of promises' (``serving_deadline_at``). No deadline
    at all never fences here (an elected standby gathering promises): the loop's decision handles it.
    """
    deadline = serving_deadline_at(memory, timing, voting, me, now)
    return memory.leader_term is not None and deadline is not None and now >= deadline
