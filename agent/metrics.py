"""Prometheus metrics of one agent (invariant I8), served by the REST API at ``GET /metrics``.

Every series is named ``pgquorum_*`` and carries the labels ``cluster`` and ``member``. The metrics
live in the agent's own ``CollectorRegistry`` (never the process-global one), so two agents in one
test process do not collide.

* State gauges (role, term, LSNs, lag, lease, ...) are a pure mapping of the HA loop's last
  snapshot: ``snapshot()`` turns a ``LoopView`` into a ``Snapshot``; a collector turns the latest
  ``Snapshot`` into samples at scrape time. Values that are unknown (no timeline yet, no leader to
  measure lag against) are left out rather than exported as a made-up number. Ages and the lease
  time left are computed at scrape time, so they keep moving when the loop is stuck.
* Counters and histograms (fencing events, STONITH results, failovers, switchovers, failover phase
  durations, loop duration) are ordinary prometheus-client objects; their label values are from
  small fixed sets, never free text.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.process_collector import ProcessCollector

from pgquorum.agent.config import Timing
from pgquorum.agent.ha.decide import Memory, fence_deadline
from pgquorum.agent.ha.view import LoopView, view_role
from pgquorum.agent.model import ClusterState, Role
from pgquorum.agent.quorum.sync import parse_standby_names

# Low-cardinality reasons for ``pgquorum_fencing_events_total{reason}``.
FENCE_KINDS = ("dcs_unreachable", "lease_expired", "other_leader", "no_leader_key", "no_majority", "guard", "other")
FAILOVER_PHASES = ("detection", "election", "promotion")
STONITH_OUTCOMES = ("success", "failure", "timeout", "skipped")
# ``pgquorum_quorum_answers_total{kind, outcome, reason}``: reason is a RefusalCode value or "granted".
ANSWER_KINDS = ("vote", "promise")


@dataclass(frozen=True)
class FailsafeState:
    """The primary's failsafe right now (invariant I5), read at scrape time."""

    voting_members: int
    promises_held: int  # voters whose promise to us is unexpired (ourselves included)
    majority: bool
    deadline: float | None  # monotonic instant the majority of promises ends (None: never held)


LOOP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
FAILOVER_BUCKETS = (
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    1.5,
    2.0,
    3.0,
    4.0,
    5.0,
    7.5,
    10.0,
    15.0,
    20.0,
    30.0,
    60.0,
)

_BASE_LABELS = ("cluster", "member")


@dataclass(frozen=True)
class Snapshot:
    """The gauge values of one loop. Instants are on the agent's monotonic clock."""

    role: Role
    term: int | None
    is_leader: bool
    lease_deadline: float | None  # our fence deadline while we hold the leader key, else None
    timeline: int | None
    received_lsn: int | None
    replayed_lsn: int | None
    wal_lsn: int | None
    lag_bytes: int | None
    lag_seconds: float | None
    postgres_up: bool
    dcs_reachable: bool
    alert: bool
    last_run_at: float
    last_dcs_contact_at: float | None
    sync_quorum: int | None = None  # k of the etcd sync record (None: no record)
    sync_voters: tuple[str, ...] = ()  # voters of the etcd sync record
    sync_postgres_k: int | None = None  # leader: how many standbys postgres waits for (0: asynchronous)


def leader_lsn(cluster: ClusterState | None) -> int | None:
    """The leader's last published WAL position: its member key, or the ``status`` key of this term."""
    if cluster is None or cluster.leader is None:
        return None
    candidates: list[int] = []
    member = cluster.member(cluster.leader.name)
    published = member.best_lsn() if member is not None else None
    if published is not None:
        candidates.append(published)
    if cluster.status is not None and cluster.status.term == cluster.term:
        candidates.append(cluster.status.wal_lsn)
    return max(candidates) if candidates else None


def snapshot(
    view: LoopView,
    me: str,
    timing: Timing,
    now: float,
    memory: Memory | None = None,
    last_dcs_contact_at: float | None = None,
) -> Snapshot:
    """Pure: the gauge values for the loop that produced ``view``.

    ``memory`` is the agent's memory after the loop's actions (it can differ from the decision's,
    e.g. right after taking the leader key); it defaults to the decision's.
    """
    if memory is None:
        memory = view.decision.memory if view.decision is not None else Memory()
    cluster = view.cluster
    pg = view.pg
    role = view_role(view, memory, me)
    term = cluster.term if cluster is not None else memory.leader_term
    deadline = fence_deadline(memory.last_renew_sent, timing) if memory.leader_term is not None else None
    lag_bytes: int | None = None
    lag_seconds: float | None = None
    if role is Role.LEADER:
        lag_bytes, lag_seconds = 0, 0.0
    elif pg.running and pg.in_recovery:
        upstream = leader_lsn(cluster)
        ours = pg.best_lsn()
        if upstream is not None and ours is not None:
            lag_bytes = max(0, upstream - ours)
        lag_seconds = pg.replay_lag_seconds
    record = cluster.sync if cluster is not None else None
    postgres_k: int | None = None
    if view.sync_obs is not None:
        parsed = parse_standby_names(view.sync_obs.standby_names)
        postgres_k = parsed.k if parsed is not None else None
    return Snapshot(
        role=role,
        term=term,
        is_leader=role is Role.LEADER,
        lease_deadline=deadline,
        timeline=pg.timeline,
        received_lsn=pg.received_lsn,
        replayed_lsn=pg.replayed_lsn,
        wal_lsn=pg.wal_lsn,
        lag_bytes=lag_bytes,
        lag_seconds=lag_seconds,
        postgres_up=pg.running,
        dcs_reachable=view.dcs_ok,
        alert=view.decision is not None and view.decision.alert is not None,
        last_run_at=now,
        last_dcs_contact_at=now if view.dcs_ok else last_dcs_contact_at,
        sync_quorum=record.k if record is not None else None,
        sync_voters=record.voters if record is not None else (),
        sync_postgres_k=postgres_k,
    )


def fence_kind(cluster: ClusterState | None, me: str) -> str:
    """Why the loop fenced, as a label value (the free-text reason goes to the log only)."""
    if cluster is None:
        return "dcs_unreachable"
    if cluster.leader is None:
        return "no_leader_key"
    if cluster.leader.name != me:
        return "other_leader"
    return "lease_expired"


class _SnapshotCollector:
    """Turns the latest ``Snapshot`` into gauge samples at scrape time."""

    def __init__(self, owner: AgentMetrics):
        self._owner = owner

    def collect(self) -> Iterator[Metric]:
        owner = self._owner
        base = [owner.cluster, owner.member]
        now = owner.clock()
        snap = owner.last_snapshot

        def gauge(name: str, doc: str, value: float | None) -> Iterator[Metric]:
            if value is None:
                return
            family = GaugeMetricFamily(name, doc, labels=_BASE_LABELS)
            family.add_metric(base, float(value))
            yield family

        last_run = snap.last_run_at if snap is not None else owner.started_at
        yield from gauge(
            "pgquorum_ha_loop_last_run_age_seconds",
            "Seconds since the HA loop last completed (since agent start before the first loop).",
            max(0.0, now - last_run),
        )
        if snap is None:
            return
        role = GaugeMetricFamily(
            "pgquorum_role", "1 for this member's current role, 0 for the others.", labels=(*_BASE_LABELS, "role")
        )
        for r in Role:
            role.add_metric([*base, r.value], 1.0 if r is snap.role else 0.0)
        yield role
        yield from gauge("pgquorum_term", "The cluster term (fencing token) this member last saw.", snap.term)
        yield from gauge("pgquorum_is_leader", "1 while this member is the writable leader.", float(snap.is_leader))
        lease = 0.0 if snap.lease_deadline is None else max(0.0, snap.lease_deadline - now)
        yield from gauge(
            "pgquorum_lease_seconds_remaining",
            "Seconds until our own fence deadline (last renewal sent + ttl - safety_margin); "
            "0 when this member does not hold the leader key.",
            lease,
        )
        yield from gauge("pgquorum_timeline", "PostgreSQL timeline of the local instance.", snap.timeline)
        yield from gauge(
            "pgquorum_received_lsn_bytes", "Standby: last WAL position received (bytes).", snap.received_lsn
        )
        yield from gauge(
            "pgquorum_replayed_lsn_bytes", "Standby: last WAL position replayed (bytes).", snap.replayed_lsn
        )
        yield from gauge("pgquorum_wal_lsn_bytes", "Primary: current WAL flush position (bytes).", snap.wal_lsn)
        yield from gauge(
            "pgquorum_replication_lag_bytes",
            "Leader's last published WAL position minus ours (0 on the leader).",
            snap.lag_bytes,
        )
        yield from gauge(
            "pgquorum_replication_lag_seconds",
            "Replication lag in seconds (0 on the leader and on a caught-up standby; absent when unknown).",
            snap.lag_seconds,
        )
        yield from gauge("pgquorum_postgres_up", "1 while the local PostgreSQL runs.", float(snap.postgres_up))
        yield from gauge(
            "pgquorum_dcs_reachable", "1 if the last HA loop read the cluster from etcd.", float(snap.dcs_reachable)
        )
        yield from gauge(
            "pgquorum_dcs_last_contact_age_seconds",
            "Seconds since the HA loop last read the cluster from etcd.",
            None if snap.last_dcs_contact_at is None else max(0.0, now - snap.last_dcs_contact_at),
        )
        yield from gauge("pgquorum_alert", "1 while the HA decision raises an alert (see the log).", float(snap.alert))
        yield from gauge(
            "pgquorum_sync_quorum",
            "Quorum commit: k of the etcd sync record (a failover reads n - k + 1 of its n voters); "
            "0 when the record promises nothing; absent without a record.",
            snap.sync_quorum,
        )
        if snap.sync_quorum is not None:
            voters = len(snap.sync_voters)
            yield from gauge("pgquorum_sync_voters", "Quorum commit: voters in the etcd sync record.", voters)
            voter = GaugeMetricFamily(
                "pgquorum_sync_voter",
                "Quorum commit: 1 for each voter of the etcd sync record.",
                labels=(*_BASE_LABELS, "voter"),
            )
            for name in snap.sync_voters:
                voter.add_metric([*base, name], 1.0)
            yield voter
        failsafe = owner.failsafe() if owner.failsafe is not None else None
        if failsafe is not None:
            yield from gauge(
                "pgquorum_promise_majority",
                "Leader: 1 while a majority of voting members (itself included) holds an unexpired promise "
                "not to vote for anyone else (invariant I5); 0: it must stop writes.",
                float(failsafe.majority),
            )
            yield from gauge(
                "pgquorum_promises_held",
                "Leader: voting members bound to it by an unexpired promise (itself included).",
                failsafe.promises_held,
            )
            yield from gauge(
                "pgquorum_promise_seconds_remaining",
                "Leader: seconds until its majority of promises ends unless renewed (0 without a majority).",
                0.0 if failsafe.deadline is None else max(0.0, min(failsafe.deadline - now, 1e9)),
            )
        if owner.voting_members is not None:
            yield from gauge(
                "pgquorum_voting_members",
                "Voting members (data members and witnesses) registered in etcd.",
                owner.voting_members(),
            )
        yield from gauge(
            "pgquorum_sync_postgres_k",
            "Leader: standbys postgres waits for before acknowledging a commit (ANY k); 0 = asynchronous.",
            snap.sync_postgres_k,
        )


class _LabelledProcessCollector:
    """prometheus-client's process metrics (RSS, CPU, fds) as ``pgquorum_process_*`` with our labels."""

    def __init__(self, labels: Mapping[str, str]):
        self._inner = ProcessCollector(namespace="pgquorum", registry=None)
        self._labels = dict(labels)

    def collect(self) -> Iterator[Metric]:
        for family in self._inner.collect():
            family.samples = [s._replace(labels={**s.labels, **self._labels}) for s in family.samples]
            yield family


class AgentMetrics:
    """All metrics of one agent, in a registry of its own."""

    def __init__(
        self,
        member: str,
        cluster: str,
        timing: Timing | None = None,
        clock: Callable[[], float] = time.monotonic,
        stonith_hooks: Sequence[str] = (),
    ):
        """``stonith_hooks``: the configured hooks' names, whose result counters start at 0 (a
        counter that appears only on its first increment has no rate until its second)."""
        self.member = member
        self.cluster = cluster
        self.timing = timing or Timing()
        self.clock = clock  # the HA loop's monotonic clock: snapshot instants are on it
        self.started_at = clock()
        self.last_snapshot: Snapshot | None = None
        # ``*_created`` series double the series count and say nothing here (process-wide switch).
        disable_created_metrics()  # type: ignore[no-untyped-call]
        self.registry = CollectorRegistry()
        reg = self.registry
        self._loop_duration = Histogram(
            "pgquorum_ha_loop_duration_seconds",
            "Duration of one HA loop (lease renewal, etcd read, decision, actions, publish).",
            _BASE_LABELS,
            buckets=LOOP_BUCKETS,
            registry=reg,
        ).labels(cluster, member)
        self._fences = Counter(
            "pgquorum_fencing_events",
            "Times this agent fenced its postgres (stopped accepting writes), by reason.",
            (*_BASE_LABELS, "reason"),
            registry=reg,
        )
        for kind in FENCE_KINDS:
            self._fences.labels(cluster, member, kind)
        self._stonith = Counter(
            "pgquorum_stonith_results",
            "STONITH hook runs before a promotion, by hook and outcome.",
            (*_BASE_LABELS, "hook", "outcome"),
            registry=reg,
        )
        for hook in stonith_hooks:
            for outcome in STONITH_OUTCOMES:
                self._stonith.labels(cluster, member, hook, outcome)
        self._failovers = Counter(
            "pgquorum_failovers", "Promotions of this member after a failover.", _BASE_LABELS, registry=reg
        ).labels(cluster, member)
        self._switchovers = Counter(
            "pgquorum_switchovers", "Planned switchovers this member took part in.", _BASE_LABELS, registry=reg
        ).labels(cluster, member)
        self._failover_phases = Histogram(
            "pgquorum_failover_duration_seconds",
            "Failover duration by phase: detection (leader lost -> noticed), election (no leader -> key "
            "taken), promotion (key taken -> writable).",
            (*_BASE_LABELS, "phase"),
            buckets=FAILOVER_BUCKETS,
            registry=reg,
        )
        for phase in FAILOVER_PHASES:
            self._failover_phases.labels(cluster, member, phase)
        self._quorum_refused = Counter(
            "pgquorum_quorum_promotion_refused",
            "Leaderless episodes in which this member refused to promote itself because it could not prove "
            "it holds every acknowledged commit (quorum commit, invariant I4).",
            _BASE_LABELS,
            registry=reg,
        ).labels(cluster, member)
        self._quorum_unproven = Counter(
            "pgquorum_quorum_unproven_promotions",
            "Times this member took the leader key without a proven quorum (durability preferred): "
            "acknowledged writes may have been lost.",
            _BASE_LABELS,
            registry=reg,
        ).labels(cluster, member)
        self._answers = Counter(
            "pgquorum_quorum_answers",
            "Answers this member gave as a voter: votes (POST /vote) and failsafe promises (POST /promise), "
            "granted or refused, with the refusal code as reason.",
            (*_BASE_LABELS, "kind", "outcome", "reason"),
            registry=reg,
        )
        for kind in ANSWER_KINDS:
            self._answers.labels(cluster, member, kind, "granted", "granted")
        self._elections_won = Counter(
            "pgquorum_elections_won",
            "Leader keys this member took after winning a majority of votes (invariant I5).",
            _BASE_LABELS,
            registry=reg,
        ).labels(cluster, member)
        self.failsafe: Callable[[], FailsafeState | None] | None = None  # set by the loop (votes on)
        self.voting_members: Callable[[], int] | None = None
        reg.register(_SnapshotCollector(self))
        reg.register(_LabelledProcessCollector({"cluster": cluster, "member": member}))

    # -- called by the HA loop -------------------------------------------------------------
    def observe_loop(self, view: LoopView, duration: float, now: float, memory: Memory | None = None) -> None:
        """Record one completed loop: its duration and the gauge values of its snapshot."""
        previous = self.last_snapshot
        self.last_snapshot = snapshot(
            view,
            self.member,
            self.timing,
            now,
            memory=memory,
            last_dcs_contact_at=previous.last_dcs_contact_at if previous is not None else None,
        )
        self._loop_duration.observe(max(0.0, duration))

    def fence_kind(self, cluster: ClusterState | None) -> str:
        return fence_kind(cluster, self.member)

    def count_fence(self, reason_kind: str) -> None:
        self._fences.labels(self.cluster, self.member, reason_kind if reason_kind in FENCE_KINDS else "other").inc()

    def count_stonith(self, hook: str, outcome: str) -> None:
        """``hook``: the configured hook's name (a small fixed set); ``outcome``: one of STONITH_OUTCOMES."""
        self._stonith.labels(
            self.cluster, self.member, hook, outcome if outcome in STONITH_OUTCOMES else "failure"
        ).inc()

    def observe_failover(self, durations: Mapping[str, float]) -> None:
        """One failover promotion of this member, with the phases it measured (seconds)."""
        self._failovers.inc()
        for phase, seconds in durations.items():
            if phase in FAILOVER_PHASES:
                self._failover_phases.labels(self.cluster, self.member, phase).observe(max(0.0, seconds))

    def count_answer(self, kind: str, granted: bool, code: str | None) -> None:
        """A vote or promise this member answered as a voter (``code``: the refusal's)."""
        outcome = "granted" if granted else "refused"
        self._answers.labels(self.cluster, self.member, kind, outcome, code or "granted").inc()

    def count_election_won(self) -> None:
        self._elections_won.inc()

    def count_quorum_refusal(self) -> None:
        self._quorum_refused.inc()

    def count_unproven_promotion(self) -> None:
        self._quorum_unproven.inc()

    def count_switchover(self) -> None:
        self._switchovers.inc()

    def observe_promotion(self, reason: str, durations: Mapping[str, float]) -> None:
        """This member was promoted: a planned ``switchover`` is counted as such, anything else is a failover."""
        if reason == "switchover":
            self.count_switchover()
        else:
            self.observe_failover(durations)

    # -- served by the REST API -------------------------------------------------------------
    def render(self) -> tuple[bytes, str]:
        """The exposition text and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
