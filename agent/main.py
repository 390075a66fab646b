"""``pgquorum agent --config FILE``: wire the validated config to etcd, postgres, the loop and the API."""

from __future__ import annotations

import logging
import os
import signal
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from pgquorum.agent import resolver
from pgquorum.agent.api.server import ApiServer
from pgquorum.agent.clock import SystemClock
from pgquorum.agent.config import AgentConfig, load_config
from pgquorum.agent.dcs.etcd import EtcdDCS
from pgquorum.agent.dcs.etcd_watch import LeaderWatch
from pgquorum.agent.logs import setup_logging
from pgquorum.agent.quorum.voter import VoterService
from pgquorum.agent.witness.loop import WitnessLoop

if TYPE_CHECKING:  # a witness never imports the PostgreSQL side (psycopg): see build()
    from pgquorum.agent.ha.loop import HaLoop

log = logging.getLogger("pgquorum.agent")


def build(cfg: AgentConfig) -> tuple[HaLoop | WitnessLoop, ApiServer]:
    def etcd_client() -> EtcdDCS:
        return EtcdDCS(
            cfg.etcd_endpoints,
            prefix=cfg.etcd_prefix,
            cluster=cfg.cluster,
            member=cfg.name,
            ttl=int(cfg.timing.ttl),
            timeout=cfg.timing.retry_timeout,
        )

    dcs = etcd_client()
    clock = SystemClock()
    # /vote runs on API threads: its etcd calls get their own client (EtcdDCS is not thread-safe).
    voter = VoterService(cfg.name, cfg.witness, cfg.timing.ttl, etcd_client(), clock) if cfg.quorum_votes else None
    if cfg.witness:
        assert voter is not None  # config refuses a witness with quorum_votes: false
        witness = WitnessLoop(cfg, dcs, voter, clock)
        witness.watch = LeaderWatch(cfg.etcd_endpoints, dcs.base + "leader", witness.wake.set)
        return witness, ApiServer(witness, cfg.api_listen)
    from pgquorum.agent.ha.loop import HaLoop
    from pgquorum.agent.postgres.controller import PostgresController

    pg = PostgresController(cfg.postgres, cfg.name)
    pod_labels = None
    if cfg.kubernetes is not None:
        from pgquorum.agent.podrole import labeler_for

        pod_labels = labeler_for(cfg.kubernetes)  # ConfigError (unreadable token, ...) stops the start
        pod_labels.start()
    # Operators' requests get their own client: EtcdDCS is not thread-safe and the loop owns ``dcs``.
    loop = HaLoop(cfg, dcs, pg, clock, control_dcs=etcd_client(), voter=voter, pod_labels=pod_labels)
    loop.watch = LeaderWatch(cfg.etcd_endpoints, dcs.base + "leader", loop.wake.set)
    api = ApiServer(loop, cfg.api_listen)
    return loop, api


def run_agent(config_path: Path) -> int:
    cfg = load_config(config_path)  # ConfigError is turned into a one-line message by the CLI
    setup_logging(cfg.name, cfg.log_level)
    resolver.install()  # a stalled DNS server must not stall the loop (agent/resolver.py)
    if os.geteuid() == 0 and cfg.postgres.run_as is None and not cfg.witness:
        log.info("running as root: postgres commands run as the 'postgres' user", extra={"event": "start"})
    loop, api = build(cfg)
    api.start()
    log.info(
        "agent started",
        extra={
            "event": "start",
            "cluster": cfg.cluster,
            "api": cfg.api_url,
            "ttl": cfg.timing.ttl,
            "loop_wait": cfg.timing.loop_wait,
            "fence_after": cfg.timing.fence_after(),
        },
    )
    stopping = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        log.info("signal received: shutting down", extra={"event": "shutdown", "signal": signal.Signals(signum).name})
        stopping.set()
        loop.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    worker = threading.Thread(target=loop.run, name="ha-loop", daemon=True)
    worker.start()
    while worker.is_alive() and not stopping.is_set():
        stopping.wait(0.5)
    worker.join(timeout=cfg.timing.loop_wait + 2 * cfg.timing.retry_timeout + 1)
    loop.shutdown()
    api.stop()
    log.info("agent stopped", extra={"event": "stopped"})
    return 0
