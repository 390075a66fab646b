"""The witness: a voting member without PostgreSQL (invariant I5), so 2 data members + 1 witness is
a safe cluster (any one of the three may be lost and writes go on; losing two stops them).

Its loop, every ``loop_wait`` (and at once when the leader key changes):

1. renew its lease and read the cluster from etcd (one range read);
2. register as a voter once (``voters/<name>``) and fold the read into its ``VoterService``: the
   term, its own vote keys; while there is no leader key, ask the data members' ``/health``
   whether a writable primary is still alive (an early refusal of votes; promises are the guard);
3. publish its member key (``MemberInfo.witness``, role ``witness``).

The API (same server as a data member's) answers ``POST /vote``, ``POST /promise``, ``/health``
(200 while this loop runs), ``/liveness``, ``/cluster`` and ``/metrics``; operator routes answer 501.
Nothing on this path imports psycopg: an idle witness stays small (see the README for its RSS).
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor

from pgquorum.agent.clock import Clock
from pgquorum.agent.config import AgentConfig
from pgquorum.agent.dcs.base import DCS, DCSError
from pgquorum.agent.dcs.etcd_watch import LeaderWatch
from pgquorum.agent.ha.decide import Memory
from pgquorum.agent.ha.view import LoopView
from pgquorum.agent.metrics import AgentMetrics
from pgquorum.agent.model import ClusterState, MemberInfo, PostgresState, Role, VoterEntry
from pgquorum.agent.quorum.peers import fetch_peer_status
from pgquorum.agent.quorum.voter import LocalView, VoterService

log = logging.getLogger("pgquorum.witness")

NO_POSTGRES = PostgresState(data_initialized=False, running=False)


class _NoLease:
    """A witness never leads: ``/primary`` is always 503."""

    def lease_valid(self) -> bool:
        return False


class WitnessLoop:
    def __init__(self, cfg: AgentConfig, dcs: DCS, voter: VoterService, clock: Clock, watch: LeaderWatch | None = None):
        self.cfg = cfg
        self.dcs = dcs
        self.voter = voter
        self.clock = clock
        self.watch = watch
        self.memory = Memory()  # never leads; the API reads it
        self.guard = _NoLease()
        self.wake = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._view = LoopView(None, NO_POSTGRES, None, False, clock.monotonic(), witness=True)
        self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="probe")
        self.metrics = AgentMetrics(cfg.name, cfg.cluster, cfg.timing, clock.monotonic)
        voter.on_answer = self.metrics.count_answer
        self._voting_members = 0
        self.metrics.voting_members = lambda: self._voting_members

    @property
    def view(self) -> LoopView:
        with self._lock:
            return self._view

    def run(self) -> None:
        if self.watch is not None:
            self.watch.start()
        while not self._stop.is_set():
            started = self.clock.monotonic()
            try:
                self.run_once()
            except Exception:  # the witness must keep answering whatever happens
                log.exception("witness loop iteration failed", extra={"event": "loop_error"})
            remaining = started + self.cfg.timing.loop_wait - self.clock.monotonic()
            if remaining > 0:
                self.wake.wait(remaining)
            self.wake.clear()

    def stop(self) -> None:
        self._stop.set()
        self.wake.set()
        if self.watch is not None:
            self.watch.stop()
        self._pool.shutdown(wait=False, cancel_futures=True)

    def run_once(self) -> None:
        started = self.clock.monotonic()
        try:
            self.dcs.ensure_lease()
            if not self.dcs.keepalive():
                self.dcs.ensure_lease()
            cluster: ClusterState | None = self.dcs.get_cluster()
        except DCSError as exc:
            log.warning("cannot reach etcd", extra={"event": "dcs_unreachable", "error": str(exc)})
            cluster = None
        if cluster is None:
            self.voter.etcd_lost(LocalView(etcd_ok=False))
        else:
            self._voting_members = len(cluster.voting_members(self.cfg.name))
            live = self._live_primary(cluster) if cluster.leader is None else None
            own = [(v.term, v.candidate) for v in cluster.votes if v.voter == self.cfg.name]
            local = LocalView(
                etcd_ok=True,
                term=cluster.term,
                leader=cluster.leader.name if cluster.leader else None,
                live_primary=live,
            )
            self.voter.observe(cluster.term, own, local)
            self._publish(cluster)
        now = self.clock.monotonic()
        with self._lock:
            self._view = LoopView(cluster, NO_POSTGRES, None, cluster is not None, now, witness=True)
        self.metrics.observe_loop(self._view, now - started, now, memory=self.memory)

    def _live_primary(self, cluster: ClusterState) -> str | None:
        """No leader key: is a data member still a running, writable primary? (best effort, bounded)"""
        timeout = min(0.5, self.cfg.timing.retry_timeout)
        data = [m for m in cluster.members if not m.witness and m.name != self.cfg.name]
        for status in self._pool.map(lambda m: fetch_peer_status(m, timeout), data):
            if status.reachable and status.postgres_running and status.in_recovery is False:
                return status.name
        return None

    def _publish(self, cluster: ClusterState) -> None:
        member = MemberInfo(
            name=self.cfg.name,
            role=Role.WITNESS,
            state="running",
            api_url=self.cfg.api_url,
            conn_url="",
            term=cluster.term,
            witness=True,
        )
        try:
            self.dcs.touch_member(member)
            unregistered = all(v.name != self.cfg.name for v in cluster.voters)
            if unregistered and self.dcs.register_voter(VoterEntry(self.cfg.name, witness=True)):
                log.warning("registered as a voting member (witness)", extra={"event": "voter_registered"})
        except DCSError as exc:
            log.warning("cannot publish the member key", extra={"event": "touch_failed", "error": str(exc)})

    def shutdown(self) -> None:
        self.stop()
