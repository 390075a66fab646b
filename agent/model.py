"""Immutable snapshots shared by the DCS layer, the PostgreSQL controller and the HA decision.

Everything here is plain data: the decision function (``pgquorum.agent.ha.decide``) reads only these
types, so it can be unit- and property-tested without any process running.
LSNs are plain integers (byte positions); ``lsn_to_str``/``parse_lsn`` convert to PostgreSQL's text form.
"""

from __future__ import annotations

import enum
import json
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # votes.py imports this module: the type only, never at run time
    from pgquorum.agent.quorum.votes import Vote


class Role(enum.StrEnum):
    """What a member is, as published in its member key and the REST API."""

    LEADER = "leader"  # holds the leader key and runs a writable primary
    REPLICA = "replica"  # streams from the leader
    STANDBY = "standby"  # in recovery, not (yet) streaming from the current leader
    DEMOTED = "demoted"  # fenced itself: a former primary that stopped accepting writes
    WITNESS = "witness"  # voting member without PostgreSQL
    UNINITIALIZED = "uninitialized"  # no data directory yet
    STOPPED = "stopped"  # postgres is not running


def parse_lsn(text: str | None) -> int | None:
    """``'0/3000060'`` -> byte position; None stays None."""
    if not text:
        return None
    hi, _, lo = text.partition("/")
    return (int(hi, 16) << 32) + int(lo, 16)


def lsn_to_str(lsn: int | None) -> str | None:
    if lsn is None:
        return None
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


@dataclass(frozen=True)
class MemberInfo:
    """One member's self-description, kept in etcd under ``members/<name>`` on the member's lease."""

    name: str
    role: Role
    state: str  # human-readable postgres state: running, starting, stopped, crashed, fenced, ...
    api_url: str
    conn_url: str  # libpq URL of this member's postgres (no password)
    timeline: int | None = None
    received_lsn: int | None = None  # replica: last WAL received / flushed from upstream
    replayed_lsn: int | None = None  # replica: last WAL replayed
    wal_lsn: int | None = None  # leader: current WAL insert/flush position
    term: int = 0  # the cluster term this member last knew
    nofailover: bool = False
    witness: bool = False

    def best_lsn(self) -> int | None:
        """The position that counts for failover: what the member has durably received."""
        candidates = [x for x in (self.wal_lsn, self.received_lsn, self.replayed_lsn) if x is not None]
        return max(candidates) if candidates else None

    def to_json(self) -> str:
        data = asdict(self)
        data["role"] = self.role.value
        return json.dumps(data, sort_keys=True)

    @classmethod
    def from_json(cls, name: str, raw: str | bytes) -> MemberInfo:
        data: dict[str, Any] = json.loads(raw)
        data["name"] = name
        data["role"] = Role(data.get("role", Role.STOPPED.value))
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass(frozen=True)
class LeaderInfo:
    name: str
    mod_revision: int  # for compare-and-swap on the leader key
    lease_id: int


@dataclass(frozen=True)
class LeaderStatus:
    """Last position the leader published (``status`` key, no lease: survives the leader's death).

    Used for ``maximum_lag_on_failover`` and the newest-timeline rule: a candidate is compared with
    the leader that just died, not only with the peers it happens to hear from (Patroni #2175).
    """

    term: int
    timeline: int
    wal_lsn: int
    # Who wrote it (None in keys written before agents recorded it): with no quorum record yet,
    # only this member may retake the key under durability required (quorum/candidate.py).
    leader: str | None = None
    # etcd revision of the key when read (not stored, not part of equality): the leader's heartbeat
    mod_revision: int = field(default=0, compare=False)


@dataclass(frozen=True)
class HistoryEntry:
    """One leadership change: failover, switchover or bootstrap."""

    term: int
    timeline: int | None
    new_leader: str
    old_leader: str | None
    reason: str
    at: float  # wall-clock seconds (for humans; never used for timing decisions)
    durations: dict[str, float] = field(default_factory=dict)  # detection / election / promotion

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, raw: str | bytes) -> HistoryEntry:
        data: dict[str, Any] = json.loads(raw)
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass(frozen=True)
class SwitchoverRequest:
    """An operator's request (``switchover`` key): planned handover, or manual failover to a member.

    ``kind`` is ``switchover`` (needs a healthy leader, zero loss) or ``failover`` (named candidate;
    allowed without a leader). ``failed`` is set by the agent that gave up, with the reason.
    Times are unix seconds: requests travel between machines, monotonic clocks do not.
    """

    kind: str
    candidate: str | None
    leader: str | None  # the leader when requested (a switchover is void once leadership moved)
    requested_at: float
    scheduled_at: float | None = None
    failed: str | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, raw: str | bytes) -> SwitchoverRequest:
        data: dict[str, Any] = json.loads(raw)
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass(frozen=True)
class SyncRecord:
    """The ``sync`` key: the quorum the leader keeps (invariant I4), ``{leader, k, voters}``.

    Postgres acknowledges a commit only once ``k`` of the standbys it lists confirmed it, and the
    leader keeps that list within ``voters``; so a candidate that reads ``len(voters) - k + 1``
    voters (itself included) always meets one that has every acknowledged commit. ``k == 0``
    means no quorum is promised (asynchronous, or not established yet): nothing can be proven.
    ``mod_revision`` is the key's, for compare-and-swap (0: the key does not exist).
    """

    leader: str
    k: int
    voters: tuple[str, ...]
    mod_revision: int = 0

    def to_json(self) -> str:
        return json.dumps({"leader": self.leader, "k": self.k, "voters": sorted(self.voters)}, sort_keys=True)

    @classmethod
    def from_json(cls, raw: str | bytes, mod_revision: int = 0) -> SyncRecord:
        data: dict[str, Any] = json.loads(raw)
        voters = data.get("voters", [])
        if not isinstance(voters, list) or not all(isinstance(v, str) for v in voters):
            raise ValueError("voters: expected a list of member names")
        k = data.get("k", 0)
        if isinstance(k, bool) or not isinstance(k, int) or k < 0:
            raise ValueError(f"k: expected an integer >= 0, got {k!r}")
        return cls(str(data.get("leader", "")), k, tuple(sorted(set(voters))), mod_revision)


@dataclass(frozen=True)
class VoterEntry:
    """One voting member as registered under ``voters/<name>`` (created once, never on a lease)."""

    name: str
    witness: bool = False

    def to_json(self) -> str:
        return json.dumps({"witness": self.witness}, sort_keys=True)

    @classmethod
    def from_json(cls, name: str, raw: str | bytes) -> VoterEntry:
        data = json.loads(raw)
        witness = data.get("witness", False) if isinstance(data, dict) else None
        if not isinstance(witness, bool):
            raise ValueError("witness: expected true or false")
        return cls(name, witness)


@dataclass(frozen=True)
class ClusterState:
    """One consistent read of the cluster's keys in etcd (a single range request, one revision)."""

    revision: int
    initialize: str | None  # None: nobody claimed bootstrap; "" : claimed, not done; else system id
    leader: LeaderInfo | None
    term: int  # 0 before the first leader
    members: tuple[MemberInfo, ...]
    status: LeaderStatus | None = None
    config: dict[str, Any] | None = None  # dynamic settings (PATCH /config)
    switchover: SwitchoverRequest | None = None
    sync: SyncRecord | None = None  # quorum commit record (``sync`` key), None when absent
    # Voting members (``voters/<name>``, no lease): a dead member keeps its vote counted, so losing
    # two of 2 data + 1 witness stops writes instead of shrinking the majority (invariant I5).
    voters: tuple[VoterEntry, ...] = ()
    votes: tuple[Vote, ...] = ()  # vote keys present (``votes/<term>/<voter>``), any term

    def member(self, name: str) -> MemberInfo | None:
        for m in self.members:
            if m.name == name:
                return m
        return None

    def voting_members(self, me: str | None = None) -> tuple[str, ...]:
        """Registered voters, plus ``me`` (an agent counts itself before its own key is read back)."""
        names = {v.name for v in self.voters}
        if me is not None:
            names.add(me)
        return tuple(sorted(names))


@dataclass(frozen=True)
class PostgresState:
    """What the local PostgreSQL looks like right now (from the controller, over psycopg)."""

    data_initialized: bool  # PGDATA holds a cluster (PG_VERSION present)
    running: bool
    accepting_connections: bool = False
    in_recovery: bool | None = None
    timeline: int | None = None
    system_id: str | None = None
    wal_lsn: int | None = None  # primary: pg_current_wal_flush_lsn()
    received_lsn: int | None = None  # standby: pg_last_wal_receive_lsn()
    replayed_lsn: int | None = None  # standby: pg_last_wal_replay_lsn()
    upstream: str | None = None  # standby: the member name in primary_conninfo's application_name
    streaming: bool = False  # standby: WAL receiver is streaming
    replay_lag_seconds: float | None = None  # standby: 0 when caught up, else age of the last replayed commit
    was_primary: bool = False  # pg_controldata says the cluster last ran as a primary
    pid: int | None = None

    def best_lsn(self) -> int | None:
        candidates = [x for x in (self.wal_lsn, self.received_lsn, self.replayed_lsn) if x is not None]
        return max(candidates) if candidates else None


@dataclass(frozen=True)
class PeerStatus:
    """A peer's answer to ``GET /health`` during a leader race (fresher than its member key)."""

    name: str
    reachable: bool
    postgres_running: bool = False
    in_recovery: bool | None = None
    timeline: int | None = None
    lsn: int | None = None
    nofailover: bool = False
    # Read straight from the peer's postgres (quorum mode): the API's answer is up to one loop old,
    # and a standby may still have confirmed commits in that time (see agent/quorum/candidate.py).
    direct_lsn: int | None = None


@dataclass(frozen=True)
class StandbyReplication:
    """One row of the primary's ``pg_stat_replication``: a standby streaming from us."""

    name: str  # application_name (pgquorum sets it to the member name)
    state: str  # streaming, catchup, startup, backup, stopping
    flush_lsn: int | None  # what the standby confirmed as durably flushed


@dataclass(frozen=True)
class SyncObservation:
    """The primary's quorum-commit state, read every loop while we lead in quorum mode.

    ``change_lsn``: our WAL flush position measured once the current ``synchronous_standby_names``
    was in force; a listed standby that flushed past it holds every commit acknowledged under any
    earlier setting (None until measured).
    """

    standby_names: str  # the value in force (SHOW synchronous_standby_names)
    flush_lsn: int | None
    change_lsn: int | None
    standbys: tuple[StandbyReplication, ...] = ()
