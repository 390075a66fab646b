"""STONITH hook configuration: a YAML/JSON list parsed into immutable, validated hooks.

Every error is a ``ConfigError`` whose message starts with the exact field path
(``stonith[1].timeout: ...``) and says how to fix it. Parsing is pure: files named by a hook
(tokens, keys, pid files, executables) are not touched here; ``preflight`` checks them separately
because a mounted secret may appear after the agent starts.
"""

from __future__ import annotations

import json
import math
import os
import re
import shlex
import shutil
import string
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pgquorum.agent.config import ConfigError
from pgquorum.agent.kubeapi import SA_CA, SA_NAMESPACE, SA_TOKEN

# Values a template (exec argv, env values, pid_file, kubernetes pod) may use, e.g. "{old_leader}".
PLACEHOLDERS = ("cluster", "old_leader", "new_leader", "term", "old_leader_host", "old_leader_api_url")


MAX_TIMEOUT = 600.0  # seconds; a promotion blocked longer than this is an outage, not a fence
MAX_TAINT_WAIT = 3600.0  # seconds; a node not down within an hour of the failover was not the cause
DEFAULT_TIMEOUTS = {"exec": 10.0, "webhook": 5.0, "local-kill": 5.0, "kubernetes": 10.0}

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")  # also a Prometheus label value: keep it short
_DNS_LABEL_RE = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class Policy(StrEnum):
    REQUIRED = "required"  # no promotion unless this hook fenced the old leader
    BEST_EFFORT = "best-effort"  # a failure is reported and counted, promotion goes on


@dataclass(frozen=True)
class ExecHook:
    """Runs an executable; exit status 0 means the old leader is fenced."""

    name: str
    where: str  # "stonith[0]": the config path, for messages
    policy: Policy
    timeout: float
    command: tuple[str, ...]  # argv templates
    env: tuple[tuple[str, str], ...] = ()  # extra environment (value templates)
    append_args: bool = True  # append: old_leader new_leader term cluster

    type = "exec"


@dataclass(frozen=True)
class WebhookHook:
    """POSTs JSON to a URL; any 2xx status means fenced."""

    name: str
    where: str
    policy: Policy
    timeout: float
    url: str
    token_file: Path | None = None  # "Authorization: Bearer <content>"
    hmac_key_file: Path | None = None  # "X-Pgquorum-Signature: sha256=<HMAC-SHA256(key, body)>"
    ca_file: Path | None = None  # https: trust this CA bundle instead of the system's

    type = "webhook"


@dataclass(frozen=True)
class LocalKillHook:
    """SIGKILLs the old leader's processes on this machine (the local runner, or a pid file)."""

    name: str
    where: str
    policy: Policy
    timeout: float
    pid_file: str | None = None  # template; the first line holds the pid (postmaster.pid works)
    data_dir: Path | None = None  # the local runner's DATA_DIR (cluster.json): agent and postgres of old_leader

    type = "local-kill"


@dataclass(frozen=True)
class KubernetesHook:
    """Deletes the old leader's pod with grace 0; optionally taints its node out-of-service."""

    name: str
    where: str
    policy: Policy
    timeout: float
    pod: str = "{old_leader}"  # template
    namespace: str | None = None  # None: the service account's namespace
    taint_node: bool = False
    # A node still Ready at fence time is watched this long and tainted once Kubernetes sees it down
    # (node_watch.py): longer than the node controller's grace period (50 s by default).
    taint_wait: float = 180.0
    taint_poll: float = 5.0
    api_url: str | None = None  # None: in-cluster (KUBERNETES_SERVICE_HOST/PORT, https)
    token_file: Path | None = None  # None: the service account token when in-cluster, else no auth
    ca_file: Path | None = None  # None: the service account CA when in-cluster

    type = "kubernetes"


Hook = ExecHook | WebhookHook | LocalKillHook | KubernetesHook

_COMMON = ("type", "name", "policy", "timeout")
_FIELDS: dict[str, tuple[str, ...]] = {
    "exec": (*_COMMON, "command", "env", "append_args"),
    "webhook": (*_COMMON, "url", "token_file", "hmac_key_file", "ca_file"),
    "local-kill": (*_COMMON, "pid_file", "data_dir"),
    "kubernetes": (
        *_COMMON,
        "pod",
        "namespace",
        "taint_node",
        "taint_wait",
        "taint_poll",
        "api_url",
        "token_file",
        "ca_file",
    ),
}


def _show(value: object) -> str:
    try:
        return json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)


def _kind(value: object) -> str:
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    return _show(value)


def _placeholders(template: str, where: str) -> tuple[str, ...]:
    """The placeholder names used by ``template``; unknown names and bad braces are config errors."""
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ConfigError(
            f"{where}: bad placeholder syntax in {_show(template)} ({exc}); write {{old_leader}}, "
            "and {{ or }} for a literal brace"
        ) from None
    names = []
    for _, field, spec, conv in parsed:
        if field is None:
            continue
        if field not in PLACEHOLDERS or spec or conv:
            raise ConfigError(
                f"{where}: unknown placeholder {{{field}}} in {_show(template)}; "
                f"known: {', '.join('{' + p + '}' for p in PLACEHOLDERS)}"
            )
        names.append(field)
    return tuple(names)


def _seconds(raw: Mapping[str, Any], key: str, where: str, default: float, limit: float, why: str) -> float:
    """A positive number of seconds at most ``limit`` (``why`` says what the limit protects)."""
    if key not in raw or raw[key] is None:
        return default
    value = raw[key]
    number: float | None = None
    if isinstance(value, int | float) and not isinstance(value, bool):
        number = float(value)
    if number is None or not math.isfinite(number) or number <= 0:
        raise ConfigError(
            f"{where}.{key}: must be a positive number of seconds, got {_show(value)}; e.g. {key}: {default:g}"
        )
    if number > limit:
        raise ConfigError(f"{where}.{key}: at most {limit:g} seconds ({why}), got {number:g}")
    return number


def _timeout(raw: Mapping[str, Any], where: str, kind: str) -> float:
    return _seconds(raw, "timeout", where, DEFAULT_TIMEOUTS[kind], MAX_TIMEOUT, "a promotion waits for it")


def _policy(raw: Mapping[str, Any], where: str) -> Policy:
    value = raw.get("policy")
    if value is None:
        return Policy.REQUIRED  # the safe default: no promotion over an unfenced old leader
    try:
        return Policy(value)
    except ValueError:
        raise ConfigError(
            f"{where}.policy: must be required or best-effort, got {_show(value)}; "
            "required blocks the promotion until the hook succeeds"
        ) from None


def _string(raw: Mapping[str, Any], key: str, where: str, example: str, required: bool = False) -> str | None:
    value = raw.get(key)
    if value is None:
        if required:
            raise ConfigError(f"{where}.{key}: required setting is missing; e.g. {key}: {example}")
        return None
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{where}.{key}: must be a non-empty string, got {_kind(value)}; e.g. {key}: {example}")
    return value


def _path(raw: Mapping[str, Any], key: str, where: str, example: str) -> Path | None:
    value = _string(raw, key, where, example)
    if value is None:
        return None
    if not os.path.isabs(value):
        raise ConfigError(
            f"{where}.{key}: must be an absolute path (the agent's working directory is not fixed), "
            f"got {_show(value)}; e.g. {key}: {example}"
        )
    return Path(value)


def _bool(raw: Mapping[str, Any], key: str, where: str, default: bool) -> bool:
    value = raw.get(key)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise ConfigError(f"{where}.{key}: must be true or false, got {_show(value)}")
    return value


def _http_url(value: str, where: str, example: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(
            f"{where}: must be an http:// or https:// URL with a host, got {_show(value)}; e.g. {example}"
        )
    try:
        _ = parts.port
    except ValueError:
        raise ConfigError(f"{where}: bad port in {_show(value)}") from None
    if parts.username or parts.password:
        raise ConfigError(f"{where}: do not put credentials in the URL (it is logged); use token_file")
    return value


def _exec(raw: Mapping[str, Any], where: str, common: dict[str, Any]) -> ExecHook:
    command = raw.get("command")
    example = "[/usr/local/bin/fence-node, --really]"
    if command is None:
        raise ConfigError(f"{where}.command: required setting is missing; e.g. command: {example}")
    if isinstance(command, str):
        try:
            argv = shlex.split(command)  # split like a shell, but never run one
        except ValueError as exc:
            raise ConfigError(
                f"{where}.command: cannot split {_show(command)} ({exc}); use a list: {example}"
            ) from None
    elif isinstance(command, list | tuple):
        argv = list(command)
        for i, arg in enumerate(argv):
            if not isinstance(arg, str) or arg == "":
                raise ConfigError(f"{where}.command[{i}]: must be a non-empty string, got {_kind(arg)}")
    else:
        raise ConfigError(f"{where}.command: must be a list of strings, got {_kind(command)}; e.g. command: {example}")
    if not argv:
        raise ConfigError(f"{where}.command: must name an executable; e.g. command: {example}")
    used = False
    for i, arg in enumerate(argv):
        used |= bool(_placeholders(arg, f"{where}.command[{i}]"))
    env_raw = raw.get("env") or {}
    if not isinstance(env_raw, Mapping):
        raise ConfigError(f"{where}.env: must be a mapping of NAME: value, got {_kind(env_raw)}")
    env: list[tuple[str, str]] = []
    for key, value in env_raw.items():
        if not isinstance(key, str) or not _ENV_NAME_RE.match(key):
            raise ConfigError(f"{where}.env: {_show(key)} is not a valid environment variable name")
        if key.startswith("PGQUORUM_"):
            raise ConfigError(f"{where}.env.{key}: PGQUORUM_* variables are set by the agent; pick another name")
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise ConfigError(f"{where}.env.{key}: must be a string, got {_kind(value)}")
        _placeholders(str(value), f"{where}.env.{key}")
        env.append((key, str(value)))
    # Placeholders in the command mean the author chose the argv: do not add trailing arguments then.
    append_args = _bool(raw, "append_args", where, default=not used)
    return ExecHook(command=tuple(argv), env=tuple(env), append_args=append_args, **common)


def _webhook(raw: Mapping[str, Any], where: str, common: dict[str, Any]) -> WebhookHook:
    example = "https://fencer.example/fence"
    url = _string(raw, "url", where, example, required=True)
    assert url is not None
    return WebhookHook(
        url=_http_url(url, f"{where}.url", f"url: {example}"),
        token_file=_path(raw, "token_file", where, "/etc/pgquorum/fence-token"),
        hmac_key_file=_path(raw, "hmac_key_file", where, "/etc/pgquorum/fence-hmac-key"),
        ca_file=_path(raw, "ca_file", where, "/etc/pgquorum/fencer-ca.pem"),
        **common,
    )


def _local_kill(raw: Mapping[str, Any], where: str, common: dict[str, Any]) -> LocalKillHook:
    pid_file = _string(raw, "pid_file", where, "/var/lib/pgquorum/{old_leader}/pgdata/postmaster.pid")
    data_dir = _path(raw, "data_dir", where, "/var/lib/pgquorum/local")
    if (pid_file is None) == (data_dir is None):
        raise ConfigError(
            f"{where}: set exactly one of pid_file (a file whose first line is the pid to kill) or data_dir "
            "(the local runner's data directory holding cluster.json)"
        )
    if pid_file is not None:
        _placeholders(pid_file, f"{where}.pid_file")
        if not os.path.isabs(pid_file):
            raise ConfigError(f"{where}.pid_file: must be an absolute path, got {_show(pid_file)}")
    return LocalKillHook(pid_file=pid_file, data_dir=data_dir, **common)


def _kubernetes(raw: Mapping[str, Any], where: str, common: dict[str, Any]) -> KubernetesHook:
    pod = _string(raw, "pod", where, '"{old_leader}"') or "{old_leader}"
    _placeholders(pod, f"{where}.pod")
    namespace = _string(raw, "namespace", where, "db")
    if namespace is not None and not _DNS_LABEL_RE.match(namespace):
        raise ConfigError(
            f"{where}.namespace: {_show(namespace)} is not a Kubernetes namespace name "
            "(lower-case letters, digits, '-')"
        )
    api_url = _string(raw, "api_url", where, "https://10.0.0.1:6443")
    if api_url is not None:
        api_url = _http_url(api_url, f"{where}.api_url", "api_url: https://10.0.0.1:6443").rstrip("/")
        if namespace is None:
            raise ConfigError(
                f"{where}.namespace: required with api_url (the service account's namespace is only known in-cluster);"
                " e.g. namespace: db"
            )
    return KubernetesHook(
        pod=pod,
        namespace=namespace,
        taint_node=_bool(raw, "taint_node", where, default=False),
        taint_wait=_seconds(
            raw,
            "taint_wait",
            where,
            KubernetesHook.taint_wait,
            MAX_TAINT_WAIT,
            "a node not down by then was not the cause",
        ),
        taint_poll=_seconds(raw, "taint_poll", where, KubernetesHook.taint_poll, 60.0, "the taint would come late"),
        api_url=api_url,
        token_file=_path(raw, "token_file", where, str(SA_TOKEN)),
        ca_file=_path(raw, "ca_file", where, str(SA_CA)),
        **common,
    )


_BUILDERS: dict[str, Callable[[Mapping[str, Any], str, dict[str, Any]], Hook]] = {
    "exec": _exec,
    "webhook": _webhook,
    "local-kill": _local_kill,
    "kubernetes": _kubernetes,
}


def parse_hooks(raw: object, where: str = "stonith") -> tuple[Hook, ...]:
    """The configured hooks, in run order. ``None`` (or an empty list) means no hooks."""
    if raw is None:
        return ()
    if not isinstance(raw, list | tuple):
        raise ConfigError(
            f"{where}: expected a list of hooks, got {_kind(raw)}; e.g.\n"
            f"{where}:\n  - type: exec\n    command: [/usr/local/bin/fence-node]\n    timeout: 5"
        )
    kinds = [item.get("type") if isinstance(item, Mapping) else None for item in raw]
    per_type = Counter(k for k in kinds if isinstance(k, str))
    seen_type: Counter[str] = Counter()
    hooks: list[Hook] = []
    names: dict[str, str] = {}
    for i, item in enumerate(raw):
        at = f"{where}[{i}]"
        if not isinstance(item, Mapping):
            raise ConfigError(
                f"{at}: expected a mapping with a type (exec, webhook, local-kill, kubernetes), got {_kind(item)}"
            )
        kind = item.get("type")
        if not isinstance(kind, str) or kind not in _FIELDS:
            raise ConfigError(f"{at}.type: must be one of exec, webhook, local-kill, kubernetes, got {_show(kind)}")
        unknown = sorted(str(k) for k in item if k not in _FIELDS[kind])
        if unknown:
            raise ConfigError(
                f"{at}.{unknown[0]}: unknown setting for a {kind} hook (known: {', '.join(sorted(_FIELDS[kind]))})"
            )
        seen_type[kind] += 1
        default_name = kind if per_type[kind] == 1 else f"{kind}-{seen_type[kind]}"
        name = _string(item, "name", at, "fence-old-primary") or default_name
        if not _NAME_RE.match(name):
            raise ConfigError(
                f"{at}.name: {_show(name)} must be 1-63 letters, digits, '.', '_' or '-' (it is a metrics label)"
            )
        if name in names:
            raise ConfigError(f"{at}.name: {_show(name)} is already used by {names[name]}; give each hook its own name")
        names[name] = at
        common: dict[str, Any] = {
            "name": name,
            "where": at,
            "policy": _policy(item, at),
            "timeout": _timeout(item, at, kind),
        }
        hooks.append(_BUILDERS[kind](item, at, common))
    return tuple(hooks)


def worst_case_seconds(hooks: tuple[Hook, ...]) -> float:
    """An upper bound on how long ``run_hooks`` can block (timeouts plus the kill/cleanup grace)."""
    return sum(h.timeout + 1.0 for h in hooks)


def preflight(hooks: tuple[Hook, ...], environ: Mapping[str, str] | None = None) -> tuple[str, ...]:
    """Problems visible before any failover (missing files, executables, in-cluster settings).

    One line each, naming the field. They are warnings: a secret may be mounted after start, and a
    failing hook is reported clearly when it runs anyway.
    """
    env = os.environ if environ is None else environ
    problems: list[str] = []

    def readable(path: Path | None, field: str) -> None:
        if path is not None and not os.access(path, os.R_OK):
            problems.append(f"{field}: {path} is missing or not readable by the agent")

    for hook in hooks:
        w = hook.where
        if isinstance(hook, ExecHook):
            exe = hook.command[0]
            if "{" in exe:
                continue
            found = shutil.which(exe) if os.sep not in exe else (exe if os.access(exe, os.X_OK) else None)
            if found is None:
                problems.append(f"{w}.command[0]: {exe} is not an executable file (give an absolute path)")
        elif isinstance(hook, WebhookHook):
            readable(hook.token_file, f"{w}.token_file")
            readable(hook.hmac_key_file, f"{w}.hmac_key_file")
            readable(hook.ca_file, f"{w}.ca_file")
        elif isinstance(hook, LocalKillHook):
            if hook.data_dir is not None:
                readable(hook.data_dir / "cluster.json", f"{w}.data_dir")
        else:
            if hook.api_url is None:
                if not env.get("KUBERNETES_SERVICE_HOST"):
                    problems.append(
                        f"{w}: not running in a Kubernetes pod (KUBERNETES_SERVICE_HOST is unset); set api_url and "
                        "token_file to reach an apiserver from outside"
                    )
                readable(hook.token_file or SA_TOKEN, f"{w}.token_file")
                readable(hook.ca_file or SA_CA, f"{w}.ca_file")
                if hook.namespace is None:
                    readable(SA_NAMESPACE, f"{w}.namespace")
            else:
                readable(hook.token_file, f"{w}.token_file")
                readable(hook.ca_file, f"{w}.ca_file")
    return tuple(problems)
