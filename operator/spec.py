"""The PostgresCluster spec as typed, validated data. The CRD (operator/crd.py) enforces the same
defaults and rules at apply time and builds its defaults from the dataclasses here; this is the
operator's second line of defence (a resource stored before the CRD had a rule) and its typed view.

One source for what is safe: the timing rules are the agent's ``validate_timing``, the synchronous
section goes through the agent's ``sync_settings``, the default lag and the reserved PostgreSQL
settings are the agent's. ``SpecError`` names the field path (``spec.synchronous.k``) and the fix.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from decimal import Decimal
from enum import StrEnum
from typing import Any

from pgquorum.agent.config import ConfigError, PostgresSettings, Timing, sync_settings
from pgquorum.agent.config import validate_timing as agent_validate_timing
from pgquorum.agent.postgres.conf import RESERVED
from pgquorum.agent.quorum.sync import Durability
from pgquorum.kube.images import PGQUORUM_IMAGE

# PostgreSQL settings the agent owns (it ignores a user value): refused here, by name.
RESERVED_PARAMETERS = RESERVED
MAX_INSTANCES = 9
MAX_WITNESSES = 2
MAX_PARAMETERS = 200
MAX_ENDPOINTS = 9
# The generated objects' names must be DNS labels (<= 63): Services <name>-rw / -ro, pods <name>-8 and
# <name>-w1 (their hostnames in the headless Service). The longest suffix is 3 characters.
MAX_NAME = 63 - len("-rw")
# Cluster names: a DNS-1035 label (Service names must start with a letter). Member names derived from
# it (<name>-<i>, <name>-w<i>) also meet the agent's member-name rule (a-z, 0-9, '-', '_', <= 63).
CLUSTER_NAME = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
# A StorageClass name is a DNS subdomain.
DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
# A volume size: a positive number of bytes with an optional binary or decimal suffix.
SIZE = re.compile(r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$")
# Kubernetes' resource.Quantity (the pattern the apiserver's own CRDs use for int-or-string quantities).
QUANTITY = re.compile(
    r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)
ENDPOINT = re.compile(r"^https?://[^\s/]+(:[0-9]+)?/?$")
# PostgreSQL setting names, lower case (postgres folds case; the reserved check compares exact names).
PARAMETER = re.compile(r"^[a-z_][a-z0-9_]*(\.[a-z_][a-z0-9_]*)?$")
RESOURCE_KEYS = ("limits", "requests")


class SpecError(ValueError):
    """The spec cannot be used; the message names the field and the fix."""


class SyncMode(StrEnum):
    OFF = "off"
    QUORUM = "quorum"


class AntiAffinity(StrEnum):
    REQUIRED = "required"  # never two members on one node (pods stay Pending without enough nodes)
    PREFERRED = "preferred"


class PvcRetention(StrEnum):
    RETAIN = "Retain"  # a removed member's volume (and all volumes when the cluster is deleted) stays
    DELETE = "Delete"


def _default(cls: type, name: str) -> Any:
    return next(f.default for f in fields(cls) if f.name == name)


@dataclass(frozen=True)
class StorageSpec:
    size: str = "1Gi"
    storage_class_name: str | None = None  # None: the cluster's default StorageClass


@dataclass(frozen=True)
class SynchronousSpec:
    mode: SyncMode = SyncMode.OFF
    k: int = 1
    durability: Durability = Durability.REQUIRED

    @property
    def quorum(self) -> bool:
        return self.mode is SyncMode.QUORUM

    @property
    def quorum_required(self) -> bool:
        """Commits never wait for fewer than k standbys: k + 1 data members must exist."""
        return self.quorum and self.durability is Durability.REQUIRED


_T = Timing()


@dataclass(frozen=True)
class TimingSpec:
    """The agent's lease timing (agent/config.py ``Timing``) in the resource's camelCase."""

    ttl: int = int(_T.ttl)  # etcd leases are whole seconds
    loop_wait: float = _T.loop_wait
    retry_timeout: float = _T.retry_timeout
    safety_margin: float = _T.safety_margin

    def agent(self) -> Timing:
        return Timing(float(self.ttl), self.loop_wait, self.retry_timeout, self.safety_margin)


@dataclass(frozen=True)
class StonithSpec:
    delete_pod: bool = True  # the new leader deletes the old primary's pod with grace 0
    taint_node: bool = False  # and taints its node out-of-service (only when a dead node is the likely cause)


@dataclass(frozen=True)
class EtcdSpec:
    endpoints: tuple[str, ...] = ()
    bundled: bool = False  # the chart's etcd


@dataclass(frozen=True)
class SwitchoverRequest:
    target: str
    at: str | None = None  # RFC 3339 time; None: now


@dataclass(frozen=True)
class ClusterSpec:
    etcd: EtcdSpec
    instances: int = 3
    witnesses: int = 0
    image: str = PGQUORUM_IMAGE
    parameters: Mapping[str, str] = field(default_factory=dict)
    storage: StorageSpec = field(default_factory=StorageSpec)
    # corev1.ResourceRequirements: {limits: {cpu: "1"}, requests: {memory: 1Gi}}, values as strings
    resources: Mapping[str, Any] | None = None
    synchronous: SynchronousSpec = field(default_factory=SynchronousSpec)
    timing: TimingSpec = field(default_factory=TimingSpec)
    quorum_votes: bool = True
    maximum_lag_on_failover: int = _default(PostgresSettings, "maximum_lag_on_failover")
    stonith: StonithSpec = field(default_factory=StonithSpec)
    anti_affinity: AntiAffinity = AntiAffinity.PREFERRED
    pvc_retention: PvcRetention = PvcRetention.RETAIN
    switchover: SwitchoverRequest | None = None

    @property
    def voters(self) -> int:
        """Voting members (invariant I5): data members and witnesses; none in the lease-only mode."""
        return self.instances + self.witnesses if self.quorum_votes else 0


# -- quantities ------------------------------------------------------------------------------------

_SUFFIX = {
    "Ki": Decimal(2) ** 10, "Mi": Decimal(2) ** 20, "Gi": Decimal(2) ** 30,
    "Ti": Decimal(2) ** 40, "Pi": Decimal(2) ** 50, "Ei": Decimal(2) ** 60,
    "n": Decimal("1e-9"), "u": Decimal("1e-6"), "m": Decimal("1e-3"), "": Decimal(1),
    "k": Decimal("1e3"), "M": Decimal("1e6"), "G": Decimal("1e9"),
    "T": Decimal("1e12"), "P": Decimal("1e15"), "E": Decimal("1e18"),
}  # fmt: skip


def quantity(text: str) -> Decimal:
    """A Kubernetes quantity's value (``500m`` -> 0.5, ``1Gi`` -> 1073741824); ValueError if malformed."""
    if not QUANTITY.match(text):
        raise ValueError(f"not a quantity: {text!r}")
    m = re.match(r"^([+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+))(.*)$", text)
    assert m is not None
    number, suffix = Decimal(m.group(1)), m.group(2)
    if suffix[:1] in ("e", "E"):
        return number * Decimal(10) ** Decimal(suffix[1:])
    return number * _SUFFIX[suffix]


# -- parsing ---------------------------------------------------------------------------------------


def _section(raw: Mapping[str, Any], key: str, where: str, known: set[str]) -> Mapping[str, Any]:
    value = raw.get(key)
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise SpecError(f"{where}.{key}: expected a mapping, got {value!r}")
    unknown = sorted(set(value) - known)
    if unknown:
        raise SpecError(f"{where}.{key}.{unknown[0]}: unknown field (known: {', '.join(sorted(known))})")
    return value


def _int(raw: Mapping[str, Any], key: str, where: str, default: int, lo: int, hi: int | None = None) -> int:
    value = raw.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise SpecError(f"{where}.{key}: expected a whole number, got {value!r}")
    if value < lo or (hi is not None and value > hi):
        bound = f"between {lo} and {hi}" if hi is not None else f">= {lo}"
        raise SpecError(f"{where}.{key}: must be {bound}, got {value}")
    return value


def _num(raw: Mapping[str, Any], key: str, where: str, default: float) -> float:
    value = raw.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise SpecError(f"{where}.{key}: expected a number of seconds, got {value!r}")
    return float(value)


def _bool(raw: Mapping[str, Any], key: str, where: str, default: bool) -> bool:
    value = raw.get(key, default)
    if not isinstance(value, bool):
        raise SpecError(f"{where}.{key}: expected true or false, got {value!r}")
    return value


def _enum(raw: Mapping[str, Any], key: str, where: str, enum: type[StrEnum], default: StrEnum) -> Any:
    value = raw.get(key, default.value)
    try:
        return enum(value)
    except ValueError:
        raise SpecError(f"{where}.{key}: expected one of {', '.join(e.value for e in enum)}, got {value!r}") from None


TOP = {
    "instances", "witnesses", "image", "parameters", "storage", "resources", "synchronous", "timing",
    "quorumVotes", "maximumLagOnFailover", "stonith", "etcd", "antiAffinity", "pvcRetention", "switchover",
}  # fmt: skip


def check_name(name: str) -> None:
    """The resource's name: every object and member name derived from it must be valid."""
    if len(name) > MAX_NAME or not CLUSTER_NAME.match(name):
        raise SpecError(
            f"metadata.name: {name!r} must be at most {MAX_NAME} lower-case letters, digits or '-', starting "
            "with a letter and not ending with '-' (it names the Services <name>-rw/-ro and the pods); "
            "choose another name"
        )


def parse_spec(raw: Mapping[str, Any], name: str | None = None) -> ClusterSpec:
    """``name``: the resource's name, checked and used to check a switchover target against."""
    w = "spec"
    if not isinstance(raw, Mapping):
        raise SpecError("spec: expected a mapping")
    unknown = sorted(set(raw) - TOP)
    if unknown:
        raise SpecError(f"spec.{unknown[0]}: unknown field (known: {', '.join(sorted(TOP))})")
    if name is not None:
        check_name(name)
    instances = _int(raw, "instances", w, 3, 1, MAX_INSTANCES)
    witnesses = _int(raw, "witnesses", w, 0, 0, MAX_WITNESSES)
    quorum_votes = _bool(raw, "quorumVotes", w, True)
    _check_voters(instances, witnesses, quorum_votes)
    image = raw.get("image", PGQUORUM_IMAGE)
    if not isinstance(image, str) or not image or len(image) > 512 or any(c.isspace() for c in image):
        raise SpecError(f"spec.image: expected an image reference like {PGQUORUM_IMAGE}, got {image!r}")
    parameters = _parameters(raw.get("parameters"))
    storage = _storage(_section(raw, "storage", w, {"size", "storageClassName"}))
    resources = _resources(raw.get("resources"))
    sync = _synchronous(_section(raw, "synchronous", w, {"mode", "k", "durability"}), instances)
    tm = _section(raw, "timing", w, {"ttl", "loopWait", "retryTimeout", "safetyMargin"})
    d = TimingSpec()
    timing = TimingSpec(
        _int(tm, "ttl", f"{w}.timing", d.ttl, 2),
        _num(tm, "loopWait", f"{w}.timing", d.loop_wait),
        _num(tm, "retryTimeout", f"{w}.timing", d.retry_timeout),
        _num(tm, "safetyMargin", f"{w}.timing", d.safety_margin),
    )
    validate_timing(timing)
    lag = _int(raw, "maximumLagOnFailover", w, _default(PostgresSettings, "maximum_lag_on_failover"), 0)
    sn = _section(raw, "stonith", w, {"kubernetes"})
    k8s = _section(sn, "kubernetes", f"{w}.stonith", {"deletePod", "taintNode"})
    stonith = StonithSpec(
        _bool(k8s, "deletePod", f"{w}.stonith.kubernetes", True),
        _bool(k8s, "taintNode", f"{w}.stonith.kubernetes", False),
    )
    if stonith.taint_node and not stonith.delete_pod:
        raise SpecError(
            "spec.stonith.kubernetes.taintNode: needs deletePod: true (the taint is part of the pod-deleting "
            "hook); set deletePod: true or taintNode: false"
        )
    etcd = _etcd(_section(raw, "etcd", w, {"endpoints", "bundled"}))
    return ClusterSpec(
        etcd=etcd,
        instances=instances,
        witnesses=witnesses,
        image=image,
        parameters=parameters,
        storage=storage,
        resources=resources,
        synchronous=sync,
        timing=timing,
        quorum_votes=quorum_votes,
        maximum_lag_on_failover=lag,
        stonith=stonith,
        anti_affinity=_enum(raw, "antiAffinity", w, AntiAffinity, AntiAffinity.PREFERRED),
        pvc_retention=_enum(raw, "pvcRetention", w, PvcRetention, PvcRetention.RETAIN),
        switchover=_switchover(
            raw.get("switchover"), _section(raw, "switchover", w, {"target", "at"}), name, instances
        ),
    )


def _check_voters(instances: int, witnesses: int, quorum_votes: bool) -> None:
    if witnesses and not quorum_votes:
        # the agent refuses a witness with quorum_votes: false (it only exists to vote)
        raise SpecError("spec.witnesses: witnesses only vote; they need quorumVotes: true (or set witnesses: 0)")
    if witnesses >= instances and witnesses:
        raise SpecError(
            f"spec.witnesses: must be fewer than instances ({witnesses} >= {instances}); a witness breaks ties "
            "between data members: add instances or remove witnesses"
        )
    # A promotion needs a majority of the voters (data members + witnesses): of 2, that is both, so
    # losing either stops failover. 1 voter has nothing to fail over to; 4 keep a majority of 3.
    # Without votes (lease-only mode) etcd alone decides and 2 data members are fine.
    if quorum_votes and instances + witnesses == 2:
        raise SpecError(
            f"spec.witnesses: {instances} data member(s) and {witnesses} witness(es) are 2 voters, which cannot "
            "keep a majority after losing one: add a witness (witnesses: 1) or use instances: 3"
        )


def _parameters(raw: Any) -> dict[str, str]:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping) or not all(isinstance(k, str) and isinstance(v, str) for k, v in raw.items()):
        raise SpecError(
            'spec.parameters: expected a map of PostgreSQL setting names to strings, e.g. {work_mem: "64MB"}'
        )
    if len(raw) > MAX_PARAMETERS:
        raise SpecError(f"spec.parameters: at most {MAX_PARAMETERS} settings, got {len(raw)}")
    for key in sorted(raw):
        if not PARAMETER.match(key):
            raise SpecError(
                f"spec.parameters.{key}: not a PostgreSQL setting name; write it in lower case, e.g. work_mem"
            )
    reserved = sorted(set(raw) & RESERVED_PARAMETERS)
    if reserved:
        raise SpecError(
            f"spec.parameters.{reserved[0]}: managed by pgquorum (the agent would ignore it); remove it "
            f"(reserved: {', '.join(sorted(RESERVED_PARAMETERS))})"
        )
    return dict(raw)


def _storage(st: Mapping[str, Any]) -> StorageSpec:
    size = st.get("size", StorageSpec.size)
    if not isinstance(size, str) or not SIZE.match(size) or quantity(size) <= 0:
        raise SpecError(f"spec.storage.size: expected a positive quantity like 10Gi, got {size!r}")
    sc = st.get("storageClassName")
    if sc is not None and (not isinstance(sc, str) or len(sc) > 253 or not DNS_SUBDOMAIN.match(sc)):
        raise SpecError(f"spec.storage.storageClassName: {sc!r} is not a StorageClass name (kubectl get storageclass)")
    return StorageSpec(size, sc)


def _resources(raw: Any) -> dict[str, dict[str, str]] | None:
    if raw is None:
        return None
    if not isinstance(raw, Mapping):
        raise SpecError('spec.resources: expected {requests: {memory: 1Gi}, limits: {cpu: "2"}}')
    unknown = sorted(set(raw) - set(RESOURCE_KEYS))
    if unknown:
        raise SpecError(f"spec.resources.{unknown[0]}: unknown field (known: {', '.join(RESOURCE_KEYS)})")
    out: dict[str, dict[str, str]] = {}
    for key in RESOURCE_KEYS:
        values = raw.get(key)
        if values is None:
            continue
        if not isinstance(values, Mapping):
            raise SpecError(f"spec.resources.{key}: expected a map of resource names to quantities, e.g. {{cpu: 500m}}")
        out[key] = {}
        for res, value in values.items():
            text = str(value) if isinstance(value, int) and not isinstance(value, bool) else value
            if not isinstance(text, str) or not QUANTITY.match(text):
                raise SpecError(f"spec.resources.{key}.{res}: {value!r} is not a quantity (e.g. 500m, 2, 1Gi)")
            out[key][str(res)] = text
    limits, requests = out.get("limits", {}), out.get("requests", {})
    for res in sorted(set(limits) & set(requests)):
        if quantity(requests[res]) > quantity(limits[res]):
            raise SpecError(
                f"spec.resources.requests.{res}: {requests[res]} exceeds the limit {limits[res]} (Kubernetes "
                "refuses such a pod); lower the request or raise the limit"
            )
    return out


def _synchronous(sy: Mapping[str, Any], instances: int) -> SynchronousSpec:
    where = "spec.synchronous"
    _int(sy, "k", where, SynchronousSpec.k, 1)  # a whole number (the agent would also take 2.0)
    try:
        agent = sync_settings(dict(sy), where=where)  # the agent's own checks of mode, k, durability
    except ConfigError as exc:
        raise SpecError(str(exc)) from None
    sync = SynchronousSpec(SyncMode(agent.mode), agent.k, Durability(agent.durability))
    # Quorum commit (agent/quorum/sync.py): a commit waits for k of the standbys, and the quorum is
    # provable only while 1 <= k <= the number of standbys. Every data member but the primary is a
    # standby, so the rule is 1 <= k <= instances - 1. Under durability: required, k = instances - 1
    # is allowed but blocks commits while any standby is down.
    if sync.quorum and sync.k > instances - 1:
        fix = f"lower k to at most {instances - 1}" if instances > 1 else "use mode: off"
        raise SpecError(
            f"spec.synchronous.k: {sync.k} standbys must confirm each commit but instances: {instances} has only "
            f"{instances - 1} standby(s); {fix} or raise instances to {sync.k + 1}"
        )
    return sync


def validate_timing(t: TimingSpec) -> None:
    """The agent's timing rules, its messages in the resource's names (spec.timing.loopWait)."""
    try:
        agent_validate_timing(t.agent())
    except ConfigError as exc:
        raise SpecError(f"spec.{_camel(str(exc))}") from None


def _etcd(et: Mapping[str, Any]) -> EtcdSpec:
    endpoints = et.get("endpoints") or []
    bundled = _bool(et, "bundled", "spec.etcd", False)
    if not isinstance(endpoints, list) or len(endpoints) > MAX_ENDPOINTS:
        raise SpecError(f"spec.etcd.endpoints: expected a list of at most {MAX_ENDPOINTS} http(s)://host:port URLs")
    for i, e in enumerate(endpoints):
        if not isinstance(e, str) or not ENDPOINT.match(e):
            raise SpecError(f"spec.etcd.endpoints[{i}]: {e!r} is not an http(s)://host:port URL, e.g. http://etcd:2379")
    if bool(endpoints) == bundled:
        raise SpecError(
            "spec.etcd: set exactly one of endpoints (your etcd, e.g. endpoints: [http://etcd:2379]) "
            "or bundled: true (the chart's etcd)"
        )
    return EtcdSpec(tuple(endpoints), bundled)


_RFC3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)$")


def _switchover(given: object, so: Mapping[str, Any], name: str | None, instances: int) -> SwitchoverRequest | None:
    if given is None:
        return None
    target = so.get("target")
    if not isinstance(target, str) or not DNS_LABEL.match(target):
        raise SpecError(f"spec.switchover.target: required, a member name like <cluster>-1, got {target!r}")
    if name is not None and target not in {f"{name}-{i}" for i in range(instances)}:
        raise SpecError(
            f"spec.switchover.target: {target} is not a data member of {name}; use one of "
            f"{name}-0 .. {name}-{instances - 1}"
        )
    at = so.get("at")
    if at is not None and (not isinstance(at, str) or not _RFC3339.match(at)):
        raise SpecError(f"spec.switchover.at: expected an RFC 3339 time like 2026-12-04T01:00:00Z, got {at!r}")
    return SwitchoverRequest(target, at)


def check_update(old: ClusterSpec, new: ClusterSpec) -> None:
    """What may not change on a running cluster (the CRD's transition rules, again)."""
    if new.storage.storage_class_name != old.storage.storage_class_name:
        raise SpecError(
            "spec.storage.storageClassName: is immutable (the volumes exist); create a new cluster to change it"
        )
    if quantity(new.storage.size) < quantity(old.storage.size):
        raise SpecError(
            "spec.storage.size: may only grow (a PersistentVolumeClaim cannot shrink): "
            f"keep at least {old.storage.size}"
        )
    if new.etcd != old.etcd:
        raise SpecError("spec.etcd: is immutable (the cluster's state lives there); create a new cluster to change it")
    if new.quorum_votes != old.quorum_votes:
        raise SpecError(
            "spec.quorumVotes: is immutable (every member must agree; a rolling change would mix the two modes); "
            "create a new cluster to change it"
        )


def _camel(message: str) -> str:
    """The agent's messages name its snake_case settings; the resource spells them camelCase."""
    for snake, camel in (
        ("loop_wait", "loopWait"),
        ("retry_timeout", "retryTimeout"),
        ("safety_margin", "safetyMargin"),
    ):
        message = message.replace(snake, camel)
    return message
