"""The agent's YAML configuration as written by whatever starts agents (local runner, chaos
cluster, bench, the Kubernetes operator): one pure function from what the launcher knows to the
document ``agent/config.py`` loads, so every launcher writes the same keys the same way.

``render_agent_config`` takes the agent's own setting types (``Timing``, ``PostgresSettings``,
``SyncSettings``, STONITH ``Hook``s, ...) and returns plain data for ``yaml.safe_dump``. A setting
left at its type's default is omitted, so the agent's default applies, as if the launcher had not
mentioned it; the exceptions are noted where they are made. It does not validate: the loader does
(``write_agent_config`` runs it before writing), so the errors are the agent's own.
"""

from __future__ import annotations

import enum
import os
import pwd
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from pgquorum.agent.config import ApiSettings, PostgresSettings, SyncSettings, Timing, config_from_dict
from pgquorum.agent.podrole import KubernetesSettings
from pgquorum.agent.stonith import ExecHook, Hook
from pgquorum.agent.watchdog import WatchdogConfig


@dataclass(frozen=True)
class ClusterSettings:
    """What every agent of one cluster is given alike."""

    cluster: str
    etcd_endpoints: tuple[str, ...]
    timing: Timing = field(default_factory=Timing)
    api: ApiSettings = field(default_factory=ApiSettings)  # the REST API's credentials (files)
    quorum_votes: bool = True  # False: the lease-only mode; every member must agree
    etcd_prefix: str | None = None  # None: the agent's default
    log_level: str | None = None  # None: the agent's default


@dataclass(frozen=True)
class DataMember:
    """A member running PostgreSQL."""

    postgres: PostgresSettings
    synchronous: SyncSettings | None = None  # None: the agent's default (off); etcd's dynamic config wins
    nofailover: bool = False
    stonith: tuple[Hook, ...] = ()  # fence the old leader before this member promotes
    watchdog: WatchdogConfig | None = None  # None: off


@dataclass(frozen=True)
class Witness:
    """A voting member without PostgreSQL (invariant I5): nothing to configure beyond the member."""


WITNESS = Witness()


@dataclass(frozen=True)
class MemberSettings:
    """One agent: its name, where its REST API listens, and whether it is a data member or a witness."""

    name: str
    api_listen: str  # host:port the REST API binds
    role: DataMember | Witness
    api_url: str | None = None  # how others reach the API; None: http://<api_listen>
    kubernetes: KubernetesSettings | None = None  # in a pod: the pod whose role label it keeps
    advertise_host_env: str | None = None  # the host others reach it at, from this env var (pod IP)


def render_agent_config(cluster: ClusterSettings, member: MemberSettings) -> dict[str, object]:
    """The agent configuration document for ``member`` of ``cluster`` (plain data, key order as in
    the files people read: identity, wiring, API, timing, then the member's own settings)."""
    doc: dict[str, object] = {"name": member.name, "cluster": cluster.cluster}
    if isinstance(member.role, Witness):
        doc["witness"] = True
    if cluster.etcd_prefix is not None:
        doc["etcd_prefix"] = cluster.etcd_prefix
    doc["etcd_endpoints"] = list(cluster.etcd_endpoints)
    doc["api_listen"] = member.api_listen
    if member.api_url is not None:
        doc["api_url"] = member.api_url
    if member.advertise_host_env is not None:
        doc["advertise_host_env"] = member.advertise_host_env
    api = _changed(cluster.api)
    if api:
        doc["api"] = api
    # Timing in full, even at the defaults: the lease timing is what a reader must see to be sure.
    doc["timing"] = {f.name: getattr(cluster.timing, f.name) for f in fields(cluster.timing)}
    if not cluster.quorum_votes:
        doc["quorum_votes"] = False
    if cluster.log_level is not None:
        doc["log_level"] = cluster.log_level
    if member.kubernetes is not None:
        doc["kubernetes"] = _changed(member.kubernetes)
    if isinstance(member.role, DataMember):
        doc.update(_data_member(member.role))
    return doc


def _data_member(role: DataMember) -> dict[str, object]:
    doc: dict[str, object] = {"postgres": _changed(role.postgres)}
    if role.synchronous is not None:
        doc["synchronous"] = role.synchronous.as_dict()
    if role.nofailover:
        doc["nofailover"] = True
    if role.stonith:
        doc["stonith"] = [_hook(hook) for hook in role.stonith]
    if role.watchdog is not None:
        # All three: the loader's timeout default follows the timing, not WatchdogConfig's default.
        w = role.watchdog
        doc["watchdog"] = {"mode": w.mode.value, "device": str(w.device), "timeout": w.timeout}
    return doc


def _hook(hook: Hook) -> dict[str, object]:
    doc: dict[str, object] = {"type": hook.type, **_changed(hook, skip={"where", "env", "append_args"})}
    if isinstance(hook, ExecHook):
        if hook.env:
            doc["env"] = dict(hook.env)
        # Always: the loader's default depends on whether the command uses placeholders.
        doc["append_args"] = hook.append_args
    return doc


def _changed(obj: Any, skip: set[str] | frozenset[str] = frozenset()) -> dict[str, object]:
    """A dataclass's fields as plain data: the required ones, and the others where they differ from
    the default."""
    out: dict[str, object] = {}
    for f in fields(obj):
        if f.name in skip:
            continue
        value = getattr(obj, f.name)
        if f.default is not MISSING and value == f.default:
            continue
        if f.default_factory is not MISSING and value == f.default_factory():
            continue
        out[f.name] = _plain(value)
    return out


def _plain(value: object) -> object:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    return value


def write_agent_config(path: Path, doc: Mapping[str, object], owner: str | None = None) -> None:
    """Write ``doc`` as YAML to ``path`` (mode 0600, replaced atomically so a starting agent never
    reads half a file), owned by the OS user ``owner`` (the one the agent runs as; None: ours).

    First the agent's own loader reads it back: a document the agent would refuse raises its
    ``ConfigError`` here, naming the field, before anything is written or started.
    """
    text = yaml.safe_dump(dict(doc), sort_keys=False)
    config_from_dict(yaml.safe_load(text))
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(tmp, 0o600)  # a leftover tmp keeps its old mode through O_CREAT
    if owner is not None:
        entry = pwd.getpwnam(owner)
        os.chown(tmp, entry.pw_uid, entry.pw_gid)
    os.replace(tmp, path)
