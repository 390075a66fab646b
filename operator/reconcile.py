"""What to do next for one PostgresCluster: a pure function of the target (the objects its spec
renders to) and what was observed. It returns the steps; the executor performs them and the next
reconcile sees the result. Never more than one disruptive step (a pod deleted, a member retired, a
switchover) per call, and none while the cluster has no serving leader: membership changes one
member at a time, each keeping a majority of voters and the members quorum commit needs.

Orders that keep acknowledged writes and the majority safe:
- scale down: the highest-numbered member goes first; if it is the leader, a switchover to a
  healthy replica comes first; then its pod; then its vote (``voters/<name>``) once its agent is
  gone (a running agent would register again); then its PVC when the policy says Delete;
- rolling update (a pod whose spec hash differs): replicas one at a time (each must be back, ready,
  before the next), the leader last, after a switchover to an updated replica;
- a refused change (fewer data members than quorum commit requires) does nothing and says why.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from pgquorum.agent.model import Role
from pgquorum.operator.observed import MemberKind, Observed


@dataclass(frozen=True)
class Manifest:
    """One object to keep: its kind, name, body, and the hash of its body (stored on the object as
    an annotation, so a changed spec is noticed without comparing whole objects)."""

    kind: str
    name: str
    body: Mapping[str, Any]
    hash: str


@dataclass(frozen=True)
class MemberTarget:
    name: str
    kind: MemberKind
    pod: Manifest
    pvc: Manifest | None  # None: a witness keeps no data


@dataclass(frozen=True)
class Target:
    shared: tuple[Manifest, ...]  # ServiceAccount, Role, Services, ConfigMap, PDB, ...
    members: tuple[MemberTarget, ...]
    delete_pvcs: bool  # the PVC retention policy for removed members
    min_data_members: int  # k + 1 under quorum commit with durability: required, else 1
    # quorum commit with durability: required: the agents promote only with the leader's quorum record
    promotion_needs_quorum: bool = False


class StepKind(StrEnum):
    APPLY = "apply"
    DELETE_POD = "delete-pod"
    DELETE_PVC = "delete-pvc"
    RETIRE_VOTER = "retire-voter"
    SWITCHOVER = "switchover"
    DELETE_CLUSTER_OBJECT = "delete-cluster-object"  # cluster-scoped: no garbage collection takes it


@dataclass(frozen=True)
class Step:
    kind: StepKind
    name: str  # object or member name
    reason: str
    manifest: Manifest | None = None
    target: str | None = None  # switchover candidate


@dataclass(frozen=True)
class Plan:
    steps: tuple[Step, ...] = ()
    waiting: str | None = None  # why nothing disruptive happens now (Progressing condition)
    refused: str | None = None  # an unsafe request, not applied (condition + event)
    events: tuple[tuple[str, str], ...] = field(default_factory=tuple)  # (reason, message)


SETTLE_SECONDS = 20.0


def plan(
    target: Target,
    observed: Observed,
    existing: Mapping[tuple[str, str], str | None],
    now: datetime | None = None,
) -> Plan:
    """``existing``: (kind, name) -> spec-hash annotation of the shared objects and PVCs that exist;
    ``now``: the operator's clock, for the settle rule (None: pods count as settled)."""
    steps: list[Step] = []
    for m in target.shared:
        have = existing.get((m.kind, m.name), _MISSING)
        if have is _MISSING:
            steps.append(Step(StepKind.APPLY, m.name, f"{m.kind} {m.name} missing", manifest=m))
        elif have != m.hash:
            steps.append(Step(StepKind.APPLY, m.name, f"{m.kind} {m.name} changed", manifest=m))
    kept = {(m.kind, m.name) for m in target.shared}
    for kind, name in sorted(existing):
        if kind in CLUSTER_SCOPED and (kind, name) not in kept:
            steps.append(Step(StepKind.DELETE_CLUSTER_OBJECT, name, f"{kind} {name} no longer wanted"))
    wanted = {t.name: t for t in target.members}
    data_wanted = [t for t in target.members if t.kind is MemberKind.DATA]
    if len(data_wanted) < target.min_data_members:
        return Plan(
            tuple(steps),
            refused=(
                f"instances: {len(data_wanted)} data members cannot hold quorum commit, which needs "
                f"{target.min_data_members} (k + 1 with durability: required); raise instances or lower k"
            ),
        )
    # Creations are never disruptive: every missing PVC and pod at once (pods of a new cluster race
    # for the bootstrap key in etcd; later ones clone from the leader).
    held: str | None = None
    for t in target.members:
        if t.pvc is not None and existing.get(("PersistentVolumeClaim", t.pvc.name), _MISSING) is _MISSING:
            steps.append(Step(StepKind.APPLY, t.pvc.name, f"member {t.name} has no volume", manifest=t.pvc))
        pod = observed.pod(t.name)
        if pod is None and _hold_back(t, observed, target.promotion_needs_quorum):
            held = f"{t.name} is recreated once another member leads (it held or may still hold the leader key)"
            continue
        if pod is None:
            steps.append(Step(StepKind.APPLY, t.name, f"member {t.name} has no pod", manifest=t.pod))
        elif pod.failed and not pod.deleting:
            steps.append(Step(StepKind.DELETE_POD, t.name, f"pod {t.name} is {pod.phase}: recreate it"))
    disruptive = _next_disruption(target, observed, wanted, existing, now)
    if isinstance(disruptive, Step):
        steps.append(disruptive)
        return Plan(tuple(steps))
    return Plan(tuple(steps), waiting=disruptive or held)


_MISSING = "\0missing"
CLUSTER_SCOPED = frozenset({"ClusterRoleBinding"})  # made for a cluster, deleted by the operator


def _next_disruption(
    target: Target,
    observed: Observed,
    wanted: Mapping[str, MemberTarget],
    existing: Mapping[tuple[str, str], str | None],
    now: datetime | None,
) -> Step | str | None:
    """The one disruptive step to take now, or why none is (None: nothing to do)."""
    etcd = observed.etcd
    leader = observed.leader
    # Leftovers of removed members whose pods are gone: their votes, then their volumes.
    for pod_gone in _removed_members(target, observed):
        if etcd is not None and any(v.name == pod_gone for v in etcd.voters):
            if etcd.member(pod_gone) is None:  # its agent's key expired: it cannot register again
                return Step(StepKind.RETIRE_VOTER, pod_gone, f"member {pod_gone} removed: its vote goes")
            return f"waiting for {pod_gone}'s agent to stop before its vote is removed"
    if target.delete_pvcs:
        for (kind, name), _ in sorted(existing.items()):
            owner = name.removesuffix("-data")
            if kind == "PersistentVolumeClaim" and owner not in wanted and observed.pod(owner) is None:
                voter_left = etcd is not None and any(v.name == owner for v in etcd.voters)
                if not voter_left:
                    return Step(StepKind.DELETE_PVC, name, f"member {owner} removed (pvcRetention: Delete)")
    extra = sorted((p for p in observed.pods if p.name not in wanted and not p.deleting), key=_ordinal, reverse=True)
    stale = [
        t
        for t in target.members
        if (p := observed.pod(t.name)) is not None and not p.deleting and p.spec_hash not in (None, t.pod.hash)
    ]
    if not extra and not stale:
        return None
    if etcd is None:
        return "etcd unreachable: no membership change until it answers"
    if leader is None:
        return "no leader: no membership change until one serves"
    busy = [p.name for p in observed.pods if p.deleting]
    if busy:
        return f"waiting for {', '.join(busy)} to go"
    not_ready = [t.name for t in target.members if not ((p := observed.pod(t.name)) is not None and p.ready)]
    if not_ready:
        return f"waiting for {', '.join(not_ready)} to be ready"
    # Ready is not caught up: a member recreated a moment ago passes its probe within seconds,
    # before it streams again and acknowledges synchronous commits; its etcd key may still be the
    # one its previous pod wrote. Measured: the next replica taken 2 s after one came back left
    # the leader without a synchronous standby and the cluster without a provable quorum.
    if now is not None:
        young = sorted(
            p.name
            for p in observed.pods
            if p.created is not None and (now - p.created).total_seconds() < SETTLE_SECONDS
        )
        if young:
            return f"waiting for {', '.join(young)} to settle ({SETTLE_SECONDS:g} s after its pod was made)"
    if extra:
        victim = extra[0]
        if victim.name == leader:
            candidate = _switchover_candidate(target, observed, exclude={victim.name})
            if candidate is None:
                return f"{victim.name} leads and no healthy replica can take over"
            return Step(
                StepKind.SWITCHOVER, victim.name, f"{victim.name} is removed: hand over first", target=candidate
            )
        short = _quorum_short(target, observed, victim.name)
        if short is not None:
            return short
        return Step(StepKind.DELETE_POD, victim.name, f"scale down: member {victim.name} removed")
    # rolling update: replicas first, the leader last (after a switchover to an updated replica)
    replicas = [t for t in stale if t.name != leader]
    if replicas:
        first = sorted(replicas, key=lambda t: (t.kind is MemberKind.DATA, _ordinal_name(t.name)))[0]
        short = _quorum_short(target, observed, first.name) if first.kind is MemberKind.DATA else None
        if short is not None:
            return short
        return Step(StepKind.DELETE_POD, first.name, f"rolling update: {first.name} recreated from the new spec")
    updated = {t.name for t in target.members if (p := observed.pod(t.name)) is not None and p.spec_hash == t.pod.hash}
    candidate = _switchover_candidate(target, observed, exclude={leader}, among=updated)
    if candidate is None:
        return f"rolling update: {leader} is the last one and no updated replica can take over yet"
    return Step(StepKind.SWITCHOVER, leader, "rolling update: the leader goes last", target=candidate)


def _quorum_short(target: Target, observed: Observed, victim: str) -> str | None:
    """Why taking ``victim`` down now would stop commits (None: it would not). Under quorum commit
    with durability required the leader waits for ``k`` of the standbys in its quorum record; a
    member recreated a moment ago is ready before it has caught up and joined that record, so the
    next one may go only once enough others are in it (measured: a rolling update that did not
    wait stopped writes for 30 s)."""
    etcd = observed.etcd
    if not target.promotion_needs_quorum or etcd is None or etcd.leader is None:
        return None
    record = etcd.sync
    if record is None or record.k == 0:
        return "waiting for the leader's quorum record before taking a member down"
    standbys = [
        v
        for v in record.voters
        if v not in (etcd.leader.name, victim) and (m := etcd.member(v)) is not None and m.role is Role.REPLICA
    ]
    if len(standbys) >= record.k:
        return None
    joining = sorted(t.name for t in target.members if t.kind is MemberKind.DATA and t.name not in record.voters)
    return (
        f"waiting for {', '.join(joining) or 'a replica'} to join the synchronous quorum before taking {victim} down "
        f"(commits wait for {record.k} of {', '.join(record.voters)})"
    )


def _hold_back(t: MemberTarget, observed: Observed, needs_quorum: bool) -> bool:
    """A lost leader's pod waits for the failover: recreated at once, it would come back beside its
    old data, often the newest, and take the key again — the replicas' failover would not happen
    and -rw would wait for a pod start. Only while another data member's pod runs to take over, and
    only while a failover can happen: without the leader's quorum record (lost before quorum
    commit was established) the agents refuse to promote, and the old leader must come back."""
    etcd = observed.etcd
    if t.kind is not MemberKind.DATA or etcd is None or etcd.term == 0:
        return False
    if needs_quorum and (etcd.sync is None or etcd.sync.k == 0 or etcd.sync.leader != t.name):
        return False
    leader = observed.leader
    last_leader = observed.history[-1].new_leader if observed.history else None
    if leader is not None and leader != t.name:
        return False
    if leader is None and last_leader not in (None, t.name):
        return False
    return any(p.kind is MemberKind.DATA and p.name != t.name and not p.deleting for p in observed.pods)


def _removed_members(target: Target, observed: Observed) -> list[str]:
    etcd = observed.etcd
    if etcd is None:
        return []
    wanted = {t.name for t in target.members}
    return sorted(v.name for v in etcd.voters if v.name not in wanted and observed.pod(v.name) is None)


def _switchover_candidate(
    target: Target, observed: Observed, exclude: set[str], among: set[str] | None = None
) -> str | None:
    """The most caught-up streaming replica that is ready (and, if given, in ``among``)."""
    etcd = observed.etcd
    if etcd is None:
        return None
    best: tuple[int, str] | None = None
    for t in target.members:
        if t.kind is not MemberKind.DATA or t.name in exclude or (among is not None and t.name not in among):
            continue
        pod = observed.pod(t.name)
        member = etcd.member(t.name)
        if pod is None or not pod.ready or member is None or member.role is not Role.REPLICA or member.nofailover:
            continue
        if target.promotion_needs_quorum and etcd.sync is not None and t.name not in etcd.sync.voters:
            continue  # not caught up into the quorum yet: the agents would refuse to hand over to it
        lsn = member.best_lsn() or 0
        if best is None or lsn > best[0]:
            best = (lsn, t.name)
    return best[1] if best is not None else None


def _ordinal_name(name: str) -> tuple[int, str]:
    tail = name.rsplit("-", 1)[-1]
    return (int(tail), name) if tail.isdigit() else (-1, name)


def _ordinal(pod: Any) -> tuple[int, str]:
    return _ordinal_name(pod.name)
