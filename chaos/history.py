"""What a chaos run records, as plain data that round-trips through JSON.

* ``Op``: one client operation (a write, a bank transfer or a read) with its client-side send and
  completion times, the member that answered, the term the server reported *inside the same
  transaction* (``pgquorum.current_term()``) and the outcome: ``ok`` (acknowledged), ``fail``
  (certainly not applied: refused before or without commit) or ``unknown`` (may or may not have
  been applied: the connection broke or timed out around the commit).
* ``PrimaryInterval``: a member led a term from ``start`` (it took the leader key: agents' logs,
  cluster history) and could accept writes from ``serving`` (it began promoting; the same as
  ``start`` when it was primary already), until ``end`` when that is known.
* ``FinalState``: what the database holds after healing and quiescence.
* ``FaultWindow``: when a fault was injected and healed, and when the cluster was healthy again.

All times are wall-clock seconds (``time.time()``) on one machine: the harness, the agents and the
clients share one clock, so times of different sources compare.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

KINDS = ("write", "transfer", "read")
OUTCOMES = ("ok", "fail", "unknown")


class HistoryError(ValueError):
    """A recorded history is malformed; the message names the field."""


@dataclass(frozen=True)
class Op:
    client: str
    op_id: int
    kind: str  # write | transfer | read
    send: float
    outcome: str  # ok | fail | unknown
    ack: float | None = None  # when the outcome became known (for ok: the acknowledgement)
    server: str | None = None  # the member that answered (None: no connection was made)
    term: int | None = None  # pgquorum.current_term() read in the operation's transaction
    key: str | None = None  # unique id of a write or transfer
    # transfer: src, dst, amount, applied (False: refused for lack of funds); read: total, min, count
    value: dict[str, Any] = field(default_factory=dict)
    error: str | None = None

    def __post_init__(self) -> None:
        where = f"op {self.client}/{self.op_id}"
        if self.kind not in KINDS:
            raise HistoryError(f"{where}: kind {self.kind!r} is not one of {', '.join(KINDS)}")
        if self.outcome not in OUTCOMES:
            raise HistoryError(f"{where}: outcome {self.outcome!r} is not one of {', '.join(OUTCOMES)}")
        if self.outcome == "ok" and self.ack is None:
            raise HistoryError(f"{where}: an acknowledged operation needs its ack time")
        if self.ack is not None and self.ack < self.send:
            raise HistoryError(f"{where}: ack {self.ack} precedes send {self.send}")
        if self.kind in ("write", "transfer") and not self.key:
            raise HistoryError(f"{where}: a {self.kind} needs its unique key")

    @property
    def acked(self) -> bool:
        return self.outcome == "ok"

    @property
    def mutates(self) -> bool:
        return self.kind in ("write", "transfer")

    def brief(self) -> dict[str, Any]:
        """The fields a report needs to point at this operation."""
        out: dict[str, Any] = {
            "client": self.client,
            "op": self.op_id,
            "kind": self.kind,
            "key": self.key,
            "server": self.server,
            "term": self.term,
            "send": round(self.send, 3),
            "ack": None if self.ack is None else round(self.ack, 3),
            "outcome": self.outcome,
        }
        if self.error:
            out["error"] = self.error
        return out


@dataclass(frozen=True)
class PrimaryInterval:
    member: str
    term: int
    start: float  # took the leader key
    end: float | None = None  # None: not known to have ended
    serving: float | None = None  # began promoting (None: was primary already, i.e. from ``start``)

    @property
    def serving_from(self) -> float:
        return self.start if self.serving is None else max(self.start, self.serving)


@dataclass(frozen=True)
class Transfer:
    src: str
    dst: str
    amount: int


@dataclass(frozen=True)
class FinalState:
    """The database after healing, read on the final primary."""

    writes: frozenset[str]  # keys of the write table
    transfers: dict[str, Transfer]  # the transfer log: key -> transfer
    balances: dict[str, int]  # account -> balance
    initial_balance: int  # every account starts with this much

    @property
    def initial_total(self) -> int:
        return self.initial_balance * len(self.balances)


@dataclass(frozen=True)
class FaultWindow:
    name: str
    start: float  # injected
    heal: float | None = None  # healing started (None: never healed within the run)
    healthy: float | None = None  # one leader and every member streaming again after the heal
    target: str | None = None  # the member (or members) the fault hit
    detail: str = ""


@dataclass
class History:
    ops: list[Op]
    intervals: list[PrimaryInterval] = field(default_factory=list)
    final: FinalState | None = None
    faults: list[FaultWindow] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)

    # -- JSON ----------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        final: dict[str, Any] | None = None
        if self.final is not None:
            final = {
                "writes": sorted(self.final.writes),
                "transfers": {k: asdict(t) for k, t in sorted(self.final.transfers.items())},
                "balances": dict(sorted(self.final.balances.items())),
                "initial_balance": self.final.initial_balance,
            }
        return {
            "version": 1,
            "meta": self.meta,
            "faults": [asdict(f) for f in self.faults],
            "intervals": [asdict(i) for i in self.intervals],
            "ops": [asdict(o) for o in self.ops],
            "final": final,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> History:
        if not isinstance(data, dict) or data.get("version") != 1:
            raise HistoryError("history: expected a JSON object with version 1")
        try:
            ops = [Op(**o) for o in data.get("ops", [])]
            intervals = [PrimaryInterval(**i) for i in data.get("intervals", [])]
            faults = [FaultWindow(**f) for f in data.get("faults", [])]
            raw = data.get("final")
            final = None
            if raw is not None:
                final = FinalState(
                    writes=frozenset(str(k) for k in raw["writes"]),
                    transfers={str(k): Transfer(**t) for k, t in raw["transfers"].items()},
                    balances={str(k): int(v) for k, v in raw["balances"].items()},
                    initial_balance=int(raw["initial_balance"]),
                )
        except (TypeError, KeyError) as exc:
            raise HistoryError(f"history: malformed entry ({exc})") from None
        return cls(ops, intervals, final, faults, dict(data.get("meta") or {}))

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_json(), indent=1, sort_keys=False) + "\n")

    @classmethod
    def load(cls, path: Path) -> History:
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise HistoryError(f"{path}: cannot read a history ({exc})") from None
        return cls.from_json(data)
