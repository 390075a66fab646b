"""``pgquorum chaos probe``: the chaos workload against one DSN, wherever it runs — a pod beside a
PostgresCluster on Kubernetes writing through its ``-rw`` Service, for instance — until a stop file
appears; then the database's final state is read and checked against what was acknowledged.

The report (one JSON line on stdout): acknowledged writes and transfers, those lost (acknowledged
but absent), phantoms (certainly failed but present), bank violations, and every window longer
than ``--gap`` seconds without an acknowledgement (wall-clock start and end, so a test can put
them beside the time it killed a pod). The same ``Workload`` and checker as ``chaos run``.
"""

from __future__ import annotations

import itertools
import json
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pgquorum.chaos.checker import bank_violations, lost_and_phantoms
from pgquorum.chaos.history import FinalState, Op
from pgquorum.chaos.workload import Workload, WorkloadSpec, retry_setup


@dataclass(frozen=True)
class ProbeOptions:
    dsn: str
    stop_file: Path
    max_seconds: float = 900.0
    writers: int = 1
    write_interval: float = 0.05
    transfers: bool = True
    gap: float = 1.0  # windows without an acknowledgement longer than this are reported


def gaps(ops: Sequence[Op], start: float, end: float, longer_than: float) -> list[dict[str, float]]:
    """Windows in [start, end] without an acknowledged write or transfer, longest first."""
    acks = sorted(op.ack for op in ops if op.acked and op.mutates and op.ack is not None)
    edges = [start, *(t for t in acks if start <= t <= end), end]
    out = [
        {"from": round(a, 3), "to": round(b, 3), "seconds": round(b - a, 3)}
        for a, b in itertools.pairwise(edges)
        if b - a > longer_than
    ]
    return sorted(out, key=lambda g: -g["seconds"])


def report(ops: Sequence[Op], final: FinalState, start: float, end: float, longer_than: float) -> dict[str, Any]:
    lost, phantoms, in_doubt_present = lost_and_phantoms(ops, final)
    mutating = [o for o in ops if o.mutates]
    return {
        "acked": sum(1 for o in mutating if o.acked),
        "failed": sum(1 for o in mutating if o.outcome == "fail"),
        "unknown": sum(1 for o in mutating if o.outcome == "unknown"),
        "in_doubt_committed": in_doubt_present,
        "lost": [o.key for o in lost],
        "phantoms": [o.key for o in phantoms],
        "bank": bank_violations(ops, final),
        "terms": sorted({o.term for o in mutating if o.acked and o.term is not None}),
        "gaps": gaps(ops, start, end, longer_than),
        "start": round(start, 3),
        "end": round(end, 3),
    }


def run(opts: ProbeOptions) -> dict[str, Any]:
    spec = WorkloadSpec(
        writers=opts.writers,
        write_interval=opts.write_interval,
        pinned=False,
        transfer_clients=1 if opts.transfers else 0,
        readers=False,
    )
    workload = Workload(opts.dsn, {}, lambda host: host, run_id=uuid.uuid4().hex[:8], spec=spec)
    workload.setup()
    start = time.time()
    workload.start()
    print(json.dumps({"started": round(start, 3)}), flush=True)
    deadline = time.monotonic() + opts.max_seconds
    while not opts.stop_file.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    end = time.time()
    workload.stop()
    final: list[FinalState] = []

    def read() -> bool:
        final.append(workload.read_final(opts.dsn))
        return True

    retry_setup(read, 120.0, "probe: read the final state through the DSN")
    return report(workload.ops(), final[-1], start, end, opts.gap)
