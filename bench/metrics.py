"""Pure metric computations over writer records (no I/O, unit-tested).

All timestamps are wall-clock seconds (``time.time()``) taken in the harness
process, so records of different threads are comparable.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class WriteRecord:
    """One write attempt of one writer client."""

    writer: str
    seq: int
    t_send: float
    t_ack: float | None  # None: the attempt failed (error or timeout); the row may or may not exist
    port: int | None  # inet_server_port() of the server that acknowledged
    in_recovery: bool | None = None
    error: str | None = None

    @property
    def acked(self) -> bool:
        return self.t_ack is not None

    @property
    def key(self) -> tuple[str, int]:
        return (self.writer, self.seq)


@dataclass(frozen=True, slots=True)
class Gap:
    """The longest interval without an acknowledgement around a fault."""

    seconds: float
    start: float  # last ack before the gap (or the fault time when there was none)
    end: float  # first ack after the gap (or the end of the observation when censored)
    censored: bool  # True when no ack came after the fault before the end of observation


def acks(records: Iterable[WriteRecord]) -> list[WriteRecord]:
    """Acknowledged records sorted by ack time."""
    return sorted((r for r in records if r.t_ack is not None), key=lambda r: r.t_ack or 0.0)


def longest_gap(records: Iterable[WriteRecord], fault_t: float, end_t: float) -> Gap:
    """Longest gap between consecutive acks that ends after ``fault_t``.

    The gap that contains the fault counts from the last ack *before* the fault
    (a client sees its writes stop at that moment, whatever the cause).  If no
    ack arrived after the fault the gap is censored at ``end_t``.
    """
    ok = acks(records)
    times = [r.t_ack for r in ok if r.t_ack is not None]
    before = [t for t in times if t < fault_t]
    after = [t for t in times if fault_t <= t <= end_t]
    prev = before[-1] if before else fault_t
    best = Gap(0.0, prev, prev, False)
    for t in after:
        if t - prev > best.seconds:
            best = Gap(t - prev, prev, t, False)
        prev = t
    # Writes still unavailable when observation ended: a censored gap.
    if end_t - prev > best.seconds:
        best = Gap(end_t - prev, prev, end_t, True)
    return best


def first_ack_after(records: Iterable[WriteRecord], t: float, *, exclude_port: int | None = None) -> WriteRecord | None:
    """First acknowledged record with ``t_ack >= t`` (optionally from another server)."""
    for r in acks(records):
        if r.t_ack is not None and r.t_ack >= t and (exclude_port is None or r.port != exclude_port):
            return r
    return None


def last_ack_on(
    records: Iterable[WriteRecord], port: int, *, after: float | None = None, before: float | None = None
) -> WriteRecord | None:
    """Last acknowledged record served by ``port`` (within optional bounds)."""
    found: WriteRecord | None = None
    for r in acks(records):
        if r.port != port or r.t_ack is None:
            continue
        if after is not None and r.t_ack < after:
            continue
        if before is not None and r.t_ack > before:
            continue
        found = r
    return found


def lost_writes(records: Iterable[WriteRecord], present: Iterable[tuple[str, int]]) -> list[WriteRecord]:
    """Acknowledged records whose row is not on the final leader."""
    have = set(present)
    return [r for r in records if r.acked and r.key not in have]


def split_brain_writes(records: Iterable[WriteRecord], old_port: int, promotion_t: float | None) -> list[WriteRecord]:
    """Writes acknowledged by the old primary after the new leader was promoted.

    The ack must be *received* after the promotion; a write sent before and
    acknowledged after is counted as well (two writable primaries at once).
    """
    if promotion_t is None:
        return []
    return [r for r in records if r.t_ack is not None and r.port == old_port and r.t_ack > promotion_t]


@dataclass(frozen=True, slots=True)
class Summary:
    n: int
    median: float | None
    min: float | None
    max: float | None


def summarize(values: Sequence[float | None]) -> Summary:
    vals = [v for v in values if v is not None]
    if not vals:
        return Summary(0, None, None, None)
    return Summary(len(vals), statistics.median(vals), min(vals), max(vals))


def ratio(ours: float | None, theirs: float | None) -> float | None:
    """``ours / theirs`` (lower is better for durations), None when undefined."""
    if ours is None or theirs is None or theirs == 0:
        return None
    return ours / theirs
