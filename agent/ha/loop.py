"""The HA loop: gather a snapshot, call the pure ``decide``, execute its actions, publish ourselves.

Everything here is I/O glue; the rules live in ``decide.py``. One loop:

1. renew this agent's lease (keepalive; the send time is what the fence deadline counts from);
2. read the cluster from etcd in one request (None when etcd cannot be reached);
3. read the local postgres; while there is no leader, ask the peers for their WAL positions;
4. ``decide``; hand the new memory to the fence guard; run the actions in order;
5. publish our member key.
"""

from __future__ import annotations

import logging
import math
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from urllib.parse import urlsplit

from pgquorum.agent.clock import Clock
from pgquorum.agent.config import (
    AgentConfig,
    ConfigError,
    SyncSettings,
    effective_dynamic,
    effective_sync,
    validate_dynamic,
)
from pgquorum.agent.dcs.base import DCS, DCSError
from pgquorum.agent.dcs.etcd_watch import LeaderWatch
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
from pgquorum.agent.ha.control import Accepted, ControlError
from pgquorum.agent.ha.decide import (
    Decision,
    Election,
    Inputs,
    Memory,
    Voting,
    decide,
    failsafe_verdict,
    serving_deadline_at,
    switchover_candidate,
)
from pgquorum.agent.ha.fence import FenceGuard
from pgquorum.agent.ha.stonith_gate import OldLeader, StonithGate, voted_for_us
from pgquorum.agent.ha.view import LoopView, role_of
from pgquorum.agent.metrics import AgentMetrics, FailsafeState
from pgquorum.agent.model import (
    ClusterState,
    HistoryEntry,
    LeaderStatus,
    MemberInfo,
    PeerStatus,
    PostgresState,
    Role,
    SwitchoverRequest,
    SyncObservation,
    SyncRecord,
    VoterEntry,
)
from pgquorum.agent.podrole import PodLabeler, pod_role
from pgquorum.agent.postgres.controller import PostgresController, PostgresError, Upstream
from pgquorum.agent.postgres.fencing_token import write_term
from pgquorum.agent.quorum.peers import PromiseKeeper, PromiseTarget, ask_vote, fetch_peer_status, peer_authorization
from pgquorum.agent.quorum.refusal import Refusal, RefusalCode
from pgquorum.agent.quorum.sync import Quorum, SetSyncStandbys, WriteSyncRecord
from pgquorum.agent.quorum.voter import LocalView, VoterService
from pgquorum.agent.quorum.votes import Vote, VoteRequest
from pgquorum.agent.watchdog import Watchdog, WatchdogMode

log = logging.getLogger("pgquorum.ha")

CLONE_SECONDS = 600.0
REWIND_SECONDS = 300.0
# A standby that is not ready within this keeps replaying while the loop goes on (renewing its member
# key, so the leader keeps its slot; decide() sees "starting up"): blocking longer helps nobody.
STANDBY_START_SECONDS = 5.0
# Upper bounds of the actions that may legitimately keep one loop busy for minutes.
LONG_ACTION_SECONDS: dict[type, float] = {
    Bootstrap: 180.0,
    Clone: CLONE_SECONDS + STANDBY_START_SECONDS,
    Rejoin: REWIND_SECONDS + CLONE_SECONDS + STANDBY_START_SECONDS,
    Reinitialize: CLONE_SECONDS + STANDBY_START_SECONDS,
    StartPostgres: STANDBY_START_SECONDS,
    RestartPostgres: 120.0,  # stop (postgres.stop_timeout) then start
}


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


class HaLoop:
    def __init__(
        self,
        cfg: AgentConfig,
        dcs: DCS,
        pg: PostgresController,
        clock: Clock,
        watch: LeaderWatch | None = None,
        control_dcs: DCS | None = None,
        voter: VoterService | None = None,
        pod_labels: PodLabeler | None = None,
    ):
        self.cfg = cfg
        self.dcs = dcs
        self.pg = pg
        self.clock = clock
        self.memory = Memory()
        self.wake = threading.Event()
        self.watch = watch  # wakes the loop when the leader key changes (latency only)
        self.pod_labels = pod_labels  # in a Kubernetes pod: the role label `-rw` selects on
        self._stop = threading.Event()
        # Quorum votes and the failsafe (invariant I5): our own vote and promises (``voter``, shared with
        # the API's /vote and /promise), the promises we hold as primary (``keeper``).
        self.voter = voter if cfg.quorum_votes else None
        self.keeper: PromiseKeeper | None = None
        if self.voter is not None:
            t = cfg.timing
            self.keeper = PromiseKeeper(
                cfg.name,
                clock,
                period=min(t.loop_wait, (t.ttl - t.safety_margin) / 3),
                timeout=t.retry_timeout,
                authorization=lambda: peer_authorization(cfg.api),
            )
        self._voting_members: tuple[str, ...] = (cfg.name,)  # from the last etcd read (kept without etcd)
        self._voter_urls: dict[str, str] = {}  # last known API URL of each voter
        self._election: Election | None = None  # our last vote gathering (RequestVotes)
        self._last_election_outcome: object = None  # to log a repeated outcome at debug level only
        self._retry_in: float | None = None
        self._last_pg = PostgresState(False, False)
        self.guard = FenceGuard(
            cfg.timing, clock, self._guard_fence, self.wake.set, voting=self._current_voting, me=cfg.name
        )
        self._lock = threading.Lock()
        self._view = LoopView(None, PostgresState(False, False), None, False, clock.monotonic())
        self._last_reason = ""
        self._acquired_at: float | None = None
        self._election_seconds: float | None = None  # first sight of no leader -> key taken
        self._detection_seconds: float | None = None  # leader's last heartbeat -> no leader key seen
        self._leader_heartbeat: tuple[int, float | None] = (0, None)  # (status revision, seen at)
        self.busy_until: float | None = None  # monotonic deadline of a long action in progress (/liveness)
        self._token_term: int | None = None  # the term last written into the database (fencing token)
        self._peer_pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="peer")
        self.metrics = AgentMetrics(  # GET /metrics
            cfg.name, cfg.cluster, cfg.timing, clock.monotonic, stonith_hooks=[h.name for h in cfg.stonith]
        )
        wd = cfg.watchdog
        self.watchdog = Watchdog(wd, clock) if wd is not None and wd.mode is not WatchdogMode.OFF else None
        self.stonith = StonithGate(cfg.stonith, cfg.cluster, cfg.name, clock, self.metrics)
        self._old_leader: tuple[int, OldLeader | None] | None = None  # (term, who held it before us)
        if self.voter is not None:
            self.voter.on_answer = self.metrics.count_answer
            self.metrics.failsafe = self._failsafe_state
            self.metrics.voting_members = lambda: len(self._voting_members)
        # Operators' requests arrive on API threads; they get their own etcd client (not thread-safe).
        self._control_dcs = control_dcs
        self._control_lock = threading.Lock()
        self._command: str | None = None  # "restart" | "reinitialize", consumed by the next decision
        self._refusal_counted_for: float | None = None  # leaderless episode whose quorum refusal was counted
        self._last_alert: tuple[str, float] | None = None  # (alert, when logged): repeat at most every 10 s

    # -- public --------------------------------------------------------------------------
    @property
    def view(self) -> LoopView:
        with self._lock:
            return self._view

    def run(self) -> None:
        self.guard.start()
        if self.keeper is not None:
            self.keeper.start()
        if self.watch is not None:
            self.watch.start()
        while not self._stop.is_set():
            started = self.clock.monotonic()
            again = False
            self._retry_in = None
            try:
                again = self.run_once()
            except Exception:  # the loop must survive anything; the fence guard still runs
                log.exception("HA loop iteration failed", extra={"event": "loop_error"})
            if again:
                continue
            wait = self.cfg.timing.loop_wait
            if self._retry_in is not None:
                wait = max(0.01, min(wait, self._retry_in))
            self._sleep_until(started + wait)

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
        stopped = False
        try:
            self.pg.stop(mode="fast", timeout=self.cfg.postgres.stop_timeout)
            stopped = True
        except PostgresError as exc:
            log.error("postgres did not stop cleanly", extra={"event": "shutdown", "error": str(exc)})
        if self.keeper is not None:
            self.keeper.stop()
            if was_leader and stopped:  # postgres is gone: our voters need not wait out their promises
                released = self.keeper.release(timeout=min(1.0, self.cfg.timing.retry_timeout))
                log.info(
                    "released the voters' promises on shutdown",
                    extra={"event": "release", "term": self.memory.leader_term, "voters": released},
                )
        if self.watchdog is not None:  # postgres is down: a reset would only add harm
            self.watchdog.disable()
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
        loop_started = self.clock.monotonic()  # metrics
        renewed_at = self._renew_lease()
        cluster = self._read_cluster()
        pg = self.pg.state()
        sync = effective_sync(self.cfg, cluster.config if cluster else None)
        peers: tuple[PeerStatus, ...] = ()
        if cluster is not None and cluster.leader is None and cluster.initialize:
            peers = self._gather_peers(cluster, sync)
        sync_obs = self._observe_sync(cluster, pg, sync)
        dynamic = effective_dynamic(self.cfg, cluster.config if cluster else None)
        voting = self._gather_voting(cluster, pg, peers, renewed=renewed_at is not None)
        command = self._command
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
            maximum_lag_on_failover=dynamic["maximum_lag_on_failover"],
            primary_start_timeout=dynamic["primary_start_timeout"],
            member_slots_ttl=dynamic["member_slots_ttl"],
            wall=self.clock.wall(),
            command=command,
            sync=sync,
            sync_obs=sync_obs,
            voting=voting,
        )
        decision = decide(inputs)
        self._retry_in = decision.retry_in
        self._count_quorum_refusal(decision)
        if command is not None and _consumes_command(decision):
            self._command = None
        self.memory = decision.memory
        self.guard.update(self.memory)
        self._follow_leadership()
        self._log_decision(decision, cluster)
        again = decision.again
        for action in decision.actions:
            bound = LONG_ACTION_SECONDS.get(type(action))
            # /liveness must not call a loop stalled while it clones or rewinds for minutes.
            self.busy_until = None if bound is None else self.clock.monotonic() + bound
            try:
                self._execute(action, cluster, renewed_at, decision)
            except (PostgresError, DCSError, OSError) as exc:
                # OSError: the data directory's disk is full or read-only (writing postgresql.conf,
                # signal files): one line per loop naming the action, not a traceback.
                log.error(
                    "action failed",
                    extra={
                        "event": "action_failed",
                        "action": type(action).__name__,
                        "error": str(exc) if not isinstance(exc, OSError) else f"{exc.strerror or exc}: {exc.filename}",
                        "term": cluster.term if cluster else None,
                    },
                )
                again = False
                break
            finally:
                self.busy_until = None
        pg_after = self.pg.state() if decision.actions else pg
        self._publish(cluster, pg_after, decision)
        with self._lock:
            self._view = LoopView(
                cluster, pg_after, decision, cluster is not None, self.clock.monotonic(), sync_obs, sync
            )
        self._feed_watchdog(renewed_at)
        loop_done = self.clock.monotonic()  # metrics
        self.metrics.observe_loop(self._view, loop_done - loop_started, loop_done, memory=self.memory)
        return again

    def _feed_watchdog(self, renewed_at: float | None) -> None:
        """Armed only while we lead, fed only right after a renewal that kept our key (invariant I2)."""
        wd = self.watchdog
        if wd is None:
            return
        m = self.memory
        if m.leader_term is None:
            if wd.armed:
                wd.disable()
            return
        if not wd.activate():  # required and unavailable: a leader without it must not stay one
            self.pg.fence()
            try:
                self.dcs.release_leader(self.cfg.name)
            except DCSError as exc:
                log.error("releasing the key failed", extra={"event": "release", "error": str(exc)})
            self.memory = replace(m, leader_term=None, last_renew_sent=None)
            self.guard.update(self.memory)
            return
        pg = self.view.pg
        if self.keeper is not None and pg.running and pg.in_recovery is False:
            # Quorum votes: the primary serves on its majority of promises, with or without etcd, so
            # the watchdog follows that deadline: fed as if renewed at the deadline's send instant.
            # (An elected standby not promoted yet writes nothing: the lease rule below is enough.)
            now = self.clock.monotonic()
            deadline = serving_deadline_at(m, self.cfg.timing, self._current_voting(), self.cfg.name, now)
            if deadline is not None and now < deadline:
                wd.keepalive(now if math.isinf(deadline) else deadline - self.cfg.timing.fence_after())
            return
        if renewed_at is not None and renewed_at == m.last_renew_sent:
            wd.keepalive(renewed_at)

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
            cluster = self.dcs.get_cluster()
        except DCSError as exc:
            log.warning("cannot read the cluster from etcd", extra={"event": "dcs_unreachable", "error": str(exc)})
            return None
        status = cluster.status
        if cluster.leader is not None and status is not None and status.mod_revision != self._leader_heartbeat[0]:
            # The leader rewrites its status every loop: the last change is its last sign of life,
            # where a failover's detection phase starts.
            self._leader_heartbeat = (status.mod_revision, self.clock.monotonic())
        return cluster

    def _gather_peers(self, cluster: ClusterState, sync: SyncSettings) -> tuple[PeerStatus, ...]:
        timeout = min(0.5, self.cfg.timing.retry_timeout)
        others = [m for m in cluster.members if m.name != self.cfg.name and not m.witness]
        futures = [self._peer_pool.submit(fetch_peer_status, m, timeout) for m in others]
        # Quorum mode: the voters' positions straight from their postgres (their API is a loop old).
        voters = Quorum.of(cluster.sync).voters if sync.quorum else frozenset()
        direct = {}
        targets = [m for m in others if m.name in voters and m.conn_url]
        if targets:
            try:
                self.pg.prepare_peer_access()
                for m in targets:
                    parts = urlsplit(m.conn_url)
                    up = Upstream(m.name, parts.hostname or "127.0.0.1", parts.port or 5432)
                    direct[m.name] = self._peer_pool.submit(self.pg.peer_wal_position, up, timeout)
            except PostgresError as exc:
                log.warning("cannot ask the voters' postgres directly", extra={"event": "peers", "error": str(exc)})
        peers = []
        for m, f in zip(others, futures, strict=True):
            status = f.result()
            pending = direct.get(m.name)
            if pending is not None:
                try:
                    status = replace(status, direct_lsn=pending.result())
                except (PostgresError, OSError) as exc:
                    log.debug("no direct WAL position from %s: %s", m.name, exc)
            peers.append(status)
        return tuple(peers)

    # -- quorum votes and the failsafe (invariant I5) ----------------------------------------------
    def _current_voting(self) -> Voting | None:
        """For the fence guard, between loops: the voting members and the promises held right now."""
        if self.keeper is None:
            return None
        return Voting(self._voting_members, self.keeper.promises())

    def _failsafe_state(self) -> FailsafeState | None:
        memory, voting = self.memory, self._current_voting()
        now = self.clock.monotonic()
        verdict = failsafe_verdict(memory, self.cfg.timing, voting, self.cfg.name, now)
        if verdict is None or voting is None:
            return None
        t = self.cfg.timing
        bound = {p.voter for p in voting.promises if p.granted_at + min(p.ttl, t.ttl) - t.safety_margin > now}
        held = len(bound & set(voting.members)) + (1 if self.cfg.name in voting.members else 0)
        return FailsafeState(len(voting.members), held, verdict.allowed, verdict.deadline)

    def _gather_voting(
        self, cluster: ClusterState | None, pg: PostgresState, peers: tuple[PeerStatus, ...], renewed: bool = False
    ) -> Voting | None:
        """Feed our voter with this read, and (leading) make sure a promise round has completed."""
        voter, keeper = self.voter, self.keeper
        if voter is None or keeper is None:
            return None
        self._last_pg = pg
        me = self.cfg.name
        grown = False
        if cluster is not None:
            members = cluster.voting_members(me)
            grown = bool(set(members) - set(self._voting_members))
            self._voting_members = members
            for m in cluster.members:
                self._voter_urls[m.name] = m.api_url
        live = None
        if pg.running and pg.in_recovery is False and self.memory.leader_term is not None:
            live = me  # we serve (on the key, or on promises while etcd is away)
        else:
            live = next((p.name for p in peers if p.reachable and p.postgres_running and p.in_recovery is False), None)
        position = pg.best_lsn() if pg.running else None
        local = LocalView(
            etcd_ok=cluster is not None,
            term=cluster.term if cluster is not None else None,
            leader=cluster.leader.name if cluster is not None and cluster.leader is not None else None,
            timeline=pg.timeline if position is not None else None,
            wal_lsn=position,
            live_primary=live,
        )
        if cluster is not None:
            own = [(v.term, v.candidate) for v in cluster.votes if v.voter == me]
            voter.observe(cluster.term, own, local)
        else:
            voter.etcd_lost(local)
        # Who we would lead: the key is ours, or we serve on promises with the key expired.
        leading = self.memory.leader_term
        if cluster is not None and cluster.leader is not None and cluster.leader.name == me:
            leading = cluster.term
        if leading is not None:
            since = self.memory.since_term if self.memory.since_term is not None else leading
            targets = [PromiseTarget(n, self._voter_urls[n]) for n in self._voting_members if n in self._voter_urls]
            keeper.lead(leading, min(since, leading), targets)
            keeper.forget(set(self._voting_members))
            if grown or not keeper.round_done(leading):
                # The first decision as leader, or the first after a voter joined (the majority grew),
                # must see real promises: without them it would fence a healthy primary.
                keeper.renew_now(wait=True)
            elif renewed:
                keeper.renew_now(wait=False)  # promises end with the lease, not up to a period later
        election = self._election
        if election is not None and (cluster is None or election.term != cluster.term + 1):
            election = self._election = None
        return Voting(self._voting_members, keeper.promises(), election)

    def _follow_leadership(self) -> None:
        """After a decision: a member that no longer leads holds no promise worth counting."""
        if self.keeper is not None and self.memory.leader_term is None:
            self.keeper.step_down()

    def _run_election(self, cluster: ClusterState | None, term: int) -> None:
        """Ask every voting member (us included) for its vote for ``term``, then read the keys back."""
        voter = self.voter
        assert voter is not None and cluster is not None
        pg = self._last_pg
        request = VoteRequest(self.cfg.name, term, pg.timeline or 1, pg.best_lsn() or 0)
        timeout = self.cfg.timing.retry_timeout
        authorization = peer_authorization(self.cfg.api)
        others = [n for n in self._voting_members if n != self.cfg.name]
        futures = {
            n: self._peer_pool.submit(ask_vote, self._voter_urls[n], n, request, authorization, timeout)
            for n in others
            if n in self._voter_urls
        }
        status, body = voter.vote(request)  # our own vote, through the same rules
        answers: dict[str, Vote | Refusal] = {}
        own = body.get("vote") if status == 200 else None
        if own is None:
            answers[self.cfg.name] = Refusal(
                RefusalCode(body.get("code", "bad_answer")), str(body.get("reason", "no vote"))
            )
        for n, f in futures.items():
            answers[n] = f.result()
        votes = self.dcs.get_votes(term)
        transient = any(
            isinstance(a, Refusal) and a.code in (RefusalCode.PROMISED, RefusalCode.STARTING) for a in answers.values()
        )
        previous = self._election
        same = previous is not None and previous.term == term
        attempt = previous.attempt + 1 if previous is not None and same else 1
        now = self.clock.monotonic()
        started = (previous.started or previous.at) if previous is not None and same else now
        self._election = Election(term, now, tuple(votes), transient, attempt, started)
        refusals = {n: f"{a.code.value}: {a.reason}" for n, a in answers.items() if isinstance(a, Refusal)}
        outcome = (
            term,
            tuple(sorted(v.voter for v, _ in votes)),
            tuple(sorted((n, a.code) for n, a in answers.items() if isinstance(a, Refusal))),
        )
        repeated = outcome == self._last_election_outcome
        self._last_election_outcome = outcome
        log.log(
            logging.DEBUG if repeated else logging.INFO,
            "votes gathered",
            extra={
                "event": "election",
                "term": term,
                "granted": sorted(v.voter for v, _ in votes if v.candidate == self.cfg.name),
                "refused": refusals,
                "missing": sorted(set(others) - set(futures)),
            },
        )

    def _observe_sync(
        self, cluster: ClusterState | None, pg: PostgresState, sync: SyncSettings
    ) -> SyncObservation | None:
        """Leader only: what our postgres waits for and who streams, when quorum commit is or was on."""
        if cluster is None or cluster.leader is None or cluster.leader.name != self.cfg.name:
            return None
        if not (pg.running and pg.in_recovery is False):
            return None
        if not (sync.quorum or Quorum.of(cluster.sync).provable or self.pg.standby_names):
            return None
        try:
            return self.pg.sync_observation(timeout=min(1.0, self.cfg.timing.retry_timeout))
        except PostgresError as exc:
            log.warning("cannot read the quorum-commit state", extra={"event": "sync_observe", "error": str(exc)})
            return None

    def _count_quorum_refusal(self, d: Decision) -> None:
        """``pgquorum_quorum_promotion_refused_total``: once per leaderless episode, not once per loop."""
        verdict = d.quorum
        if verdict is None or verdict.eligible:
            return
        episode = d.memory.leaderless_since
        if episode is None or episode != self._refusal_counted_for:
            self._refusal_counted_for = episode
            self.metrics.count_quorum_refusal()

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
                self.pg.clone(upstream, timeout=CLONE_SECONDS)
                self.pg.start(timeout=STANDBY_START_SECONDS)
            case StartPostgres(as_primary=True):
                self.pg.write_config(None)
                self.pg.start(timeout=self.cfg.postgres.primary_start_timeout)
            case StartPostgres(as_primary=False, upstream=up):
                self.pg.prepare_standby(self._upstream(cluster, up))
                self.pg.start(timeout=STANDBY_START_SECONDS)
            case Rejoin(leader=leader):
                upstream = self._upstream(cluster, leader)
                assert upstream is not None
                if not self.pg.rewind(upstream, timeout=REWIND_SECONDS):
                    log.warning("pg_rewind impossible: re-cloning", extra={"event": "reinitialize", "leader": leader})
                    self.pg.reinitialize(upstream, timeout=CLONE_SECONDS)
                self.pg.start(timeout=STANDBY_START_SECONDS)
            case RequestVotes(term=want):
                self._run_election(cluster, want)
            case AdvanceTerm(expected_term=t):
                closed = self.dcs.advance_term(t)
                log.warning(
                    "closed a split election" if closed else "a split election was already closed or won",
                    extra={"event": "term_advanced" if closed else "term_advance_lost", "term": t + 1},
                )
            case DeleteVotes(up_to_term=t):
                deleted = self.dcs.delete_votes(t)
                log.debug("deleted settled vote keys", extra={"event": "votes_gc", "term": t, "deleted": deleted})
            case AcquireLeader(expected_term=t, votes=votes):
                new_term = self.dcs.acquire_leader(self.cfg.name, t, votes)
                if new_term is None:
                    log.info("lost the leader race", extra={"event": "race_lost", "term": t})
                    return
                self._acquired_at = self.clock.monotonic()
                if d.quorum is not None and d.quorum.possible_loss:
                    self.metrics.count_unproven_promotion()
                    log.error(
                        "took the leader key without a proven quorum",
                        extra={"event": "quorum_unproven", "term": new_term, "reason": d.quorum.reason},
                    )
                since = self.memory.leaderless_since
                self._election_seconds = None if since is None else round(self._acquired_at - since, 3)
                alive_at = self._leader_heartbeat[1]
                self._detection_seconds = (
                    None if since is None or alive_at is None or alive_at > since else round(since - alive_at, 3)
                )
                since = self.memory.since_term if self.memory.leader_term == t else new_term
                self.memory = replace(self.memory, leader_term=new_term, last_renew_sent=renewed_at, since_term=since)
                self.guard.update(self.memory)
                if self.pod_labels is not None:
                    # the old leader's pod out of -rw before ours goes in (it cannot relabel itself when cut off)
                    old = self._leader_before(cluster, new_term)
                    if old is not None:
                        self.pod_labels.demote(old.name, new_term)
                if d.election is not None:
                    self.metrics.count_election_won()
                log.warning(
                    "took the leader key",
                    extra={
                        "event": "leader_acquired",
                        "term": new_term,
                        "votes": [v for v, _ in votes],
                        "reason": d.election.reason if d.election is not None else None,
                    },
                )
                state = self.pg.state()
                if state.running and state.in_recovery is False:
                    # No promotion follows (an agent restarted beside its running primary, or a released
                    # key retaken): the term still moved, so history records it.
                    history = self.dcs.get_history()
                    previous = history[-1].new_leader if history else None
                    self.dcs.append_history(
                        HistoryEntry(
                            new_term,
                            state.timeline,
                            self.cfg.name,
                            previous,
                            "leader key retaken by the running primary",
                            self.clock.wall(),
                        )
                    )
            case Promote(term=t):
                allowed, why = self.stonith.may_promote(t, self._leader_before(cluster, t), self.cfg.timing.loop_wait)
                if not allowed:
                    level = logging.ERROR if self.stonith.blocked_reason(t) else logging.WARNING
                    log.log(level, why, extra={"event": "stonith_gate", "term": t})
                    return
                started = self.clock.monotonic()
                self.pg.promote(timeout=30)
                done = self.clock.monotonic()
                self._after_promotion(cluster, t, started, done)
            case Fence(reason=reason, kind=kind):
                elapsed = self.pg.fence()
                self.metrics.count_fence(kind or self.metrics.fence_kind(cluster))
                log.error(
                    "fenced: postgres stopped accepting writes",
                    extra={"event": "fence", "reason": reason, "term": term, "seconds": round(elapsed, 3)},
                )
            case ReleaseLeader(reason=reason):
                released = self.dcs.release_leader(self.cfg.name)
                log.error("released the leader key", extra={"event": "release", "reason": reason, "done": released})
            case Follow(leader=leader):
                self.pg.follow(self._upstream(cluster, leader))
            case HandOver(candidate=candidate, term=t, kind=kind):
                self._hand_over(cluster, candidate, t, kind)
            case ClearRequest(reason=reason, failed=failed):
                request = cluster.switchover if cluster else None
                if failed and request is not None:
                    self.dcs.set_switchover(replace(request, failed=reason))
                    log.error("request refused", extra={"event": "switchover_refused", "reason": reason})
                else:
                    self.dcs.clear_switchover()
            case RestartPostgres(as_primary=as_primary):
                self.pg.stop(mode="fast", timeout=self.cfg.postgres.stop_timeout)
                if not as_primary:
                    self.pg.prepare_standby(self.pg.configured_upstream())
                self.pg.start(timeout=self.cfg.postgres.primary_start_timeout if as_primary else STANDBY_START_SECONDS)
            case Reinitialize(leader=leader):
                upstream = self._upstream(cluster, leader)
                assert upstream is not None
                self.pg.reinitialize(upstream, timeout=CLONE_SECONDS)
                self.pg.start(timeout=STANDBY_START_SECONDS)
            case SetSyncStandbys(value=value, why=why):
                before = self.pg.standby_names
                self.pg.set_standby_names(value)
                log.warning(
                    "quorum commit: synchronous_standby_names changed",
                    extra={"event": "sync_postgres", "term": term, "old": before, "new": value, "why": why},
                )
            case WriteSyncRecord(leader=leader, k=k, voters=voters, why=why):
                expected = cluster.sync.mod_revision if cluster is not None and cluster.sync is not None else 0
                if not self.dcs.write_sync(SyncRecord(leader, k, voters), expected):
                    raise DCSError("sync record: the leader key or the record changed meanwhile (compare-and-swap)")
                log.warning(
                    "quorum commit: etcd sync record written",
                    extra={"event": "sync_record", "term": term, "k": k, "voters": list(voters), "why": why},
                )
            case PublishStatus(term=t, timeline=tl, wal_lsn=lsn, slot_members=names, leader=who):
                self.dcs.write_status(LeaderStatus(term=t, timeline=tl, wal_lsn=lsn, leader=who))
                if self._token_term != t:  # a leader that retook the key without promoting
                    self._write_fencing_token(t)
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
            # At once, not on the first leader pass: the name in it lets this member retake its key
            # if it loses it before quorum commit wrote its first record (quorum/candidate.py).
            if state.timeline is not None and state.wal_lsn is not None:
                self.dcs.write_status(LeaderStatus(term, state.timeline, state.wal_lsn, self.cfg.name))
        except (PostgresError, DCSError):
            self.dcs.cancel_initialize()
            raise

    def _write_fencing_token(self, term: int) -> None:
        try:
            write_term(self.pg, term, self.cfg.name)
            self._token_term = term
        except PostgresError as exc:  # retried next loop; clients see the older term meanwhile
            log.error(
                "writing the fencing token failed", extra={"event": "fencing_token", "term": term, "error": str(exc)}
            )

    def _leader_before(self, cluster: ClusterState | None, term: int) -> OldLeader | None:
        """Who led before ``term`` (to fence it); None after a switchover, whose old leader handed over."""
        if self._old_leader is None or self._old_leader[0] != term:
            history = self.dcs.get_history()
            previous = history[-1] if history else None
            old: OldLeader | None = None
            if previous is not None and previous.term < term and previous.new_leader != self.cfg.name:
                if cluster is not None and voted_for_us(previous.new_leader, self.cfg.name, term, cluster.votes):
                    log.info(
                        "the old leader voted for us: it had stopped writes, no STONITH",
                        extra={"event": "stonith_skipped", "old_leader": previous.new_leader, "term": term},
                    )
                else:
                    member = cluster.member(previous.new_leader) if cluster else None
                    host = urlsplit(member.conn_url).hostname if member and member.conn_url else None
                    old = OldLeader(previous.new_leader, member.api_url if member else None, host)
            self._old_leader = (term, old)
        return self._old_leader[1]

    def _after_promotion(self, cluster: ClusterState | None, term: int, started: float, done: float) -> None:
        self._write_fencing_token(term)
        state = self.pg.state()
        durations = {"promotion": round(done - started, 3)}
        if self._election_seconds is not None:
            durations["election"] = self._election_seconds
            self._election_seconds = None
        if self._detection_seconds is not None:
            durations["detection"] = self._detection_seconds
            self._detection_seconds = None
        history = self.dcs.get_history()
        previous = history[-1] if history else None
        if previous is not None and previous.term == term:
            # A switchover: the old leader already wrote this term's entry; add our promotion time.
            entry = replace(previous, timeline=state.timeline, durations={**previous.durations, **durations})
        else:
            old = previous.new_leader if previous else None
            entry = HistoryEntry(term, state.timeline, self.cfg.name, old, "failover", self.clock.wall(), durations)
        self.metrics.observe_promotion(entry.reason, durations)
        self.dcs.append_history(entry)
        if state.timeline is not None and state.wal_lsn is not None:
            self.dcs.write_status(LeaderStatus(term, state.timeline, state.wal_lsn, self.cfg.name))
        log.warning(
            "promoted",
            extra={
                "event": "promoted",
                "term": term,
                "timeline": state.timeline,
                "old_leader": entry.old_leader,
                "reason": entry.reason,
                **durations,
            },
        )

    def _hand_over(self, cluster: ClusterState | None, candidate: str, term: int, kind: str) -> None:
        """Planned switchover: nothing acknowledged may be lost, so the candidate must have received
        our shutdown checkpoint before it gets the key."""
        assert cluster is not None
        member = cluster.member(candidate)
        upstream = self._upstream(cluster, candidate)
        assert member is not None and upstream is not None
        started = self.clock.monotonic()
        try:  # a checkpoint now makes the shutdown checkpoint (while writes are refused) short
            self.pg.execute("CHECKPOINT", timeout=10)
        except PostgresError as exc:
            log.warning("pre-switchover checkpoint failed", extra={"event": "switchover", "error": str(exc)})
        checkpointed = self.clock.monotonic()
        self.pg.stop(mode="fast", timeout=self.cfg.postgres.stop_timeout)
        stopped = self.clock.monotonic()
        shutdown_lsn = self.pg.control_data().checkpoint_lsn or 0
        deadline = stopped + 5.0
        caught_up = False
        while self.clock.monotonic() < deadline:
            try:
                received = self.pg.member_received_lsn(upstream, timeout=1.0)
            except PostgresError:
                received = None
            if received is not None and received > shutdown_lsn:
                caught_up = True
                break
            threading.Event().wait(0.01)
        new_term = self.dcs.handover_leader(self.cfg.name, candidate, term) if caught_up else None
        if new_term is None:
            why = (
                f"{candidate} did not receive the shutdown checkpoint within 5 s"
                if not caught_up
                else "the leader key or term changed during the handover"
            )
            log.error("switchover aborted: restarting as primary", extra={"event": "switchover", "reason": why})
            request = cluster.switchover
            if request is not None:
                self.dcs.set_switchover(replace(request, failed=f"{kind} aborted: {why}"))
            self.pg.start(timeout=self.cfg.postgres.primary_start_timeout)
            return
        handed = self.clock.monotonic()
        self.memory = replace(self.memory, leader_term=None, last_renew_sent=None, since_term=None)
        self.guard.update(self.memory)
        self._follow_leadership()
        durations = {
            "checkpoint": round(checkpointed - started, 3),
            "stop": round(stopped - checkpointed, 3),
            "catch_up": round(handed - stopped, 3),
        }
        self.dcs.append_history(
            HistoryEntry(new_term, None, candidate, self.cfg.name, kind, self.clock.wall(), durations)
        )
        self.dcs.clear_switchover()
        log.warning(
            "handed the leader key over",
            extra={"event": "switchover", "new_leader": candidate, "term": new_term, **durations},
        )
        self.pg.prepare_standby(upstream)
        self.pg.start(timeout=STANDBY_START_SECONDS)

    # -- operator requests (called from API threads) ----------------------------------------
    def _cdcs(self) -> DCS:
        if self._control_dcs is None:
            raise ControlError(503, "this agent was started without an etcd client for operator requests")
        return self._control_dcs

    def _control_cluster(self) -> ClusterState:
        try:
            with self._control_lock:
                return self._cdcs().get_cluster()
        except DCSError as exc:
            raise ControlError(503, f"etcd unreachable from {self.cfg.name}: {exc}; try another member") from None

    def _store_request(self, request: SwitchoverRequest) -> None:
        try:
            with self._control_lock:
                self._cdcs().set_switchover(request)
        except DCSError as exc:
            raise ControlError(503, f"could not store the request in etcd: {exc}") from None
        self.wake.set()

    def switchover(self, candidate: str | None, scheduled_at: float | None, wait: bool) -> Accepted:
        cluster = self._control_cluster()
        if cluster.leader is None:
            raise ControlError(409, "no leader: a switchover needs a healthy leader; use failover with a candidate")
        leader = cluster.member(cluster.leader.name)
        pending = cluster.switchover
        if pending is not None and not pending.failed:
            raise ControlError(409, f"a {pending.kind} to {pending.candidate or 'the best replica'} is already pending")
        if candidate is not None:
            chosen, problem = switchover_candidate(
                candidate, cluster, cluster.leader.name, leader.timeline if leader else None
            )
            if chosen is None:
                raise ControlError(409 if cluster.member(candidate) else 400, problem, "candidate")
        if scheduled_at is not None and scheduled_at < self.clock.wall() - 1:
            raise ControlError(400, "scheduled_at is in the past; give a future time or omit it", "scheduled_at")
        self._store_request(
            SwitchoverRequest("switchover", candidate, cluster.leader.name, self.clock.wall(), scheduled_at)
        )
        if scheduled_at is not None or not wait:
            when = "scheduled" if scheduled_at is not None else "requested"
            return Accepted(f"switchover from {cluster.leader.name} to {candidate or 'the best replica'} {when}")
        return self._await_new_leader(cluster.leader.name, candidate, "switchover")

    def failover(self, candidate: str, wait: bool) -> Accepted:
        cluster = self._control_cluster()
        member = cluster.member(candidate)
        if member is None or member.witness:
            known = ", ".join(m.name for m in cluster.members if not m.witness)
            raise ControlError(400, f"candidate {candidate} is not a data member (members: {known})", "candidate")
        if member.nofailover:
            raise ControlError(409, f"candidate {candidate} is tagged nofailover", "candidate")
        best = max((m for m in cluster.members if not m.witness), key=lambda m: m.best_lsn() or 0)
        behind = (best.best_lsn() or 0) - (member.best_lsn() or 0)
        warning = None
        if behind > 0:
            warning = (
                f"{candidate} is {behind} bytes behind {best.name}: writes acknowledged by the old "
                "leader but not received by the candidate will be lost"
            )
        old = cluster.leader.name if cluster.leader else None
        if old == candidate:
            raise ControlError(409, f"{candidate} is already the leader", "candidate")
        self._store_request(SwitchoverRequest("failover", candidate, old, self.clock.wall()))
        if not wait:
            return Accepted(f"failover to {candidate} requested", warning)
        done = self._await_new_leader(old, candidate, "failover")
        return Accepted(done.message, warning, done.details)

    def _await_new_leader(self, old: str | None, candidate: str | None, kind: str, timeout: float = 30.0) -> Accepted:
        started = self.clock.monotonic()
        while self.clock.monotonic() - started < timeout:
            cluster = self._control_cluster()
            request = cluster.switchover
            if request is not None and request.failed:
                with self._control_lock:
                    self._cdcs().clear_switchover()
                raise ControlError(409, request.failed)
            leader = cluster.leader.name if cluster.leader else None
            if leader is not None and leader != old and (candidate is None or leader == candidate):
                member = cluster.member(leader)
                if member is not None and member.role is Role.LEADER:
                    took = round(self.clock.monotonic() - started, 3)
                    return Accepted(
                        f"{kind} done: {leader} leads term {cluster.term}",
                        details={"leader": leader, "term": cluster.term, "seconds": took},
                    )
            threading.Event().wait(0.05)
        raise ControlError(504, f"{kind} not completed within {timeout:g}s; the request stays pending in etcd")

    def restart(self) -> Accepted:
        self._command = "restart"
        self.wake.set()
        return Accepted(f"restart of {self.cfg.name}'s postgres scheduled for the next HA loop")

    def reinitialize(self) -> Accepted:
        view = self.view
        cluster = view.cluster
        if cluster is not None and cluster.leader is not None and cluster.leader.name == self.cfg.name:
            raise ControlError(409, f"{self.cfg.name} is the leader: switch over first, then reinitialize it")
        if cluster is None or cluster.leader is None:
            raise ControlError(409, "no leader to clone from: reinitialize needs a healthy leader")
        self._command = "reinitialize"
        self.wake.set()
        return Accepted(f"{self.cfg.name} will be wiped and cloned again from {cluster.leader.name}")

    def history(self) -> list[HistoryEntry]:
        try:
            with self._control_lock:
                return self._cdcs().get_history()
        except DCSError as exc:
            raise ControlError(503, f"etcd unreachable from {self.cfg.name}: {exc}") from None

    def dynamic_config(self) -> dict[str, object]:
        cluster = self._control_cluster()
        return effective_dynamic(self.cfg, cluster.config)

    def patch_config(self, changes: dict[str, object]) -> dict[str, object]:
        try:
            valid = validate_dynamic(dict(changes))
        except ConfigError as exc:
            field = str(exc).split(":", 1)[0]
            raise ControlError(400, str(exc), field) from None
        cluster = self._control_cluster()
        current = cluster.config or {}
        if isinstance(valid.get("synchronous"), dict):
            # a PATCH of one quorum setting keeps the others (a JSON merge patch: None removes one)
            before = current.get("synchronous")
            nested = {**(before if isinstance(before, dict) else {}), **valid["synchronous"]}
            valid["synchronous"] = {k: v for k, v in nested.items() if v is not None} or None
        merged = {k: v for k, v in {**current, **valid}.items() if v is not None}
        try:
            with self._control_lock:
                stored = self._cdcs().set_config(merged, cluster.revision)
        except DCSError as exc:
            raise ControlError(503, f"could not store the configuration: {exc}") from None
        if not stored:
            raise ControlError(409, "the configuration changed meanwhile; read it again and retry")
        return effective_dynamic(self.cfg, merged)

    def _guard_fence(self, reason: str) -> None:
        elapsed = self.pg.fence()
        self.metrics.count_fence("guard")
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
            conn_url=f"postgres://{self.cfg.postgres.advertised_host}:{self.cfg.postgres.port}/postgres",
            timeline=pg.timeline,
            received_lsn=pg.received_lsn,
            replayed_lsn=pg.replayed_lsn,
            wal_lsn=pg.wal_lsn,
            term=cluster.term,
            nofailover=self.cfg.nofailover,
        )
        if self.pod_labels is not None:
            self.pod_labels.publish(pod_role(member.role), cluster.term)
        try:
            # The key lives on our lease, which each loop renews: rewrite it only when it changed.
            if cluster.member(self.cfg.name) != member:
                self.dcs.touch_member(member)
            unregistered = self.voter is not None and all(v.name != self.cfg.name for v in cluster.voters)
            # Once: from now on our vote counts, and our absence too (invariant I5).
            if unregistered and self.dcs.register_voter(VoterEntry(self.cfg.name, witness=False)):
                log.warning("registered as a voting member", extra={"event": "voter_registered"})
        except DCSError as exc:
            log.warning("cannot publish member key", extra={"event": "touch_failed", "error": str(exc)})

    def _log_decision(self, d: Decision, cluster: ClusterState | None) -> None:
        term = cluster.term if cluster else self.memory.leader_term
        if d.alert:
            # A standing alert (e.g. quorum commit degraded) is repeated every 10 s, not every loop.
            now = self.clock.monotonic()
            last = self._last_alert
            if last is None or last[0] != d.alert or d.reason != self._last_reason or now - last[1] >= 10.0:
                log.error(d.reason, extra={"event": "alert", "alert": d.alert, "term": term})
                self._last_alert = (d.alert, now)
        elif d.reason != self._last_reason:
            log.info(d.reason, extra={"event": "decision", "role": d.role.value, "term": term})
        self._last_reason = d.reason


def _consumes_command(d: Decision) -> bool:
    """An operator command is used up once a decision acted on it or refused it."""
    return any(isinstance(a, RestartPostgres | Reinitialize) for a in d.actions) or d.reason.startswith(
        ("reinitialize refused", "unknown operator command")
    )


def pg_state_word(pg: PostgresState) -> str:
    if not pg.data_initialized:
        return "uninitialized"
    if not pg.running:
        return "stopped"
    if not pg.accepting_connections:
        return "starting"
    return "streaming" if pg.streaming else "running"
