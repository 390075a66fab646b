"""Health answers as pure functions of one ``Snapshot`` (the HA loop's last ``LoopView`` + a few reads).

Nothing here does I/O: a probe never waits for etcd or postgres. The snapshot is at most one loop
old (``loop_wait`` plus the loop's own bounded calls); ``lease_valid`` is read live from the fence
guard, so ``/primary`` turns 503 at the fence deadline even if the loop is stuck.

Lag (``/replica?lag=``, ``/read-only?lag=``):

* bytes: the leader's last published WAL position (its member key / ``status`` key) minus the WAL
  this replica has received -- the same measure as ``maximum_lag_on_failover`` and Patroni's;
* seconds: how long ago the leader was first seen past the WAL this replica has *replayed*
  (``LagTracker``: a small history of the leader's positions, one sample per loop). An idle leader
  therefore means 0 s, not a growing "time since the last commit". Resolution is about one
  ``loop_wait``; a replica behind since before the history began reports a lower bound.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass
from typing import Any

from pgquorum.agent.api.validate import LagLimit
from pgquorum.agent.config import Timing
from pgquorum.agent.ha.view import LoopView
from pgquorum.agent.model import ClusterState, Role, lsn_to_str


@dataclass(frozen=True)
class Snapshot:
    """Everything a health answer depends on, read once per request."""

    me: str
    view: LoopView
    role: Role
    lease_valid: bool
    now: float  # the loop clock's monotonic time when the request was served
    timing: Timing
    nofailover: bool
    leader_term: int | None  # the term we lead (None: not the leader)
    busy_until: float | None = None  # optional: the loop runs a long action bounded by this deadline


@dataclass(frozen=True)
class Lag:
    leader_lsn: int | None  # the leader's last published position
    received_bytes: int | None  # WAL the leader has and we have not received
    replayed_bytes: int | None  # WAL the leader has and we have not replayed
    seconds: float | None  # age of the oldest WAL we have not replayed (see LagTracker)
    seconds_lower_bound: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "leader_lsn": self.leader_lsn,
            "bytes": self.received_bytes,
            "replay_bytes": self.replayed_bytes,
            "seconds": None if self.seconds is None else round(self.seconds, 3),
            "seconds_is_lower_bound": self.seconds_lower_bound,
        }


NO_LAG = Lag(None, None, None, None)


@dataclass(frozen=True)
class Check:
    ok: bool
    reason: str


def leader_position(cluster: ClusterState | None) -> int | None:
    """The leader's newest published WAL position in this term (member key or status key)."""
    if cluster is None or cluster.leader is None:
        return None
    positions = []
    member = cluster.member(cluster.leader.name)
    if member is not None and member.wal_lsn is not None:
        positions.append(member.wal_lsn)
    if cluster.status is not None and cluster.status.term == cluster.term:
        positions.append(cluster.status.wal_lsn)
    return max(positions) if positions else None


class LagTracker:
    """When the leader was first seen at each WAL position: answers "how old is my replay position".

    Fed with every new ``LoopView`` (one per loop); keeps only increasing positions of the current
    leader and term, at most ``maxlen`` of them (10 minutes at one loop a second while writing).
    """

    def __init__(self, maxlen: int = 600):
        self._lock = threading.Lock()
        self._samples: deque[tuple[float, int]] = deque(maxlen=maxlen)
        self._epoch: tuple[str, int] | None = None
        self._seen_at: float | None = None
        self._truncated = False

    def observe(self, view: LoopView) -> None:
        cluster = view.cluster
        with self._lock:
            if view.last_loop_at == self._seen_at:
                return
            self._seen_at = view.last_loop_at
            position = leader_position(cluster)
            if cluster is None or cluster.leader is None or position is None:
                return
            epoch = (cluster.leader.name, cluster.term)
            if epoch != self._epoch:
                self._samples.clear()
                self._epoch = epoch
                self._truncated = False
            if self._samples and position <= self._samples[-1][1]:
                return
            if len(self._samples) == self._samples.maxlen:
                self._truncated = True
            self._samples.append((view.last_loop_at, position))

    def seconds_behind(self, position: int | None, now: float) -> tuple[float | None, bool]:
        """(seconds, is_lower_bound) for a replica at ``position``; (None, False) when unknown."""
        with self._lock:
            if position is None or not self._samples:
                return None, False
            if position >= self._samples[-1][1]:
                return 0.0, False
            for index, (seen, leader_at) in enumerate(self._samples):
                if leader_at > position:
                    # Before the first sample we do not know since when the leader was past us.
                    lower_bound = index == 0
                    return max(0.0, now - seen), lower_bound
        return None, False  # pragma: no cover - the loop always returns


def lag_of(s: Snapshot, tracker: LagTracker) -> Lag:
    pg = s.view.pg
    if pg.in_recovery is not True:
        return NO_LAG
    leader = leader_position(s.view.cluster)
    received = pg.best_lsn()
    replayed = pg.replayed_lsn if pg.replayed_lsn is not None else received
    seconds, lower = tracker.seconds_behind(replayed, s.now)
    return Lag(
        leader_lsn=leader,
        received_bytes=None if leader is None or received is None else max(0, leader - received),
        replayed_bytes=None if leader is None or replayed is None else max(0, leader - replayed),
        seconds=seconds,
        seconds_lower_bound=lower,
    )


def stalled_after(timing: Timing) -> float:
    """Seconds without a completed loop after which ``/liveness`` fails.

    One loop sleeps ``loop_wait`` and spends at most about ``2 * retry_timeout`` in etcd calls when
    etcd is unreachable (lease renewal, cluster read: one timeout each); ``ttl`` more is slack for
    the postgres probe and executed actions. At the defaults: 1 + 2 + 3 = 6 s.
    """
    return timing.loop_wait + 2 * timing.retry_timeout + timing.ttl


# -- the checks ------------------------------------------------------------------------------------


def check_primary(s: Snapshot) -> Check:
    pg = s.view.pg
    cluster = s.view.cluster
    if s.role is not Role.LEADER:
        return Check(False, f"not the writable leader (role {s.role.value})")
    if not pg.accepting_connections:
        return Check(False, "postgres is not accepting connections")
    if cluster is not None and (cluster.leader is None or cluster.leader.name != s.me):
        return Check(False, "the leader key in etcd is not ours")
    if not s.lease_valid:
        return Check(False, "our lease is past its fence deadline (etcd not renewing): writes must stop")
    return Check(True, f"writable leader of term {s.leader_term}")


def check_lag(s: Snapshot, lag: Lag, limit: LagLimit | None) -> Check:
    if limit is None:
        return Check(True, "no lag limit asked")
    if limit.max_bytes is not None:
        if lag.received_bytes is None:
            return Check(False, f"lag unknown (no leader position to compare with); limit {limit.text}")
        if lag.received_bytes > limit.max_bytes:
            return Check(False, f"lag {lag.received_bytes} bytes is above {limit.text}")
        return Check(True, f"lag {lag.received_bytes} bytes is within {limit.text}")
    if lag.seconds is None:
        return Check(False, f"lag unknown (no leader position seen yet); limit {limit.text}")
    if limit.max_seconds is not None and lag.seconds > limit.max_seconds:
        return Check(False, f"replay lag {lag.seconds:.3f}s is above {limit.text}")
    return Check(True, f"replay lag {lag.seconds:.3f}s is within {limit.text}")


def check_replica(s: Snapshot, lag: Lag, limit: LagLimit | None) -> Check:
    pg = s.view.pg
    if s.role is not Role.REPLICA:
        return Check(False, f"not a replica streaming from the leader (role {s.role.value})")
    if not pg.accepting_connections:
        return Check(False, "postgres is not accepting connections")
    return check_lag(s, lag, limit)


def check_read_only(s: Snapshot, lag: Lag, limit: LagLimit | None) -> Check:
    pg = s.view.pg
    if check_primary(s).ok:
        return Check(True, "writable leader (accepts reads)")
    if not (pg.running and pg.accepting_connections):
        return Check(False, "postgres is not accepting connections")
    if pg.in_recovery is not True:
        return Check(False, f"a primary without a valid leader lease (role {s.role.value}): not serving reads")
    return check_lag(s, lag, limit)


def check_health(s: Snapshot) -> Check:
    pg = s.view.pg
    if s.role is Role.WITNESS:
        return check_liveness(s)  # no postgres: healthy while its loop runs
    if pg.running:
        return Check(True, "postgres is running")
    return Check(False, f"postgres is not running (role {s.role.value})")


def check_liveness(s: Snapshot) -> Check:
    bound = stalled_after(s.timing)
    age = s.now - s.view.last_loop_at
    if age <= bound:
        return Check(True, f"last HA loop {age:.1f}s ago (limit {bound:g}s)")
    if s.busy_until is not None and s.now <= s.busy_until + bound:
        return Check(True, f"HA loop busy in a long action for {age:.1f}s, bounded by its own timeout")
    return Check(False, f"HA loop stalled: last loop {age:.1f}s ago, limit {bound:g}s")


def check_readiness(s: Snapshot) -> Check:
    pg = s.view.pg
    if not pg.accepting_connections:
        return Check(False, "postgres is not accepting connections")
    primary = check_primary(s)
    if primary.ok or s.role is Role.REPLICA:
        return Check(True, primary.reason if primary.ok else "replica streaming from the leader")
    return Check(False, f"neither the leader nor a streaming replica (role {s.role.value})")


# -- bodies ----------------------------------------------------------------------------------------


def health_body(s: Snapshot, lag: Lag) -> dict[str, Any]:
    """This member's state. ``postgres_running``, ``in_recovery``, ``timeline``, ``lsn`` and
    ``nofailover`` are read by peers during a leader race (``fetch_peer_status``): keep them."""
    view = s.view
    pg = view.pg
    cluster = view.cluster
    decision = view.decision
    return {
        "name": s.me,
        "role": s.role.value,
        "term": cluster.term if cluster else s.leader_term,
        "leader": cluster.leader.name if cluster and cluster.leader else None,
        "postgres_running": pg.running,
        "accepting_connections": pg.accepting_connections,
        "in_recovery": pg.in_recovery,
        "timeline": pg.timeline,
        "lsn": pg.best_lsn(),
        "wal_lsn": pg.wal_lsn,
        "received_lsn": pg.received_lsn,
        "replayed_lsn": pg.replayed_lsn,
        "upstream": pg.upstream,
        "streaming": pg.streaming,
        "lag": lag.to_json() if pg.in_recovery else None,
        "nofailover": s.nofailover,
        "dcs_reachable": view.dcs_ok,
        "lease_valid": s.lease_valid,
        "last_loop_age": round(s.now - view.last_loop_at, 3),
        "reason": decision.reason if decision else None,
        "alert": decision.alert if decision else None,
    }


def cluster_body(cluster: ClusterState | None) -> dict[str, Any]:
    if cluster is None:
        return {"error": "etcd unreachable from this member", "members": [], "leader": None, "term": None}
    leader = cluster.member(cluster.leader.name) if cluster.leader else None
    leader_lsn = leader.best_lsn() if leader else None
    members = []
    for m in cluster.members:
        lsn = m.best_lsn()
        is_leader = leader is not None and m.name == leader.name
        members.append(
            {
                "name": m.name,
                # Only the key holder is the leader: a member key still saying "leader" is one loop stale
                # (right after a switchover) or a deposed primary about to fence itself.
                "role": Role.DEMOTED.value if m.role is Role.LEADER and not is_leader else m.role.value,
                "state": m.state,
                "term": m.term,
                "timeline": m.timeline,
                "received_lsn": lsn_to_str(m.received_lsn),
                "replayed_lsn": lsn_to_str(m.replayed_lsn),
                "wal_lsn": lsn_to_str(m.wal_lsn),
                "lsn": lsn,
                "lag_bytes": 0 if is_leader else (max(0, leader_lsn - lsn) if leader_lsn and lsn is not None else None),
                "api_url": m.api_url,
                "conn_url": m.conn_url,
                "nofailover": m.nofailover,
            }
        )
    pending = cluster.switchover
    return {
        "leader": cluster.leader.name if cluster.leader else None,
        "term": cluster.term,
        "initialized": bool(cluster.initialize),
        "members": members,
        "pending": None
        if pending is None
        else {
            "kind": pending.kind,
            "candidate": pending.candidate,
            "scheduled_at": pending.scheduled_at,
            "failed": pending.failed,
        },
    }
