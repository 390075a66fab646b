"""What the operator sees of one PostgresCluster, as plain immutable data: its pods and PVCs (from
the apiserver) and its keys in etcd (from the agents). Built by the executor each reconcile; the
pure functions (status, reconcile) take it as input and never do I/O themselves."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from pgquorum.agent.model import ClusterState, HistoryEntry

CLUSTER_LABEL = "pgquorum.io/cluster"
MEMBER_LABEL = "pgquorum.io/member"
KIND_LABEL = "pgquorum.io/kind"  # data | witness
ROLE_LABEL = "pgquorum.io/role"  # set by the agent on its own pod (agent/podrole.py)
# on cluster-scoped objects made for a cluster (its node-fencer binding): the cluster's namespace
NAMESPACE_LABEL = "pgquorum.io/namespace"
SPEC_HASH_ANNOTATION = "pgquorum.io/spec-hash"  # of what the pod was made from: a changed one is rolled


class MemberKind(StrEnum):
    DATA = "data"
    WITNESS = "witness"


@dataclass(frozen=True)
class PodView:
    name: str
    kind: MemberKind
    phase: str  # Pending, Running, Succeeded, Failed, Unknown
    ready: bool
    role: str | None  # the agent's role label
    node: str | None
    spec_hash: str | None
    deleting: bool  # deletionTimestamp set
    created: datetime | None = None

    @staticmethod
    def from_object(obj: Mapping[str, Any]) -> PodView:
        meta = obj.get("metadata") or {}
        labels = meta.get("labels") or {}
        status = obj.get("status") or {}
        conditions = {c.get("type"): c.get("status") for c in status.get("conditions") or []}
        created = meta.get("creationTimestamp")
        kind = labels.get(KIND_LABEL)
        return PodView(
            name=str(meta.get("name", "")),
            kind=MemberKind.WITNESS if kind == MemberKind.WITNESS.value else MemberKind.DATA,
            phase=str(status.get("phase", "Unknown")),
            ready=conditions.get("Ready") == "True",
            role=labels.get(ROLE_LABEL),
            node=(obj.get("spec") or {}).get("nodeName"),
            spec_hash=(meta.get("annotations") or {}).get(SPEC_HASH_ANNOTATION),
            deleting=meta.get("deletionTimestamp") is not None,
            created=_time(created) if isinstance(created, str) else None,
        )

    @property
    def failed(self) -> bool:
        """A pod that will not come back by itself (managed pods are not restarted by any controller)."""
        return self.phase in ("Failed", "Succeeded")


@dataclass(frozen=True)
class PvcView:
    name: str
    member: str | None
    bound: bool
    deleting: bool

    @staticmethod
    def from_object(obj: Mapping[str, Any]) -> PvcView:
        meta = obj.get("metadata") or {}
        return PvcView(
            name=str(meta.get("name", "")),
            member=(meta.get("labels") or {}).get(MEMBER_LABEL),
            bound=(obj.get("status") or {}).get("phase") == "Bound",
            deleting=meta.get("deletionTimestamp") is not None,
        )


@dataclass(frozen=True)
class Observed:
    pods: tuple[PodView, ...] = ()
    pvcs: tuple[PvcView, ...] = ()
    etcd: ClusterState | None = None  # None: etcd unreachable this time
    etcd_error: str | None = None
    history: tuple[HistoryEntry, ...] = ()
    existing: frozenset[tuple[str, str]] = field(default_factory=frozenset)  # (kind, name) of other objects

    def pod(self, name: str) -> PodView | None:
        return next((p for p in self.pods if p.name == name), None)

    def pvc(self, name: str) -> PvcView | None:
        return next((p for p in self.pvcs if p.name == name), None)

    @property
    def leader(self) -> str | None:
        return self.etcd.leader.name if self.etcd is not None and self.etcd.leader is not None else None


def _time(text: str) -> datetime | None:
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
