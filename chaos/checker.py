"""The history checker: pure functions from a recorded ``History`` to a ``Verdict``.

What it flags (each a violation unless said otherwise):

* **lost writes**: an acknowledged write (or applied transfer) missing from the final database;
* **phantoms**: an operation whose failure was certain (refused without commit) that is in the
  database anyway, or a transfer refused for lack of funds that is in the transfer log;
* **split-brain writes**: a write acknowledged by member S with term t (read in its own transaction)
  although it was *sent* after another member began serving a newer reign: two primaries
  acknowledging writes at once, on histories that diverged. A reign is (member, term) from the
  primary intervals (agents' logs, cluster history), serving from the moment its member began
  promoting (its standby stopped receiving the old primary's WAL then: whatever the old primary
  commits afterwards is not in the new primary's history), or from the history itself (the first
  ack of a (server, term) pair). "Newer" means a higher term, or the same term first acknowledged
  later by another member: a new primary reports the previous term until it has written its own
  into the database, so a stale primary and a just-promoted one can both report term t — the one
  that began acknowledging later is the newer. Using the send time (not the ack) keeps the
  detector exact: the commit happened after the send, so after the newer reign began. A member
  that owns a term at least as new, begun before the send, is the legitimate primary (its term
  row may lag);
* **bank invariants**: the total of all balances is constant (final state and every acknowledged
  read), no balance is negative, and every final balance equals the initial balance plus the
  transfers in the log (no transfer half applied);
* **recovery**: after every fault's heal, the cluster was healthy again within a bound.

Informational, not violations: **late acks**, writes the old primary acknowledged after another
member had taken the leader key of a newer term but before that member began promoting (the
lease rule of invariant I1 says a primary stops writing before the key can move; such writes
survive only because the new primary still streamed them before promoting, which the lost-write
check verifies); overlapping primary intervals of different members (a paused old
primary still "is" primary until it fences itself; what matters is whether it acknowledges), the
unavailability window per fault (longest gap between acknowledgements of any client, counted from
the last acknowledgement before the fault) and in-doubt operations that did commit.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from pgquorum.chaos.history import FaultWindow, FinalState, History, Op, PrimaryInterval

# Examples kept per category in a verdict (the counts are always complete).
EXAMPLES = 20


@dataclass(frozen=True)
class Reign:
    member: str
    term: int
    start: float
    source: str  # "interval" (agents' logs / cluster history) or "history" (first ack seen)


@dataclass(frozen=True)
class SplitBrainWrite:
    op: dict[str, Any]
    newer_member: str
    newer_term: int
    newer_since: float
    source: str

    def describe(self) -> str:
        o = self.op
        return (
            f"{o['kind']} {o['key']} acknowledged by {o['server']} with term {o['term']} (sent at {o['send']:.3f}) "
            f"after {self.newer_member} began term {self.newer_term} at {self.newer_since:.3f} ({self.source})"
        )


@dataclass(frozen=True)
class FaultVerdict:
    name: str
    target: str | None
    start: float
    heal: float | None
    unavailability_s: float | None  # longest gap between acks around the fault (None: no acks at all)
    censored: bool  # writes had not come back by the end of the fault's observation
    recovery_s: float | None  # heal -> healthy again (None: never healthy again)
    recovered: bool  # healthy again within the bound
    lost: int  # acknowledged writes/transfers lost, sent during this fault's period
    split_brain: int  # split-brain writes sent during this fault's period
    late_acks: int = 0  # informational: acknowledged by the old primary after the key moved


@dataclass
class Verdict:
    ok: bool
    counts: dict[str, int]
    lost: list[dict[str, Any]] = field(default_factory=list)
    phantoms: list[dict[str, Any]] = field(default_factory=list)
    split_brain: list[SplitBrainWrite] = field(default_factory=list)
    late_acks: list[SplitBrainWrite] = field(default_factory=list)  # informational (module docstring)
    bank: list[str] = field(default_factory=list)
    overlaps: list[dict[str, Any]] = field(default_factory=list)  # informational
    faults: list[FaultVerdict] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # one line per violation kind, for humans
    linearizability: dict[str, Any] | None = None  # the register history's porcupine check (linearizability.py)

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "linearizable": None if self.linearizability is None else self.linearizability.get("linearizable"),
            "linearizability": self.linearizability,
            "counts": self.counts,
            "problems": self.problems,
            "lost": self.lost,
            "phantoms": self.phantoms,
            "split_brain": [asdict(s) for s in self.split_brain],
            "late_acks": [asdict(s) for s in self.late_acks],
            "bank": self.bank,
            "overlaps": self.overlaps,
            "faults": [asdict(f) for f in self.faults],
        }


# ----------------------------------------------------------------------------- reigns / split-brain


def reigns(ops: Iterable[Op], intervals: Iterable[PrimaryInterval], *, by_key: bool = False) -> list[Reign]:
    """Every (member, term) reign with its earliest known start, from both sources: when it began
    serving (``by_key``: when it took the leader key, intervals only)."""
    best: dict[tuple[str, int], Reign] = {}

    def add(r: Reign) -> None:
        cur = best.get((r.member, r.term))
        if cur is None or r.start < cur.start:
            best[(r.member, r.term)] = r

    for iv in intervals:
        add(Reign(iv.member, iv.term, iv.start if by_key else iv.serving_from, "interval"))
    if not by_key:
        for op in ops:
            if op.acked and op.mutates and op.server is not None and op.term is not None and op.ack is not None:
                add(Reign(op.server, op.term, op.ack, "history"))
    return sorted(best.values(), key=lambda r: (r.start, r.term, r.member))


def _newer(candidate: Reign, own: Reign | None, term: int) -> bool:
    """Is ``candidate`` (another member's reign) newer than an op's own reign of ``term``?"""
    if candidate.term != term:
        return candidate.term > term
    # Same term on two members: the one that began later is the newer (see the module docstring).
    return own is None or candidate.start > own.start


def split_brain_writes(
    ops: Sequence[Op], intervals: Sequence[PrimaryInterval], *, by_key: bool = False
) -> list[SplitBrainWrite]:
    """Writes sent after another member began serving a newer reign (``by_key``: took its key)."""
    all_reigns = reigns(ops, intervals, by_key=by_key)
    # the answering member's own reigns always count from their first sign of life
    own_reigns = reigns(ops, intervals) if by_key else all_reigns
    by_member: dict[str, list[Reign]] = {}
    for r in own_reigns:
        by_member.setdefault(r.member, []).append(r)
    found: list[SplitBrainWrite] = []
    for op in ops:
        if not (op.acked and op.mutates and op.server is not None and op.term is not None):
            continue
        mine = by_member.get(op.server, [])
        own = next((r for r in mine if r.term == op.term), None)
        for r in all_reigns:  # sorted by start: the first hit is the earliest evidence
            if r.start >= op.send:
                break
            if r.member == op.server or not _newer(r, own, op.term):
                continue
            # The answering member legitimately leads a term at least as new, begun before the send.
            if any(m.term >= r.term and m.start <= op.send and m.term > op.term for m in mine):
                continue
            found.append(SplitBrainWrite(op.brief(), r.member, r.term, round(r.start, 3), r.source))
            break
    return found


def primary_overlaps(intervals: Sequence[PrimaryInterval], end_of_history: float) -> list[dict[str, Any]]:
    """Pairs of intervals of different members that overlap in time (informational)."""
    out = []
    ivs = sorted(intervals, key=lambda i: i.start)
    for i, a in enumerate(ivs):
        a_end = a.end if a.end is not None else end_of_history
        for b in ivs[i + 1 :]:
            if b.start >= a_end:
                break
            if b.member == a.member:
                continue
            b_end = b.end if b.end is not None else end_of_history
            out.append(
                {
                    "a": asdict(a),
                    "b": asdict(b),
                    "overlap_s": round(min(a_end, b_end) - b.start, 3),
                    "a_end_known": a.end is not None,
                }
            )
    return out


# ----------------------------------------------------------------------------- durability / bank


def lost_and_phantoms(ops: Sequence[Op], final: FinalState) -> tuple[list[Op], list[Op], int]:
    """(acknowledged but missing, certainly-failed but present, in-doubt that committed)."""
    lost: list[Op] = []
    phantoms: list[Op] = []
    in_doubt_present = 0
    for op in ops:
        if op.kind == "write":
            present = op.key in final.writes
            applied = True
        elif op.kind == "transfer":
            present = op.key in final.transfers
            applied = bool(op.value.get("applied", True))
        else:
            continue
        if op.outcome == "ok":
            if applied and not present:
                lost.append(op)
            elif not applied and present:
                phantoms.append(op)
        elif op.outcome == "fail" and present:
            phantoms.append(op)
        elif op.outcome == "unknown" and present:
            in_doubt_present += 1
    return lost, phantoms, in_doubt_present


def bank_violations(ops: Sequence[Op], final: FinalState) -> list[str]:
    problems: list[str] = []
    total = sum(final.balances.values())
    if total != final.initial_total:
        problems.append(f"final total balance {total} != initial total {final.initial_total}")
    for acct, bal in sorted(final.balances.items()):
        if bal < 0:
            problems.append(f"final balance of account {acct} is negative ({bal})")
    expected = dict.fromkeys(final.balances, final.initial_balance)
    for key, t in sorted(final.transfers.items()):
        for acct in (t.src, t.dst):
            if acct not in expected:
                problems.append(f"transfer {key} names account {acct}, which does not exist")
        if t.amount <= 0:
            problems.append(f"transfer {key} moves a non-positive amount ({t.amount})")
        if t.src in expected:
            expected[t.src] -= t.amount
        if t.dst in expected:
            expected[t.dst] += t.amount
    for acct, want in sorted(expected.items()):
        if final.balances[acct] != want:
            problems.append(
                f"account {acct}: balance {final.balances[acct]} != {want} (initial + the transfers in the log): "
                "a transfer was applied without its log row, or the reverse"
            )
    for op in ops:
        if op.kind != "read" or not op.acked:
            continue
        read_total = op.value.get("total")
        if read_total is not None and int(read_total) != final.initial_total:
            problems.append(
                f"read {op.client}/{op.op_id} on {op.server} saw total {read_total} != {final.initial_total}"
            )
        low = op.value.get("min")
        if low is not None and int(low) < 0:
            problems.append(f"read {op.client}/{op.op_id} on {op.server} saw a negative balance ({low})")
    return problems


# ----------------------------------------------------------------------------- availability


def unavailability(ops: Sequence[Op], start: float, end: float) -> tuple[float | None, bool]:
    """Longest gap between acknowledgements (any client, writes and transfers) that ends after
    ``start``, counting the gap around the fault from the last ack before it; censored at ``end``."""
    acks = sorted(op.ack for op in ops if op.acked and op.mutates and op.ack is not None)
    if not acks:
        return None, True
    before = [t for t in acks if t < start]
    prev = before[-1] if before else start
    best, censored = 0.0, False
    for t in (t for t in acks if start <= t <= end):
        best = max(best, t - prev)
        prev = t
    if end - prev > best:
        best, censored = end - prev, True
    return round(best, 3), censored


def fault_verdicts(
    ops: Sequence[Op],
    faults: Sequence[FaultWindow],
    lost: Sequence[Op],
    split: Sequence[SplitBrainWrite],
    recovery_bound: float,
    late: Sequence[SplitBrainWrite] = (),
) -> list[FaultVerdict]:
    end_of_history = max((o.ack or o.send for o in ops), default=0.0)
    ordered = sorted(faults, key=lambda f: f.start)
    out = []
    for i, f in enumerate(ordered):
        until = ordered[i + 1].start if i + 1 < len(ordered) else end_of_history
        gap, censored = unavailability(ops, f.start, until)
        recovery = None if f.heal is None or f.healthy is None else round(max(0.0, f.healthy - f.heal), 3)
        n_lost = sum(1 for o in lost if f.start <= o.send < until)
        n_split = sum(1 for s in split if f.start <= float(s.op["send"]) < until)
        n_late = sum(1 for s in late if f.start <= float(s.op["send"]) < until)
        out.append(
            FaultVerdict(
                name=f.name,
                target=f.target,
                start=f.start,
                heal=f.heal,
                unavailability_s=gap,
                censored=censored,
                recovery_s=recovery,
                recovered=recovery is not None and recovery <= recovery_bound,
                lost=n_lost,
                split_brain=n_split,
                late_acks=n_late,
            )
        )
    return out


# ----------------------------------------------------------------------------- the verdict


def check(history: History, recovery_bound: float = 120.0) -> Verdict:
    """Check a whole run. Without a final state only split-brain and recovery can be checked."""
    ops = history.ops
    counts: dict[str, int] = {}
    for op in ops:
        counts[f"{op.kind}_{op.outcome}"] = counts.get(f"{op.kind}_{op.outcome}", 0) + 1
    counts["ops"] = len(ops)
    counts["acked_without_term"] = sum(1 for o in ops if o.acked and o.mutates and o.term is None)
    split = split_brain_writes(ops, history.intervals)
    flagged = {(s.op["client"], s.op["op"]) for s in split}
    late = [
        s
        for s in split_brain_writes(ops, history.intervals, by_key=True)
        if (s.op["client"], s.op["op"]) not in flagged
    ]
    lost: list[Op] = []
    phantoms: list[Op] = []
    bank: list[str] = []
    problems: list[str] = []
    if history.final is None:
        problems.append("no final database state recorded: lost writes and bank invariants not checked")
    else:
        lost, phantoms, counts["in_doubt_committed"] = lost_and_phantoms(ops, history.final)
        bank = bank_violations(ops, history.final)
    end_of_history = max((o.ack or o.send for o in ops), default=0.0)
    faults = fault_verdicts(ops, history.faults, lost, split, recovery_bound, late)
    counts["lost"] = len(lost)
    counts["phantoms"] = len(phantoms)
    counts["split_brain"] = len(split)
    counts["late_acks"] = len(late)
    counts["bank_violations"] = len(bank)
    if lost:
        problems.append(f"{len(lost)} acknowledged writes/transfers are missing from the final database")
    if phantoms:
        problems.append(f"{len(phantoms)} operations that certainly failed are in the database anyway")
    if split:
        problems.append(f"{len(split)} split-brain writes, e.g. {split[0].describe()}")
    problems.extend(bank[:EXAMPLES])
    for f in faults:
        if not f.recovered:
            why = (
                "never healed"
                if f.heal is None
                else "not healthy again"
                if f.recovery_s is None
                else f"healthy only after {f.recovery_s:.1f} s > bound {recovery_bound:g} s"
            )
            problems.append(f"fault {f.name}: cluster did not recover ({why})")
    ok = not (lost or phantoms or split or bank) and all(f.recovered for f in faults)
    return Verdict(
        ok=ok,
        counts=dict(sorted(counts.items())),
        lost=[o.brief() for o in lost[:EXAMPLES]],
        phantoms=[o.brief() for o in phantoms[:EXAMPLES]],
        split_brain=split[:EXAMPLES],
        late_acks=late[:EXAMPLES],
        bank=bank,
        overlaps=primary_overlaps(history.intervals, end_of_history),
        faults=faults,
        problems=problems,
    )
