"""A small, real stand-in for the HA loop as the REST API sees it (plain data, no mock library).

``FakeLoop`` has the attributes ``ApiLoop`` asks for (cfg, view, memory, guard, clock) and
implements the ``Control`` protocol by recording calls and returning ``Accepted`` (or raising what a
test puts in ``fail``). Scenario helpers set the view for each role.
"""

from __future__ import annotations

import threading
from dataclasses import replace
from pathlib import Path
from typing import Any

from pgquorum.agent.config import AgentConfig, ApiSettings, PostgresSettings, Timing
from pgquorum.agent.ha.control import Accepted
from pgquorum.agent.ha.decide import Memory
from pgquorum.agent.ha.loop import LoopView
from pgquorum.agent.model import (
    ClusterState,
    HistoryEntry,
    LeaderInfo,
    LeaderStatus,
    MemberInfo,
    PostgresState,
    Role,
)

TOKEN = "s3cret-token-0123456789abcdef"
TERM = 4
LEADER_LSN = 0x3000000


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0
        self.wall_now = 1_800_000_000.0

    def monotonic(self) -> float:
        return self.now

    def wall(self) -> float:
        return self.wall_now


class FakeGuard:
    def __init__(self) -> None:
        self.valid = False

    def lease_valid(self) -> bool:
        return self.valid


def make_cfg(name: str = "pg1", api: ApiSettings | None = None, timing: Timing | None = None) -> AgentConfig:
    return AgentConfig(
        name=name,
        cluster="main",
        etcd_endpoints=("http://127.0.0.1:2379",),
        api_listen="127.0.0.1:0",
        api_url="http://127.0.0.1:0",
        postgres=PostgresSettings(data_dir=Path("/nonexistent/pgdata"), bin_dir=Path("/nonexistent/bin")),
        timing=timing or Timing(),
        api=api or ApiSettings(),
    )


def member(name: str, role: Role, **kw: Any) -> MemberInfo:
    return MemberInfo(name=name, role=role, state="running", api_url="", conn_url="", term=TERM, timeline=2, **kw)


def cluster(leader: str | None = "pg1", leader_lsn: int = LEADER_LSN, **kw: Any) -> ClusterState:
    members = tuple(
        member(n, Role.LEADER if n == leader else Role.REPLICA, wal_lsn=leader_lsn if n == leader else None)
        for n in ("pg1", "pg2", "pg3")
    )
    return ClusterState(
        revision=10,
        initialize="7300000000000000001",
        leader=LeaderInfo(leader, 5, 99) if leader else None,
        term=TERM,
        members=members,
        status=LeaderStatus(TERM, 2, leader_lsn) if leader else None,
        **kw,
    )


PRIMARY_PG = PostgresState(
    data_initialized=True, running=True, accepting_connections=True, in_recovery=False, timeline=2, wal_lsn=LEADER_LSN
)


def replica_pg(received: int = LEADER_LSN, replayed: int | None = None, streaming: bool = True) -> PostgresState:
    return PostgresState(
        data_initialized=True,
        running=True,
        accepting_connections=True,
        in_recovery=True,
        timeline=2,
        received_lsn=received,
        replayed_lsn=received if replayed is None else replayed,
        upstream="pg1",
        streaming=streaming,
    )


class FakeLoop:
    """Implements ApiLoop + Control. ``fail``: an exception the next Control call raises."""

    def __init__(self, name: str = "pg1", api: ApiSettings | None = None) -> None:
        self.cfg = make_cfg(name, api)
        self.clock = FakeClock()
        self.guard = FakeGuard()
        self.memory = Memory()
        self.view = LoopView(None, PostgresState(False, False), None, False, self.clock.now)
        self.calls: list[tuple[Any, ...]] = []
        self.fail: Exception | None = None
        self.block: threading.Event | None = None  # Control calls wait on it when set
        self.config: dict[str, Any] = {"maximum_lag_on_failover": 1048576, "primary_start_timeout": 10.0}
        self.history_entries = [HistoryEntry(1, 1, "pg1", None, "bootstrap", 1_700_000_000.0)]

    # -- scenarios ----------------------------------------------------------------------------
    def set_view(self, pg: PostgresState, c: ClusterState | None) -> FakeLoop:
        self.view = LoopView(c, pg, None, c is not None, self.clock.now)
        return self

    def as_leader(self, lease_valid: bool = True) -> FakeLoop:
        self.memory = Memory(leader_term=TERM, last_renew_sent=self.clock.now)
        self.guard.valid = lease_valid
        return self.set_view(PRIMARY_PG, cluster("pg1"))

    def as_replica(self, **kw: Any) -> FakeLoop:
        self.memory = Memory()
        self.guard.valid = False
        return self.set_view(replica_pg(**kw), cluster("pg1"))

    def advance(self, seconds: float, leader_lsn: int | None = None, pg: PostgresState | None = None) -> None:
        """Time passes and the loop publishes a new view (optionally with a new leader position)."""
        self.clock.now += seconds
        c = self.view.cluster
        if leader_lsn is not None:
            c = cluster("pg1", leader_lsn)
        self.view = replace(self.view, cluster=c, pg=pg or self.view.pg, last_loop_at=self.clock.now)

    # -- Control ------------------------------------------------------------------------------
    def _call(self, *call: Any) -> None:
        self.calls.append(call)
        if self.block is not None:
            self.block.wait(10)
        if self.fail is not None:
            raise self.fail

    def switchover(self, candidate: str | None, scheduled_at: float | None, wait: bool) -> Accepted:
        self._call("switchover", candidate, scheduled_at, wait)
        return Accepted("switchover done", None, {"leader": candidate or "pg2", "term": TERM + 1})

    def failover(self, candidate: str, wait: bool) -> Accepted:
        self._call("failover", candidate, wait)
        return Accepted(f"failover to {candidate} done", "pg2 is 10 bytes behind pg3", {"leader": candidate})

    def restart(self) -> Accepted:
        self._call("restart")
        return Accepted("restart scheduled")

    def reinitialize(self) -> Accepted:
        self._call("reinitialize")
        return Accepted("reinitialize scheduled")

    def history(self) -> list[HistoryEntry]:
        self._call("history")
        return list(self.history_entries)

    def dynamic_config(self) -> dict[str, Any]:
        self._call("dynamic_config")
        return dict(self.config)

    def patch_config(self, changes: dict[str, Any]) -> dict[str, Any]:
        self._call("patch_config", changes)
        self.config.update(changes)
        return dict(self.config)


class ReadOnlyLoop:
    """A loop without Control methods: read-only routes work, operator requests answer 501."""

    def __init__(self) -> None:
        inner = FakeLoop().as_leader()
        self.cfg = inner.cfg
        self.clock = inner.clock
        self.guard = inner.guard
        self.memory = inner.memory
        self.view = inner.view


class FakeMetrics:
    def render(self) -> tuple[bytes, str]:
        return b"# HELP pgquorum_up 1\npgquorum_up 1\n", "text/plain; version=0.0.4; charset=utf-8"
