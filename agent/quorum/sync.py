"""Quorum commit (invariant I4): the pure resolver that moves postgres and etcd to the wanted quorum.

Two places hold the quorum, and they change one at a time:

* postgres, ``synchronous_standby_names = 'ANY k_p (S)'``: a commit is acknowledged once ``k_p``
  of the standbys in ``S`` flushed it (``PgSync``);
* etcd, the ``sync`` key ``{leader, k, voters}``: a failover candidate must read the WAL positions
  of ``n - k + 1`` of the ``n`` voters and be the most advanced of them (``Quorum``).

The invariant (W + R > N): every set of standbys that can acknowledge a commit meets every set of
voters a candidate may read. ``overlaps(quorum, pg)`` is that check, exact for any pair. Because a
commit acknowledged under an *earlier* postgres setting may sit on standbys the current setting no
longer names, a change of the etcd record must also keep every commit of the past reachable. Two
ways guarantee it:

* the new record is *stricter* (``stricter(new, old)``): every set a candidate may read under the
  new record contains a set it had to read under the old one, which already met all past commits;
* or the current postgres setting is *confirmed*: at least ``k_p`` of its standbys flushed past the
  WAL position at which it took effect (``SyncObservation.change_lsn``), so every past commit sits
  on ``k_p`` standbys of ``S``, exactly like a new one.

A postgres change only needs ``overlaps(record, new)``: the record already covers the past.

Hence increase first, decrease later. Growing: etcd first (a bigger voter set, the same or smaller
k: stricter), then postgres. Shrinking or lowering k in etcd: postgres first, then etcd once the new
setting is confirmed. Each ``resolve`` returns the transitions that are safe *now*, in order; the
leader applies them and stops at the first failure, and the next loop resolves again from what is
actually in etcd and postgres, so an interrupted sequence is resumed, never replayed blindly.

Pure: no I/O, no clock. Placeholder names (``missing:N``) pad the postgres list when ``durability:
required`` has fewer standbys than ``k``: postgres then waits for a standby that does not exist,
which is the point (commits block rather than be acknowledged by fewer than ``k``).
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from pgquorum.agent.model import MemberInfo, SyncObservation, SyncRecord

PLACEHOLDER = "missing:"


class Durability(enum.StrEnum):
    REQUIRED = "required"
    PREFERRED = "preferred"


@dataclass(frozen=True)
class PgSync:
    """What postgres waits for: ``ANY k (names)``; ``k == 0`` is asynchronous commit."""

    k: int
    names: frozenset[str] = frozenset()

    def render(self) -> str:
        """The ``synchronous_standby_names`` value ('' for asynchronous)."""
        if self.k == 0 or not self.names:
            return ""
        return f"ANY {self.k} ({', '.join(_quote_name(n) for n in sorted(self.names))})"

    def __str__(self) -> str:
        return self.render() or "asynchronous"


ASYNC = PgSync(0)


@dataclass(frozen=True)
class Quorum:
    """The etcd record's promise: read ``len(voters) - k + 1`` voters to meet every acknowledged commit."""

    k: int
    voters: frozenset[str] = frozenset()

    @property
    def provable(self) -> bool:
        return 1 <= self.k <= len(self.voters)

    @property
    def reads(self) -> int:
        """R: how many voters a candidate must see (n - k + 1)."""
        return len(self.voters) - self.k + 1

    @classmethod
    def of(cls, record: SyncRecord | None) -> Quorum:
        return UNPROVABLE if record is None else cls(record.k, frozenset(record.voters))

    def __str__(self) -> str:
        if not self.provable:
            return "no provable quorum"
        return f"k={self.k} of {{{', '.join(sorted(self.voters))}}} (read {self.reads})"


UNPROVABLE = Quorum(0)


@dataclass(frozen=True)
class WriteSyncRecord:
    """Transition: compare-and-swap the etcd ``sync`` key to ``{leader, k, voters}``."""

    leader: str
    k: int
    voters: tuple[str, ...]
    why: str = field(default="", compare=False)


@dataclass(frozen=True)
class SetSyncStandbys:
    """Transition: ``synchronous_standby_names = value`` on the leader's postgres (reload, verified)."""

    value: str
    why: str = field(default="", compare=False)


Transition = WriteSyncRecord | SetSyncStandbys


@dataclass(frozen=True)
class SyncPlan:
    """What the leader does about quorum commit in this loop, and why."""

    transitions: tuple[Transition, ...]
    pg_target: PgSync
    quorum_target: Quorum
    reason: str  # one line for the log and GET /cluster
    waiting: str | None = None  # a transition that must wait (for a standby to confirm)
    alert: str | None = None  # fewer standbys than k, asynchronous, or commits blocked


# -- the invariant ---------------------------------------------------------------------------------


def overlaps(quorum: Quorum, pg: PgSync) -> bool:
    """W + R > N: any ``pg.k`` standbys of ``pg.names`` meet any ``quorum.reads`` voters.

    A record that proves nothing is always safe (no candidate passes the check); asynchronous
    postgres never is against a provable record (a commit may sit on no standby at all); a
    setting that cannot be met (k > names) acknowledges nothing, so it is safe.
    """
    if not quorum.provable:
        return True
    if pg.k <= 0:
        return False
    if pg.k > len(pg.names):
        return True
    # The reads that avoid ``pg.names`` the most still take this many of them:
    least_common = max(0, quorum.reads - len(quorum.voters - pg.names))
    return len(pg.names) - least_common < pg.k


def stricter(new: Quorum, old: Quorum) -> bool:
    """Every set of voters a candidate may read under ``new`` contains one it had to read under ``old``."""
    if not new.provable:
        return True
    if not old.provable:
        return False
    return new.reads - len(new.voters - old.voters) >= old.reads


def confirmed(pg: PgSync, caught_up: frozenset[str]) -> bool:
    """Every commit acknowledged before ``pg`` took effect sits on ``pg.k`` of its standbys."""
    return pg.k >= 1 and len(caught_up & pg.names) >= pg.k


# -- the resolver ----------------------------------------------------------------------------------


def target(
    mode_quorum: bool, wanted_k: int, durability: Durability, active: frozenset[str], pg: PgSync
) -> tuple[PgSync, Quorum, str, str | None]:
    """The steady state wanted for these healthy standbys: (postgres, record, reason, alert)."""
    if not mode_quorum:
        return ASYNC, UNPROVABLE, "synchronous.mode is off: asynchronous commit", None
    names = ", ".join(sorted(active)) or "none"
    if durability is Durability.PREFERRED:
        if not active:
            return (
                ASYNC,
                UNPROVABLE,
                "no healthy standby: asynchronous commit (durability preferred)",
                "quorum commit: no healthy standby, commits are asynchronous and a failover may lose them",
            )
        k = min(wanted_k, len(active))
        alert = None
        if k < wanted_k:
            alert = f"quorum commit: only {len(active)} healthy standby(s) ({names}) for k={wanted_k}: k lowered to {k}"
        return PgSync(k, active), Quorum(k, active), f"k={k} of healthy standbys {names}", alert
    if len(active) >= wanted_k:
        return PgSync(wanted_k, active), Quorum(wanted_k, active), f"k={wanted_k} of healthy standbys {names}", None
    # required and too few: keep waiting for the standbys postgres already lists, pad if still short
    keep = set(active) | set(pg.names)
    n = 1
    while len(keep) < wanted_k:
        if f"{PLACEHOLDER}{n}" not in keep:
            keep.add(f"{PLACEHOLDER}{n}")
        n += 1
    wanted = PgSync(wanted_k, frozenset(keep))
    alert = (
        f"quorum commit (durability required): {len(active)} healthy standby(s) ({names}) for k={wanted_k}: "
        f"commits wait until {wanted_k - len(active)} more confirm"
    )
    return wanted, Quorum(wanted_k, frozenset(keep)), f"waiting for standbys: {wanted}", alert


def resolve(
    *,
    me: str,
    record: SyncRecord | None,
    pg: PgSync,
    caught_up: frozenset[str],
    active: frozenset[str],
    wanted_k: int,
    durability: Durability,
    mode_quorum: bool = True,
) -> SyncPlan:
    """The transitions that move (record, pg) towards the target, each keeping W + R > N.

    ``record``: the ``sync`` key as read; ``pg``: what postgres waits for now; ``caught_up``: the
    standbys of ``pg.names`` that flushed past ``change_lsn``; ``active``: healthy streaming
    standbys allowed to vote; ``wanted_k``: ``synchronous.k``.
    """
    pg_want, q_want, reason, alert = target(mode_quorum, wanted_k, durability, active, pg)
    start_pg, start_caught_up = pg, caught_up
    quorum = Quorum.of(record)
    if not quorum.provable:
        quorum = UNPROVABLE
    rewrite_leader = record is not None and record.leader != me and quorum.provable
    steps: list[Transition] = []

    def write(q: Quorum, why: str) -> None:
        if steps and isinstance(steps[-1], WriteSyncRecord):
            steps.pop()  # two etcd writes in a row: nobody needs to observe the first one
        steps.append(WriteSyncRecord(me, q.k if q.provable else 0, tuple(sorted(q.voters)) if q.provable else (), why))

    # 1. Before postgres changes, the record must cover both what postgres does now and what it will
    #    do; a stricter record is always allowed (it keeps the past covered too).
    if not (overlaps(quorum, pg) and overlaps(quorum, pg_want)):
        # Union of voters, smallest k: each read set grows by what it may miss, so it meets both.
        wider = Quorum(min(quorum.k, pg.k, pg_want.k), quorum.voters | pg.names | pg_want.names)
        stepped = wider if wider.provable else UNPROVABLE
        if stepped != quorum:
            write(stepped, f"etcd first: {stepped} covers {pg} and {pg_want}")
            quorum, rewrite_leader = stepped, False
    # 2. Postgres to its target; a new setting is not confirmed by anyone yet.
    if pg != pg_want:
        steps.append(SetSyncStandbys(pg_want.render(), f"postgres: {pg} -> {pg_want}"))
        pg, caught_up = pg_want, frozenset()
    # 3. The record to its target: stricter at once, looser only once postgres's setting is confirmed.
    waiting = None
    if quorum != q_want:
        if stricter(q_want, quorum) or (confirmed(pg, caught_up) and overlaps(q_want, pg)):
            write(q_want, f"etcd: {quorum} -> {q_want}")
            rewrite_leader = False
        else:
            missing = sorted(pg.names - caught_up)
            waiting = (
                f"etcd keeps {quorum} until {pg.k} of {', '.join(sorted(pg.names))} confirm WAL written before "
                f"{pg} took effect (not yet: {', '.join(missing) or 'none'})"
            )
    if rewrite_leader:
        write(quorum, f"etcd: the record now names leader {me}")
    problem = first_unsafe(Quorum.of(record), start_pg, start_caught_up, steps)
    if problem is not None:  # a bug in this module; refuse to act on it rather than risk the invariant
        raise AssertionError(f"quorum resolver produced an unsafe transition: {problem}")
    return SyncPlan(tuple(steps), pg_want, q_want, reason, waiting, alert)


def first_unsafe(
    quorum: Quorum, pg: PgSync, caught_up: frozenset[str], transitions: Iterable[Transition]
) -> str | None:
    """Replay ``transitions`` from (quorum, pg): the first one that could lose a commit, else None.

    A postgres change must overlap the record; a record change must overlap postgres and be
    stricter, unless postgres's setting is confirmed.
    """
    if not quorum.provable:
        quorum = UNPROVABLE
    for t in transitions:
        if isinstance(t, SetSyncStandbys):
            new = parse_standby_names(t.value)
            if new is None or not overlaps(quorum, new):
                return f"postgres {t.value!r} does not overlap {quorum}"
            pg, caught_up = new, frozenset()
        else:
            new_q = Quorum(t.k, frozenset(t.voters))
            if not new_q.provable:
                new_q = UNPROVABLE
            if not overlaps(new_q, pg):
                return f"record {new_q} does not overlap postgres {pg}"
            if not (stricter(new_q, quorum) or confirmed(pg, caught_up)):
                return f"record {quorum} -> {new_q} is looser while {pg} is unconfirmed"
            quorum = new_q
    return None


def promotion_standbys(record: SyncRecord | None, me: str, wanted_k: int, durability: Durability) -> PgSync:
    """What a freshly promoted primary waits for, set *before* it promotes (invariant I4).

    The record still describes the old primary's quorum, and we are one of its voters: waiting for
    ``k`` of the other voters keeps every commit we acknowledge where the record's readers look,
    before we have rewritten anything. ``required`` never waits for fewer than ``synchronous.k``.
    """
    quorum = Quorum.of(record)
    if not quorum.provable:
        # Nothing to keep consistent with; required still refuses to acknowledge alone.
        if durability is Durability.REQUIRED:
            return PgSync(wanted_k, frozenset(f"{PLACEHOLDER}{i + 1}" for i in range(wanted_k)))
        return ASYNC
    others = quorum.voters - {me}
    k = quorum.k
    if durability is Durability.REQUIRED:
        k = max(k, wanted_k)
        names = set(others)
        n = 1
        while len(names) < k:
            names.add(f"{PLACEHOLDER}{n}")
            n += 1
        return PgSync(k, frozenset(names))
    if not others:
        return ASYNC  # the record's only voter was us: no one else can be read (nor promoted) anyway
    return PgSync(min(k, len(others)), others)


# -- reading postgres ------------------------------------------------------------------------------

_ANY = re.compile(r"^\s*(ANY|FIRST)\s+(\d+)\s*\((.*)\)\s*$", re.IGNORECASE | re.DOTALL)


def parse_standby_names(value: str) -> PgSync | None:
    """``synchronous_standby_names`` as a ``PgSync``; None when it cannot be modelled (``*``).

    ``FIRST k (S)`` and a plain list (``FIRST 1``) also acknowledge only once ``k`` members of ``S``
    confirmed, which is all the invariant needs.
    """
    text = value.strip()
    if not text:
        return ASYNC
    match = _ANY.match(text)
    if match:
        k, body = int(match.group(2)), match.group(3)
    else:
        k, body = 1, text
    names = _split_names(body)
    if names is None or not names or "*" in names:
        return None
    return PgSync(k, frozenset(names)) if k > 0 else ASYNC


def _split_names(body: str) -> list[str] | None:
    names: list[str] = []
    i, n = 0, len(body)
    while i < n:
        while i < n and body[i] in " \t\n,":
            i += 1
        if i >= n:
            break
        if body[i] == '"':
            j, buf = i + 1, []
            while True:
                if j >= n:
                    return None
                if body[j] == '"':
                    if j + 1 < n and body[j + 1] == '"':
                        buf.append('"')
                        j += 2
                        continue
                    break
                buf.append(body[j])
                j += 1
            names.append("".join(buf))
            i = j + 1
        else:
            j = i
            while j < n and body[j] not in ",":
                j += 1
            names.append(body[i:j].strip().lower())  # unquoted names are case-folded by postgres
            i = j
    return names


def _quote_name(name: str) -> str:
    if re.fullmatch(r"[a-z_][a-z0-9_]*", name):
        return name
    return '"' + name.replace('"', '""') + '"'


def healthy_standbys(
    observation: SyncObservation,
    members: Iterable[MemberInfo],
    me: str,
    listed: frozenset[str],
    max_lag: int,
) -> frozenset[str]:
    """Standbys allowed to vote: members streaming from us, not nofailover, not witnesses.

    A standby already listed stays while it streams; a new one joins only once within ``max_lag``
    bytes of our flush position, so a burst of lag does not make the quorum flap.
    """
    eligible = {m.name for m in members if m.name != me and not m.witness and not m.nofailover}
    out = set()
    for s in observation.standbys:
        if s.name not in eligible or s.state != "streaming" or s.flush_lsn is None:
            continue
        lag = (observation.flush_lsn or 0) - s.flush_lsn
        if s.name in listed or lag <= max_lag:
            out.add(s.name)
    return frozenset(out)


def caught_up(observation: SyncObservation, listed: frozenset[str]) -> frozenset[str]:
    """Listed standbys that flushed past the position at which the current setting took effect."""
    if observation.change_lsn is None:
        return frozenset()
    return frozenset(
        s.name
        for s in observation.standbys
        if s.name in listed and s.flush_lsn is not None and s.flush_lsn >= observation.change_lsn
    )
