"""``.status`` of a PostgresCluster, mirrored from etcd (what the agents publish) and the pods: a
pure function of what was observed, the previous status (so a condition keeps its
``lastTransitionTime`` while it holds) and the clock."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from pgquorum.agent.model import ClusterState, HistoryEntry, Role
from pgquorum.operator.observed import Observed


class Phase(StrEnum):
    CREATING = "Creating"  # no leader yet since the cluster was made
    HEALTHY = "Healthy"
    DEGRADED = "Degraded"  # writable, but a member is missing or not ready
    UNAVAILABLE = "Unavailable"  # no writable leader
    INVALID = "Invalid"  # the spec was refused (see the Ready condition's message)


class Cond(StrEnum):
    READY = "Ready"
    AVAILABLE = "Available"
    QUORUM_SAFE = "QuorumSafe"
    PROGRESSING = "Progressing"
    DEGRADED = "Degraded"


@dataclass(frozen=True)
class Desired:
    """What the spec asks for, as far as the status needs it."""

    members: tuple[str, ...]
    witnesses: tuple[str, ...]
    quorum_mode: bool  # synchronous.mode: quorum
    generation: int


@dataclass(frozen=True)
class Condition:
    type: Cond
    ok: bool
    reason: str
    message: str


def members_status(observed: Observed, desired: Desired) -> list[dict[str, Any]]:
    etcd = observed.etcd
    leader = etcd.member(etcd.leader.name) if etcd is not None and etcd.leader is not None else None
    leader_lsn = leader.wal_lsn if leader is not None else None
    names = list(dict.fromkeys([*desired.members, *desired.witnesses, *(p.name for p in observed.pods)]))
    if etcd is not None:
        names += [m.name for m in etcd.members if m.name not in names]
    out: list[dict[str, Any]] = []
    for name in names:
        pod = observed.pod(name)
        member = etcd.member(name) if etcd is not None else None
        role = member.role.value if member is not None else ("down" if pod is None or not pod.ready else "unknown")
        lsn = member.best_lsn() if member is not None else None
        entry: dict[str, Any] = {
            "name": name,
            "role": role,
            "pod": pod.name if pod is not None else None,
            "node": pod.node if pod is not None else None,
            "ready": bool(pod is not None and pod.ready),
        }
        if lsn is not None:
            entry["lsn"] = _lsn_text(lsn)
            if leader_lsn is not None and member is not None and member.role is Role.REPLICA:
                entry["lagBytes"] = max(0, leader_lsn - lsn)
        out.append({k: v for k, v in entry.items() if v is not None})
    return out


def quorum_status(etcd: ClusterState | None, desired: Desired) -> dict[str, Any]:
    """Whether a failover now is proven to keep every acknowledged commit."""
    if not desired.quorum_mode:
        return {"provable": False, "reason": "synchronous.mode is off: a failover may lose the last commits"}
    if etcd is None:
        return {"provable": False, "reason": "etcd unreachable: the quorum record cannot be read"}
    record = etcd.sync
    leader = etcd.leader.name if etcd.leader is not None else None
    if record is None or record.k == 0:
        return {"provable": False, "reason": "no quorum established yet (the leader has not written its record)"}
    if leader is not None and record.leader != leader:
        return {"provable": False, "reason": f"the quorum record is {record.leader}'s, the leader is {leader}"}
    voters = ", ".join(record.voters)
    return {"provable": True, "reason": f"every commit waits for {record.k} of {voters}"}


def last_failover(history: Sequence[HistoryEntry]) -> dict[str, Any] | None:
    for entry in reversed(history):
        if entry.old_leader is None:
            continue  # bootstrap
        return {
            "time": _iso(datetime.fromtimestamp(entry.at, UTC)),
            "from": entry.old_leader,
            "to": entry.new_leader,
            "reason": entry.reason,
            "term": entry.term,
            "durations": {k: str(v) for k, v in sorted(entry.durations.items())},
        }
    return None


def conditions(observed: Observed, desired: Desired, quorum: Mapping[str, Any]) -> list[Condition]:
    etcd = observed.etcd
    leader = observed.leader
    leader_pod = observed.pod(leader) if leader is not None else None
    writable = leader_pod is not None and leader_pod.ready and leader_pod.role == "primary"
    expected = [*desired.members, *desired.witnesses]
    not_ready = [n for n in expected if not ((p := observed.pod(n)) is not None and p.ready)]
    extra = sorted(p.name for p in observed.pods if p.name not in expected)
    out = []
    if etcd is None:
        available = Condition(Cond.AVAILABLE, False, "EtcdUnreachable", observed.etcd_error or "etcd unreachable")
    elif writable:
        available = Condition(Cond.AVAILABLE, True, "LeaderServing", f"{leader} is the primary (term {etcd.term})")
    elif leader is not None:
        available = Condition(Cond.AVAILABLE, False, "LeaderNotReady", f"{leader} holds the key but is not serving")
    else:
        available = Condition(Cond.AVAILABLE, False, "NoLeader", "no member holds the leader key")
    out.append(available)
    if not_ready:
        out.append(Condition(Cond.DEGRADED, True, "MembersNotReady", "not ready: " + ", ".join(not_ready)))
    else:
        out.append(Condition(Cond.DEGRADED, False, "AllMembersReady", f"{len(expected)} members ready"))
    if extra or len(observed.pods) < len(expected):
        missing = [n for n in expected if observed.pod(n) is None]
        what = "; ".join(
            x
            for x in (
                f"creating {', '.join(missing)}" if missing else "",
                f"removing {', '.join(extra)}" if extra else "",
            )
            if x
        )
        out.append(Condition(Cond.PROGRESSING, True, "Reconciling", what))
    else:
        out.append(Condition(Cond.PROGRESSING, False, "Reconciled", "every member exists"))
    if desired.quorum_mode:
        out.append(
            Condition(
                Cond.QUORUM_SAFE,
                bool(quorum["provable"]),
                "QuorumProvable" if quorum["provable"] else "QuorumNotProvable",
                str(quorum["reason"]),
            )
        )
    else:
        out.append(Condition(Cond.QUORUM_SAFE, False, "Asynchronous", str(quorum["reason"])))
    ready = available.ok and not not_ready
    out.append(
        Condition(
            Cond.READY,
            ready,
            "ClusterReady" if ready else available.reason if not available.ok else "MembersNotReady",
            available.message if ready or not available.ok else "not ready: " + ", ".join(not_ready),
        )
    )
    return out


def phase_of(observed: Observed, conds: Sequence[Condition]) -> Phase:
    by = {c.type: c for c in conds}
    if by[Cond.READY].ok:
        return Phase.HEALTHY
    if by[Cond.AVAILABLE].ok:
        return Phase.DEGRADED
    if observed.etcd is not None and observed.etcd.term == 0:
        return Phase.CREATING
    return Phase.UNAVAILABLE


def cluster_status(
    observed: Observed, desired: Desired, previous: Mapping[str, Any] | None, now: datetime
) -> dict[str, Any]:
    etcd = observed.etcd
    quorum = quorum_status(etcd, desired)
    conds = conditions(observed, desired, quorum)
    status: dict[str, Any] = {
        "phase": phase_of(observed, conds).value,
        "observedGeneration": desired.generation,
        "instances": len(desired.members),
        "readyInstances": sum(1 for n in desired.members if (p := observed.pod(n)) is not None and p.ready),
        "members": members_status(observed, desired),
        "quorum": quorum,
        "conditions": render_conditions(conds, (previous or {}).get("conditions") or [], desired.generation, now),
    }
    if etcd is not None:
        status["term"] = etcd.term
        if etcd.leader is not None:
            status["leader"] = etcd.leader.name
        timeline = etcd.status.timeline if etcd.status is not None else None
        if timeline is not None:
            status["timeline"] = timeline
    elif previous:
        # etcd unreachable: keep what was last known rather than blanking the leader
        for key in ("leader", "term", "timeline"):
            if key in previous:
                status[key] = previous[key]
    failover = last_failover(observed.history)
    if failover is not None:
        status["lastFailover"] = failover
    elif previous and "lastFailover" in previous:
        status["lastFailover"] = previous["lastFailover"]
    return status


def render_conditions(
    conds: Sequence[Condition], previous: Sequence[Mapping[str, Any]], generation: int, now: datetime
) -> list[dict[str, Any]]:
    """metav1.Condition objects; ``lastTransitionTime`` moves only when the status flips."""
    before = {c.get("type"): c for c in previous}
    out = []
    for c in conds:
        value = "True" if c.ok else "False"
        old = before.get(c.type.value)
        since = old.get("lastTransitionTime") if old is not None and old.get("status") == value else None
        out.append(
            {
                "type": c.type.value,
                "status": value,
                "reason": c.reason,
                "message": c.message,
                "observedGeneration": generation,
                "lastTransitionTime": since or _iso(now),
            }
        )
    return out


def failover_event(before: Mapping[str, Any] | None, after: Mapping[str, Any]) -> tuple[str, str] | None:
    """(reason, message) of a Kubernetes Event when the agents recorded a new failover.

    Keyed on ``lastFailover`` (the agents' history), not on ``leader``: a killed leader's key expires
    first, so one reconcile sees no leader and the next the new one, and comparing leaders would
    see None -> new, not old -> new. The first status of a resource (no ``before``) says nothing:
    an operator restart must not announce old failovers again."""
    if before is None:
        return None
    old, new = before.get("lastFailover"), after.get("lastFailover")
    if not new or old == new or (old and old.get("term") == new.get("term")):
        return None
    return "Failover", f"{new['from']} -> {new['to']} (term {new['term']}): {new['reason']}"


def _iso(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _lsn_text(lsn: int) -> str:
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"
