"""Reading PostgreSQL's state: pg_controldata output and the one-round-trip probe query."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pgquorum.agent.model import parse_lsn

# pg_control "Database cluster state" values, by the role the cluster last ran in.
PRIMARY_STATES = frozenset({"in production", "shut down", "shutting down", "in crash recovery"})
STANDBY_STATES = frozenset({"in archive recovery", "shut down in recovery"})
CLEAN_STATES = frozenset({"shut down", "shut down in recovery"})


@dataclass(frozen=True)
class ControlData:
    """The fields of ``pg_controldata`` we use (readable with postgres stopped or hung)."""

    cluster_state: str | None = None
    system_id: str | None = None
    timeline: int | None = None  # "Latest checkpoint's TimeLineID"
    min_recovery_timeline: int | None = None  # "Min recovery ending loc's timeline" (0: none)
    checkpoint_lsn: int | None = None

    @property
    def was_primary(self) -> bool:
        return self.cluster_state in PRIMARY_STATES

    @property
    def clean_shutdown(self) -> bool:
        return self.cluster_state in CLEAN_STATES

    @property
    def best_timeline(self) -> int | None:
        """A standby replays past its last restartpoint; its minimum recovery point may be newer."""
        values = [t for t in (self.timeline, self.min_recovery_timeline) if t]
        return max(values) if values else None


def parse_controldata(text: str) -> ControlData:
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields[key.strip()] = value.strip()

    def as_int(key: str) -> int | None:
        try:
            return int(fields[key])
        except (KeyError, ValueError):
            return None

    try:
        lsn = parse_lsn(fields.get("Latest checkpoint location"))
    except ValueError:
        lsn = None
    return ControlData(
        cluster_state=fields.get("Database cluster state"),
        system_id=fields.get("Database system identifier"),
        timeline=as_int("Latest checkpoint's TimeLineID"),
        min_recovery_timeline=as_int("Min recovery ending loc's timeline"),
        checkpoint_lsn=lsn,
    )


# One round trip. The timeline of a primary comes from its current WAL file name: pg_control's
# checkpoint timeline only moves at the first checkpoint after a promotion (seconds to minutes).
PROBE_SQL = """
SELECT r.rec,
       (SELECT system_identifier::text FROM pg_catalog.pg_control_system()),
       CASE WHEN r.rec THEN NULL ELSE pg_catalog.pg_walfile_name(pg_catalog.pg_current_wal_lsn()) END,
       CASE WHEN r.rec THEN NULL ELSE pg_catalog.pg_current_wal_flush_lsn()::text END,
       pg_catalog.pg_last_wal_receive_lsn()::text,
       pg_catalog.pg_last_wal_replay_lsn()::text,
       w.status,
       w.received_tli,
       (SELECT timeline_id FROM pg_catalog.pg_control_checkpoint()),
       (SELECT min_recovery_end_timeline FROM pg_catalog.pg_control_recovery()),
       CASE WHEN r.rec THEN
           CASE WHEN pg_catalog.pg_last_wal_receive_lsn() = pg_catalog.pg_last_wal_replay_lsn() THEN 0
                ELSE EXTRACT(EPOCH FROM now() - pg_catalog.pg_last_xact_replay_timestamp()) END
       END
FROM (SELECT pg_catalog.pg_is_in_recovery() AS rec) r
LEFT JOIN (SELECT status, received_tli FROM pg_catalog.pg_stat_wal_receiver LIMIT 1) w ON true
"""


@dataclass(frozen=True)
class Probe:
    in_recovery: bool
    system_id: str | None
    timeline: int | None
    wal_lsn: int | None
    received_lsn: int | None
    replayed_lsn: int | None
    streaming: bool
    receiver_timeline: int | None = None  # the WAL receiver's, exact while it runs
    # Standby: 0 when all received WAL is replayed, else age of the last replayed commit. (Measuring
    # age alone would report an idle, caught-up standby as ever more behind.)
    replay_lag_seconds: float | None = None


def parse_probe(row: tuple[Any, ...]) -> Probe:
    rec, sysid, walfile, flush, received, replayed, wr_status, received_tli, ckpt_tli, minrec_tli, lag_s = row
    in_recovery = bool(rec)
    timeline: int | None
    if not in_recovery and walfile:
        timeline = int(str(walfile)[:8], 16)
    elif received_tli:
        timeline = int(received_tli)
    else:
        values = [int(t) for t in (ckpt_tli, minrec_tli) if t]
        timeline = max(values) if values else None
    return Probe(
        in_recovery=in_recovery,
        system_id=str(sysid) if sysid is not None else None,
        timeline=timeline,
        wal_lsn=parse_lsn(flush),
        received_lsn=parse_lsn(received),
        replayed_lsn=parse_lsn(replayed),
        streaming=wr_status == "streaming",
        receiver_timeline=int(received_tli) if received_tli else None,
        replay_lag_seconds=max(0.0, float(lag_s)) if lag_s is not None else None,
    )
