"""The HA loop: gather a snapshot, call the pure ``decide``, execute its actions, publish ourselves.

Everything here is I/O glue; the rules live in ``decide.py``. One loop:

1. renew this agent's lease (keepalive; the send time is what the fence deadline counts from);
2. read the cluster from etcd in one request (None when etcd cannot be reached);
3. read the local postgres; while there is no leader, ask the peers for their WAL positions;
4. ``decide``; hand the new memory to the fence guard; run the actions in order;
5. publish our member key.
"""

from __future__ import annotations

import json
import logging
import threading
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from urllib.parse import urlsplit

from pgquorum.agent.clock import Clock
from pgquorum.agent.config import AgentConfig
from pgquorum.agent.dcs.base import DCS, DCSError
from pgquorum.agent.dcs.etcd_watch import LeaderWatch
from pgquorum.agent.ha.actions import (
    AcquireLeader,
    Action,
    Bootstrap,
    Clone,
    Fence,
    Follow,
    Promote,
    PublishStatus,
    Rejoin,
    ReleaseLeader,
    StartPostgres,
)
from pgquorum.agent.ha.decide import Decision, Inputs, Memory, decide
from pgquorum.agent.ha.fence import FenceGuard
from pgquorum.agent.model import (
    ClusterState,
    HistoryEntry,
    LeaderStatus,
    MemberInfo,
    PeerStatus,
    PostgresState,
    Role,
)
from pgquorum.agent.postgres.controller import PostgresController, PostgresError, Upstream

log = logging.getLogger("pgquorum.ha")


def read_secret(path: object) -> str:
    from pathlib import Path

    if path is None:
        raise PostgresError(
            "a password file is required (postgres.superuser_password_file / replication_password_file)"
        )
    try:
        return Path(str(path)).read_text().strip()
    except OSError as exc:
        raise PostgresError(f"cannot read password file {path}: {exc.strerror}") from None


@dataclass(frozen=True)
class LoopView:
    """What the REST API shows: the last snapshot the loop worked on."""

    cluster: ClusterState | None
    pg: PostgresState
    decision: Decision | None
    dcs_ok: bool
    last_loop_at: float


class HaLoop:
    def __init__(
        self, cfg: AgentConfig, dcs: DCS, pg: PostgresController, clock: Clock, watch: LeaderWatch | None = None
    ):
        self.cfg = cfg
        self.dcs = dcs
        self.pg = pg
        self.clock = clock
        self.memory = Memory()
        self.wake = threading.Event()
        self.watch = watch  # wakes the loop when the leader key changes (latency only)
        self._stop = threading.Event()
        self.guard = FenceGuard(cfg.timing, clock, self._guard_fence, self.wake.set)
        self._lock = threading.Lock()
        self._view = LoopView(None, PostgresState(False, False), None, False, clock.monotonic())
        self._last_reason = ""
        self._acquired_at: float | None = None
        self._election_seconds: float | None = None  # first sight of no leader -> key taken
        self._peer_pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="peer")

    # -- public --------------------------------------------------------------------------
    @property
    def view(self) -> LoopView:
        with self._lock:
            return self._view

    def run(self) -> None:
        self.guard.start()
        if self.watch is not None:
            self.watch.start()
        while not self._stop.is_set():
            started = self.clock.monotonic()
            again = False
            try:
                again = self.run_once()
            except Exception:  # the loop must survive anything; the fence guard still runs
                log.exception("HA loop iteration failed", extra={"event": "loop_error"})
            if again:
                continue
            self._sleep_until(started + self.cfg.timing.loop_wait)

    def _sleep_until(self, until: float) -> None:
        """Sleep until the next loop, waking early on a request or when our postgres exits."""
        was_running = self.view.pg.running
        while not self._stop.is_set():
            remaining = until - self.clock.monotonic()
            if remaining <= 0 or self.wake.wait(min(remaining, 0.05)):
                break
            if was_running and self.pg.exited.is_set():
                log.warning("postgres exited", extra={"event": "postgres_exited", "code": self.pg.exit_code})
                break
        self.wake.clear()

    def stop(self) -> None:
        self._stop.set()
        self.wake.set()
        if self.watch is not None:
            self.watch.stop()

    def shutdown(self) -> None:
        """Graceful stop: stop postgres; a leader then releases its key so a replica takes over fast."""
        self.stop()
        was_leader = self.memory.leader_term is not None
        self.guard.stop()
        try:
            self.pg.stop(mode="fast", timeout=self.cfg.postgres.stop_timeout)
        except PostgresError as exc:
            log.error("postgres did not stop cleanly", extra={"event": "shutdown", "error": str(exc)})
        if was_leader:
            try:
                self.dcs.release_leader(self.cfg.name)
                log.info(
                    "released the leader key on shutdown", extra={"event": "release", "term": self.memory.leader_term}
                )
            except DCSError as exc:
                log.warning("could not release the leader key", extra={"event": "release", "error": str(exc)})
        self._peer_pool.shutdown(wait=False, cancel_futures=True)

    def run_once(self) -> bool:
        renewed_at = self._renew_lease()
        cluster = self._read_cluster()
        pg = self.pg.state()
        peers: tuple[PeerStatus, ...] = ()
        if cluster is not None and cluster.leader is None and cluster.initialize:
            peers = self._gather_peers(cluster)
        inputs = Inputs(
            me=self.cfg.name,
            now=self.clock.monotonic(),
            timing=self.cfg.timing,
            cluster=cluster,
            pg=pg,
            memory=self.memory,
            lease_renewed_at=renewed_at,
            peers=peers,
            nofailover=self.cfg.nofailover,
            maximum_lag_on_failover=self.cfg.postgres.maximum_lag_on_failover,
            primary_start_timeout=self.cfg.postgres.primary_start_timeout,
        )
        decision = decide(inputs)
        self.memory = decision.memory
        self.guard.update(self.memory)
        self._log_decision(decision, cluster)
        again = decision.again
        for action in decision.actions:
            try:
                self._execute(action, cluster, renewed_at, decision)
            except (PostgresError, DCSError) as exc:
                log.error(
                    "action failed",
                    extra={
                        "event": "action_failed",
                        "action": type(action).__name__,
                        "error": str(exc),
                        "term": cluster.term if cluster else None,
                    },
                )
                again = False
                break
        pg_after = self.pg.state() if decision.actions else pg
        self._publish(cluster, pg_after, decision)
        with self._lock:
            self._view = LoopView(cluster, pg_after, decision, cluster is not None, self.clock.monotonic())
        return again

    # -- gathering -----------------------------------------------------------------------
    def _renew_lease(self) -> float | None:
        sent = self.clock.monotonic()
        try:
            self.dcs.ensure_lease()
            if self.dcs.keepalive():
                return sent
            # The lease expired (etcd was away too long): get a new one for our member key.
            sent = self.clock.monotonic()
            self.dcs.ensure_lease()
            return sent
        except DCSError as exc:
            log.warning("lease renewal failed", extra={"event": "renew_failed", "error": str(exc)})
            return None

    def _read_cluster(self) -> ClusterState | None:
        try:
            return self.dcs.get_cluster()
        except DCSError as exc:
            log.warning("cannot read the cluster from etcd", extra={"event": "dcs_unreachable", "error": str(exc)})
            return None

    def _gather_peers(self, cluster: ClusterState) -> tuple[PeerStatus, ...]:
        timeout = min(0.5, self.cfg.timing.retry_timeout)
        others = [m for m in cluster.members if m.name != self.cfg.name and not m.witness]
        futures = [self._peer_pool.submit(fetch_peer_status, m, timeout) for m in others]
        return tuple(f.result() for f in futures)

    # -- executing -----------------------------------------------------------------------
    def _upstream(self, cluster: ClusterState | None, name: str | None) -> Upstream | None:
        if name is None or cluster is None:
            return None
        member = cluster.member(name)
        if member is None or not member.conn_url:
            raise PostgresError(f"member {name} has not published its connection URL")
        parts = urlsplit(member.conn_url)
        return Upstream(name=name, host=parts.hostname or "127.0.0.1", port=parts.port or 5432)

    def _execute(self, action: Action, cluster: ClusterState | None, renewed_at: float | None, d: Decision) -> None:
        term = cluster.term if cluster else None
        # The leader's bookkeeping runs every loop: keep it out of the INFO log.
        level = logging.DEBUG if isinstance(action, PublishStatus) else logging.INFO
        log.log(level, "executing", extra={"event": "action", "action": repr(action), "term": term})
        match action:
            case Bootstrap():
                self._bootstrap()
            case Clone(leader=leader):
                upstream = self._upstream(cluster, leader)
                assert upstream is not None
                self.pg.clone(upstream, timeout=600)
                self.pg.start(timeout=60)
            case StartPostgres(as_primary=True):
                self.pg.write_config(None)
                self.pg.start(timeout=self.cfg.postgres.primary_start_timeout)
            case StartPostgres(as_primary=False, upstream=up):
                self.pg.prepare_standby(self._upstream(cluster, up))
                self.pg.start(timeout=60)
            case Rejoin(leader=leader):
                upstream = self._upstream(cluster, leader)
                assert upstream is not None
                if not self.pg.rewind(upstream, timeout=300):
                    log.warning("pg_rewind impossible: re-cloning", extra={"event": "reinitialize", "leader": leader})
                    self.pg.reinitialize(upstream, timeout=600)
                self.pg.start(timeout=60)
            case AcquireLeader(expected_term=t):
                new_term = self.dcs.acquire_leader(self.cfg.name, t)
                if new_term is None:
                    log.info("lost the leader race", extra={"event": "race_lost", "term": t})
                    return
                self._acquired_at = self.clock.monotonic()
                since = self.memory.leaderless_since
                self._election_seconds = None if since is None else round(self._acquired_at - since, 3)
                self.memory = replace(self.memory, leader_term=new_term, last_renew_sent=renewed_at)
                self.guard.update(self.memory)
                log.warning("took the leader key", extra={"event": "leader_acquired", "term": new_term})
            case Promote(term=t):
                started = self.clock.monotonic()
                self.pg.promote(timeout=30)
                done = self.clock.monotonic()
                self._after_promotion(cluster, t, started, done)
            case Fence(reason=reason):
                elapsed = self.pg.fence()
                log.error(
                    "fenced: postgres stopped accepting writes",
                    extra={"event": "fence", "reason": reason, "term": term, "seconds": round(elapsed, 3)},
                )
            case ReleaseLeader(reason=reason):
                released = self.dcs.release_leader(self.cfg.name)
                log.error("released the leader key", extra={"event": "release", "reason": reason, "done": released})
            case Follow(leader=leader):
                self.pg.follow(self._upstream(cluster, leader))
            case PublishStatus(term=t, timeline=tl, wal_lsn=lsn, slot_members=names):
                self.dcs.write_status(LeaderStatus(term=t, timeline=tl, wal_lsn=lsn))
                self.pg.ensure_slots(names)

    def _bootstrap(self) -> None:
        if not self.dcs.claim_initialize():
            log.info("another member won the bootstrap race", extra={"event": "bootstrap"})
            return
        log.warning("won the bootstrap race: running initdb", extra={"event": "bootstrap"})
        try:
            self.pg.bootstrap(
                read_secret(self.cfg.postgres.superuser_password_file),
                read_secret(self.cfg.postgres.replication_password_file),
            )
            renewed = self.clock.monotonic()
            self.dcs.keepalive()
            term = self.dcs.acquire_leader(self.cfg.name, 0)
            if term is None:
                raise DCSError("the leader key or term already exists during bootstrap")
            self.memory = replace(self.memory, leader_term=term, last_renew_sent=renewed)
            self.guard.update(self.memory)
            state = self.pg.state()
            self.dcs.set_initialized(state.system_id or "")
            self.dcs.append_history(
                HistoryEntry(term, state.timeline, self.cfg.name, None, "bootstrap", self.clock.wall())
            )
        except (PostgresError, DCSError):
            self.dcs.cancel_initialize()
            raise

    def _after_promotion(self, cluster: ClusterState | None, term: int, started: float, done: float) -> None:
        state = self.pg.state()
        durations = {"promotion": round(done - started, 3)}
        if self._election_seconds is not None:
            durations["election"] = self._election_seconds
        old = None
        if cluster is not None:
            history = self.dcs.get_history()
            old = history[-1].new_leader if history else None
        entry = HistoryEntry(term, state.timeline, self.cfg.name, old, "failover", self.clock.wall(), durations)
        self.dcs.append_history(entry)
        if state.timeline is not None and state.wal_lsn is not None:
            self.dcs.write_status(LeaderStatus(term, state.timeline, state.wal_lsn))
        log.warning(
            "promoted",
            extra={"event": "promoted", "term": term, "timeline": state.timeline, "old_leader": old, **durations},
        )

    def _guard_fence(self, reason: str) -> None:
        elapsed = self.pg.fence()
        log.error("fenced by the guard", extra={"event": "fence", "reason": reason, "seconds": round(elapsed, 3)})

    # -- publishing ----------------------------------------------------------------------
    def _publish(self, cluster: ClusterState | None, pg: PostgresState, d: Decision) -> None:
        if cluster is None:
            return
        member = MemberInfo(
            name=self.cfg.name,
            role=role_of(pg, self.memory, cluster, self.cfg.name),
            state=pg_state_word(pg),
            api_url=self.cfg.api_url,
            conn_url=f"postgres://{self.cfg.postgres.listen_host}:{self.cfg.postgres.port}/postgres",
            timeline=pg.timeline,
            received_lsn=pg.received_lsn,
            replayed_lsn=pg.replayed_lsn,
            wal_lsn=pg.wal_lsn,
            term=cluster.term,
            nofailover=self.cfg.nofailover,
        )
        try:
            self.dcs.touch_member(member)
        except DCSError as exc:
            log.warning("cannot publish member key", extra={"event": "touch_failed", "error": str(exc)})

    def _log_decision(self, d: Decision, cluster: ClusterState | None) -> None:
        term = cluster.term if cluster else self.memory.leader_term
        if d.alert:
            log.error(d.reason, extra={"event": "alert", "alert": d.alert, "term": term})
        elif d.reason != self._last_reason:
            log.info(d.reason, extra={"event": "decision", "role": d.role.value, "term": term})
        self._last_reason = d.reason


def role_of(pg: PostgresState, memory: Memory, cluster: ClusterState | None, me: str) -> Role:
    if not pg.data_initialized:
        return Role.UNINITIALIZED
    if not pg.running:
        return Role.STOPPED
    if pg.in_recovery is False:
        return Role.LEADER if memory.leader_term is not None else Role.DEMOTED
    leader = cluster.leader.name if cluster and cluster.leader else None
    if leader is not None and pg.upstream == leader and pg.streaming:
        return Role.REPLICA
    return Role.STANDBY


def pg_state_word(pg: PostgresState) -> str:
    if not pg.data_initialized:
        return "uninitialized"
    if not pg.running:
        return "stopped"
    if not pg.accepting_connections:
        return "starting"
    return "streaming" if pg.streaming else "running"


def fetch_peer_status(member: MemberInfo, timeout: float) -> PeerStatus:
    """Ask a peer for its fresh WAL position; unreachable peers simply do not count."""
    try:
        req = urllib.request.Request(member.api_url.rstrip("/") + "/health")
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                body = resp.read()
        except urllib.error.HTTPError as err:  # 503 still carries the JSON body
            body = err.read()
        data = json.loads(body)
        return PeerStatus(
            name=member.name,
            reachable=True,
            postgres_running=bool(data.get("postgres_running")),
            in_recovery=data.get("in_recovery"),
            timeline=data.get("timeline"),
            lsn=data.get("lsn"),
            nofailover=bool(data.get("nofailover", member.nofailover)),
        )
    except (OSError, ValueError, urllib.error.URLError):
        return PeerStatus(name=member.name, reachable=False)
