"""The agent's configuration: one immutable, validated object built from YAML (or a dict).

Bad input never produces a traceback: ``load_config`` raises ``ConfigError`` whose message names
the field, what is wrong and how to fix it. The timing rule is checked here, at start-up.
"""

from __future__ import annotations

import math
import os
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

if TYPE_CHECKING:  # both import ConfigError from here: parsed with a local import below
    from pgquorum.agent.podrole import KubernetesSettings
    from pgquorum.agent.stonith import Hook
    from pgquorum.agent.watchdog import WatchdogConfig


class ConfigError(ValueError):
    """A setting is missing or invalid; the message names the field and the fix."""


@dataclass(frozen=True)
class Timing:
    """Lease timing. Defaults are tuned for a LAN (Patroni: ttl 30, loop_wait 10, retry_timeout 10).

    Invariant I1: the leader stops accepting writes at
    ``last_renew_sent + ttl - safety_margin``, before any other member can take the key.
    """

    ttl: float = 3.0  # leader lease length, seconds (etcd rounds leases up to whole seconds)
    loop_wait: float = 1.0  # seconds between HA loop runs; the leader renews once per loop
    retry_timeout: float = 1.0  # budget for one etcd/postgres call before it counts as failed
    safety_margin: float = 0.5  # seconds kept between our fence deadline and the lease's expiry

    def fence_after(self) -> float:
        """Seconds after the send time of the last successful renewal at which we must be fenced."""
        return self.ttl - self.safety_margin


def validate_timing(t: Timing) -> None:
    """Refuse settings under which a leader could still write after another member took the key."""
    for name in ("ttl", "loop_wait", "retry_timeout", "safety_margin"):
        value = getattr(t, name)
        if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
            raise ConfigError(f"timing.{name}: expected a number of seconds, got {value!r}")
        if value <= 0:
            raise ConfigError(f"timing.{name}: must be > 0 seconds, got {value}")
    if t.ttl != int(t.ttl):
        raise ConfigError(f"timing.ttl: etcd leases are whole seconds; use {math.ceil(t.ttl)} instead of {t.ttl}")
    if t.ttl < 2:
        raise ConfigError(f"timing.ttl: must be at least 2 seconds (got {t.ttl}); etcd cannot keep shorter leases")
    if t.loop_wait + 2 * t.retry_timeout > t.ttl:
        raise ConfigError(
            "timing: loop_wait + 2 * retry_timeout must be <= ttl "
            f"({t.loop_wait} + 2 * {t.retry_timeout} = {t.loop_wait + 2 * t.retry_timeout} > {t.ttl}); "
            "otherwise a leader with one slow etcd call misses its renewal and fences needlessly. "
            "Raise ttl or lower loop_wait / retry_timeout."
        )
    if t.safety_margin >= t.ttl - t.loop_wait:
        raise ConfigError(
            f"timing.safety_margin: must be < ttl - loop_wait ({t.ttl} - {t.loop_wait} = "
            f"{t.ttl - t.loop_wait}), got {t.safety_margin}; otherwise the leader fences itself "
            "between two healthy renewals. Lower safety_margin or raise ttl."
        )
    if t.safety_margin < 0.2:
        raise ConfigError(
            f"timing.safety_margin: must be >= 0.2 s (got {t.safety_margin}) to leave time to stop "
            "postgres before the lease can expire"
        )


@dataclass(frozen=True)
class PostgresSettings:
    data_dir: Path
    bin_dir: Path
    listen_host: str = "127.0.0.1"
    port: int = 5432
    # The host other members and clients connect to, when it differs from listen_host (a pod listens
    # on 0.0.0.0 and is reached by its DNS name). None: listen_host.
    connect_host: str | None = None
    superuser: str = "postgres"
    replication_user: str = "replicator"
    superuser_password_file: Path | None = None  # a file holding the password (never inline)
    replication_password_file: Path | None = None
    parameters: dict[str, str] = field(default_factory=dict)  # extra postgresql.conf settings
    maximum_lag_on_failover: int = 1024 * 1024  # bytes behind the last leader position
    primary_start_timeout: float = 10.0  # crashed leader: restart attempts before releasing the key
    stop_timeout: float = 10.0  # fast shutdown, then immediate
    run_as: str | None = None  # OS user that owns PGDATA when the agent runs as root

    @property
    def advertised_host(self) -> str:
        return self.connect_host or self.listen_host


@dataclass(frozen=True)
class ApiSettings:
    """Authentication of the REST API's mutating routes (POST/PATCH); secrets live in files.

    With neither a token nor a username configured, mutating routes are refused (secure by default).
    """

    auth_token_file: Path | None = None  # a file holding the bearer token (Authorization: Bearer ...)
    username: str | None = None  # HTTP Basic user name (needs password_file)
    password_file: Path | None = None  # a file holding the HTTP Basic password


def _api_settings(raw: Any) -> ApiSettings:
    if raw is None:
        return ApiSettings()
    if not isinstance(raw, dict):
        raise ConfigError("api: expected a mapping (auth_token_file, username, password_file)")
    for key in ("auth_token_file", "username", "password_file"):
        value = raw.get(key)
        if value is not None and (not isinstance(value, str) or not value.strip()):
            raise ConfigError(f"api.{key}: expected a non-empty string, got {value!r}")
    args = _typed(ApiSettings, raw, "api.", {"auth_token_file": Path, "password_file": Path})
    api = ApiSettings(**args)
    if api.username is not None:
        if ":" in api.username or any(ord(c) < 32 or ord(c) == 127 for c in api.username):
            raise ConfigError(f"api.username: {api.username!r} may not contain ':' or control characters")
        if api.password_file is None:
            raise ConfigError("api.password_file: required when api.username is set (a file holding the password)")
    elif api.password_file is not None:
        raise ConfigError("api.username: required when api.password_file is set")
    return api


SYNC_MODES = ("off", "quorum")
DURABILITIES = ("required", "preferred")


@dataclass(frozen=True)
class SyncSettings:
    """Quorum commit (invariant I4): ``synchronous: {mode: off|quorum, k: int, durability: ...}``.

    ``k``: how many standbys must confirm a commit. ``durability: required`` never lets postgres
    wait for fewer than ``k`` (commits block) and never promotes a candidate that cannot prove it
    holds every acknowledged commit; ``preferred`` lowers k while standbys are missing (down to
    asynchronous with none left) and may promote without proof, with an alert and a metric.
    """

    mode: str = "off"
    k: int = 1
    durability: str = "required"

    @property
    def quorum(self) -> bool:
        return self.mode == "quorum"

    def as_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, "k": self.k, "durability": self.durability}


def sync_settings(raw: Any, base: SyncSettings | None = None, where: str = "synchronous") -> SyncSettings:
    """Validate a (partial) ``synchronous`` mapping on top of ``base``; ConfigError names the field."""
    base = base or SyncSettings()
    if raw is None:
        return base
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping like {{mode: quorum, k: 1, durability: required}}, got {raw!r}")
    raw = {key: value for key, value in raw.items() if value is not None}  # None: keep the base value
    unknown = sorted(set(raw) - {"mode", "k", "durability"})
    if unknown:
        raise ConfigError(f"{where}.{unknown[0]}: unknown setting (known: durability, k, mode)")
    mode = raw.get("mode", base.mode)
    if mode is False:  # YAML reads a bare `off` as false
        mode = "off"
    if mode not in SYNC_MODES:
        raise ConfigError(f"{where}.mode: expected one of {', '.join(SYNC_MODES)}, got {mode!r}")
    k = raw.get("k", base.k)
    if isinstance(k, bool) or not isinstance(k, int | float) or k != int(k) or k < 1:
        raise ConfigError(
            f"{where}.k: expected a whole number >= 1 (standbys that must confirm each commit), got {k!r}"
        )
    durability = raw.get("durability", base.durability)
    if durability not in DURABILITIES:
        raise ConfigError(f"{where}.durability: expected one of {', '.join(DURABILITIES)}, got {durability!r}")
    return SyncSettings(str(mode), int(k), str(durability))


@dataclass(frozen=True)
class AgentConfig:
    name: str
    cluster: str
    etcd_endpoints: tuple[str, ...]
    api_listen: str  # host:port the REST API binds
    api_url: str  # URL other members and clients use to reach the API
    postgres: PostgresSettings
    timing: Timing = field(default_factory=Timing)
    etcd_prefix: str = "pgquorum"
    nofailover: bool = False
    log_level: str = "INFO"
    api: ApiSettings = field(default_factory=ApiSettings)
    synchronous: SyncSettings = field(default_factory=SyncSettings)  # default; etcd's dynamic config wins
    # A voting member without PostgreSQL (invariant I5); ``postgres`` then holds unused defaults.
    witness: bool = False
    # Promotions need a majority of votes and the primary serves on a majority of promises (invariant
    # I5). Every member of a cluster must agree: false is the lease-only mode (no witnesses).
    quorum_votes: bool = True
    # Hooks that fence the old leader before this member promotes (agent/stonith), and the watchdog.
    stonith: tuple[Hook, ...] = ()
    watchdog: WatchdogConfig | None = None  # None: off
    # In a Kubernetes pod: the pod whose role label `-rw`/`-ro` select on (agent/podrole.py).
    kubernetes: KubernetesSettings | None = None
    # The host others reach this member at (API and PostgreSQL), read from this environment variable
    # at start: in a pod, its IP from the downward API. A pod's DNS name is served from caches (30 s
    # on kubeadm and here) that still give the old IP after the pod was replaced, so peers missed
    # a recreated member's promises for up to 30 s and a rolling update lost its leader.
    advertise_host_env: str | None = None


# What a witness's ``postgres`` holds: nothing on its path ever reads it (it runs no PostgreSQL).
WITNESS_POSTGRES = PostgresSettings(data_dir=Path("/nonexistent/witness-has-no-pgdata"), bin_dir=Path("/nonexistent"))


_NAME_OK = set("abcdefghijklmnopqrstuvwxyz0123456789-_")


def _need(data: dict[str, Any], key: str, where: str) -> Any:
    if key not in data or data[key] in (None, ""):
        raise ConfigError(f"{where}{key}: required setting is missing")
    return data[key]


def _typed(cls: type, data: dict[str, Any], where: str, coerce: dict[str, Any]) -> dict[str, Any]:
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"{where}{unknown[0]}: unknown setting (known: {', '.join(sorted(known))})")
    out: dict[str, Any] = {}
    for key, value in data.items():
        conv = coerce.get(key)
        if conv is None or value is None:
            out[key] = value
            continue
        try:
            out[key] = conv(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}{key}: cannot use {value!r} ({conv.__name__} expected)") from None
    return out


def _number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise TypeError
    return float(value)


def _port(value: Any) -> int:
    port = int(value)
    if not 1 <= port <= 65535:
        raise ValueError
    return port


def config_from_dict(data: dict[str, Any]) -> AgentConfig:
    if not isinstance(data, dict):
        raise ConfigError("configuration: expected a mapping at the top level")
    data = dict(data)
    witness = data.get("witness", False)
    if not isinstance(witness, bool):
        raise ConfigError(f"witness: expected true or false, got {witness!r}")
    votes = data.get("quorum_votes", True)
    if not isinstance(votes, bool):
        raise ConfigError(f"quorum_votes: expected true or false, got {votes!r}")
    if witness:
        _refuse_for_witness(data)
        postgres = WITNESS_POSTGRES
    else:
        postgres = _postgres_settings(_need(data, "postgres", ""))
    data.pop("postgres", None)
    return _agent_config(data, postgres, witness)


def _postgres_settings(pg_raw: Any) -> PostgresSettings:
    if not isinstance(pg_raw, dict):
        raise ConfigError("postgres: expected a mapping (data_dir, bin_dir, port, ...)")
    pg_args = _typed(
        PostgresSettings,
        pg_raw,
        "postgres.",
        {
            "data_dir": Path,
            "bin_dir": Path,
            "port": _port,
            "superuser_password_file": Path,
            "replication_password_file": Path,
            "maximum_lag_on_failover": int,
            "primary_start_timeout": _number,
            "stop_timeout": _number,
            "parameters": lambda v: {str(k): str(x) for k, x in dict(v).items()},
        },
    )
    _need(pg_args, "data_dir", "postgres.")
    pg_args.setdefault("bin_dir", Path(default_bin_dir()))
    postgres = PostgresSettings(**pg_args)
    if postgres.connect_host is None and postgres.listen_host in ("0.0.0.0", "::", "*", ""):
        raise ConfigError(
            f"postgres.connect_host: required when listen_host is {postgres.listen_host!r} (every address): "
            "the host other members reach this postgres at, e.g. the pod's DNS name"
        )
    if not (postgres.bin_dir / "postgres").exists():
        raise ConfigError(
            f"postgres.bin_dir: {postgres.bin_dir} has no 'postgres' binary; "
            "point it at PostgreSQL's bin directory (e.g. /usr/lib/postgresql/15/bin)"
        )
    return postgres


def _agent_config(data: dict[str, Any], postgres: PostgresSettings, witness: bool) -> AgentConfig:
    timing_raw = data.pop("timing", None) or {}
    if not isinstance(timing_raw, dict):
        raise ConfigError("timing: expected a mapping (ttl, loop_wait, retry_timeout, safety_margin)")
    timing = Timing(**_typed(Timing, timing_raw, "timing.", {k: _number for k in timing_raw}))
    validate_timing(timing)
    api = _api_settings(data.pop("api", None))
    synchronous = sync_settings(data.pop("synchronous", None))
    from pgquorum.agent.podrole import parse_kubernetes
    from pgquorum.agent.stonith import parse_hooks
    from pgquorum.agent.watchdog import parse_watchdog

    stonith = parse_hooks(data.pop("stonith", None))
    watchdog = parse_watchdog(data.pop("watchdog", None), timing)
    kubernetes = parse_kubernetes(data.pop("kubernetes", None), str(data.get("name", "")))

    endpoints = _need(data, "etcd_endpoints", "")
    if isinstance(endpoints, str):
        endpoints = [e.strip() for e in endpoints.split(",") if e.strip()]
    if not isinstance(endpoints, list) or not endpoints:
        raise ConfigError("etcd_endpoints: expected a list of http://host:port URLs")
    for e in endpoints:
        if not isinstance(e, str) or not e.startswith(("http://", "https://")):
            raise ConfigError(f"etcd_endpoints: {e!r} is not an http(s)://host:port URL")

    name = str(_need(data, "name", ""))
    if not set(name) <= _NAME_OK or len(name) > 63:
        raise ConfigError(
            f"name: {name!r} may only hold lowercase letters, digits, '-' and '_' (at most 63 characters)"
        )
    cluster = str(_need(data, "cluster", ""))
    if not set(cluster) <= _NAME_OK:
        raise ConfigError(f"cluster: {cluster!r} may only hold lowercase letters, digits, '-' and '_'")
    api_listen = str(_need(data, "api_listen", ""))
    host, sep, port = api_listen.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ConfigError(f"api_listen: {api_listen!r} must be host:port, e.g. 127.0.0.1:8008")
    rest = {k: v for k, v in data.items() if k not in {"etcd_endpoints", "name", "cluster", "witness"}}
    known = {f.name for f in fields(AgentConfig)}
    unknown = sorted(set(rest) - known)
    if unknown:
        raise ConfigError(f"{unknown[0]}: unknown setting (known: {', '.join(sorted(known))})")
    cfg = AgentConfig(
        name=name,
        cluster=cluster,
        etcd_endpoints=tuple(endpoints),
        api_listen=api_listen,
        api_url=str(rest.pop("api_url", f"http://{api_listen}")),
        postgres=postgres,
        timing=timing,
        api=api,
        synchronous=synchronous,
        witness=witness,
        stonith=stonith,
        watchdog=watchdog,
        kubernetes=kubernetes,
        **{k: v for k, v in rest.items() if k not in {"api_listen", "api_url", "timing"}},
    )
    if not isinstance(cfg.nofailover, bool):
        raise ConfigError(f"nofailover: expected true or false, got {cfg.nofailover!r}")
    return cfg


def _refuse_for_witness(data: dict[str, Any]) -> None:
    """``witness: true``: a voting member without PostgreSQL; settings that only make sense beside a
    PostgreSQL instance are refused by name rather than silently ignored."""
    for key, why in (
        ("postgres", "a witness runs no PostgreSQL; remove the postgres section"),
        ("nofailover", "a witness is never promoted; remove nofailover"),
        ("synchronous", "quorum commit is a data member's setting; remove it from the witness"),
    ):
        if key in data:
            raise ConfigError(f"{key}: {why} (witness: true)")
    if data.get("quorum_votes", True) is False:
        raise ConfigError("quorum_votes: a witness only exists to vote; it cannot run with quorum_votes: false")


def with_advertised_host(cfg: AgentConfig, environ: Mapping[str, str]) -> AgentConfig:
    """``advertise_host_env``: the host of ``api_url`` and ``postgres.connect_host`` from the
    environment (the config names the variable; the pod's IP is only known once it runs)."""
    var = cfg.advertise_host_env
    if var is None:
        return cfg
    if not isinstance(var, str) or not var.replace("_", "").isalnum():
        raise ConfigError(f"advertise_host_env: {var!r} is not an environment variable name, e.g. POD_IP")
    host = environ.get(var, "").strip()
    if not host or any(c in host for c in "/@?# "):
        raise ConfigError(
            f"advertise_host_env: the environment variable {var} is {'unset or empty' if not host else repr(host)}; "
            f"set it to this member's address (in a pod: env {var} from fieldRef status.podIP) or remove "
            "advertise_host_env"
        )
    url = urllib.parse.urlsplit(cfg.api_url)
    netloc = f"[{host}]" if ":" in host else host
    if url.port is not None:
        netloc += f":{url.port}"
    api_url = urllib.parse.urlunsplit(url._replace(netloc=netloc))
    postgres = cfg.postgres if cfg.witness else replace(cfg.postgres, connect_host=host)
    return replace(cfg, api_url=api_url, postgres=postgres)


def load_config(path: Path, environ: Mapping[str, str] | None = None) -> AgentConfig:
    """The agent's configuration from ``path`` (``environ``: for ``advertise_host_env``)."""
    cfg = _read_config(path)
    return with_advertised_host(cfg, os.environ if environ is None else environ)


def _read_config(path: Path) -> AgentConfig:
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"config file {path}: cannot read it ({exc.strerror})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path}: not valid YAML ({exc})") from None
    return config_from_dict(data or {})


def default_bin_dir() -> str:
    """PostgreSQL binaries: $PGQUORUM_PG_BIN, else Debian's newest /usr/lib/postgresql/<v>/bin."""
    env = os.environ.get("PGQUORUM_PG_BIN")
    if env:
        return env
    base = Path("/usr/lib/postgresql")
    versions = sorted((p for p in base.glob("*/bin") if (p / "postgres").exists()), key=lambda p: p.parent.name)
    return str(versions[-1]) if versions else "/usr/lib/postgresql/15/bin"


def with_timing(cfg: AgentConfig, **changes: float) -> AgentConfig:
    """A copy with other timings (validated), for tests and the local runner."""
    timing = replace(cfg.timing, **changes)
    validate_timing(timing)
    return replace(cfg, timing=timing)


# Settings an operator may change at run time (PATCH /config, stored in etcd); agents read them
# every loop. Timing is deliberately not among them: a new ttl only applies to leases granted after
# it, so changing it under a running leader could move its fence deadline past its lease's expiry.
DYNAMIC_SETTINGS: dict[str, type] = {
    "maximum_lag_on_failover": int,
    "primary_start_timeout": float,
    "member_slots_ttl": float,
    "synchronous": dict,  # {mode, k, durability}; a PATCH may change one of them
}
STATIC_HINT = "timing and postgres settings are per agent: change them in each agent's config and restart it"


def validate_dynamic(changes: dict[str, Any]) -> dict[str, Any]:
    """Check a PATCH of dynamic settings; ``None`` removes an override. Raises ConfigError naming the field."""
    out: dict[str, Any] = {}
    for key, value in changes.items():
        kind = DYNAMIC_SETTINGS.get(key)
        if kind is None:
            raise ConfigError(f"{key}: not a dynamic setting (dynamic: {', '.join(DYNAMIC_SETTINGS)}); {STATIC_HINT}")
        if value is None:
            out[key] = None
            continue
        if kind is dict:
            checked = sync_settings(value)  # raises ConfigError naming synchronous.<field>
            # partial, merged with etcd's; None removes one override (JSON merge patch)
            out[key] = {name: None if value[name] is None else getattr(checked, name) for name in value}
            continue
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            raise ConfigError(f"{key}: expected a number >= 0, got {value!r}")
        if kind is int and value != int(value):
            raise ConfigError(f"{key}: expected a whole number of bytes, got {value!r}")
        out[key] = kind(value)
    return out


def effective_dynamic(cfg: AgentConfig, overrides: dict[str, Any] | None) -> dict[str, Any]:
    """The dynamic settings in force: etcd's overrides on top of this agent's own config."""
    values: dict[str, Any] = {
        "maximum_lag_on_failover": cfg.postgres.maximum_lag_on_failover,
        "primary_start_timeout": cfg.postgres.primary_start_timeout,
        "member_slots_ttl": 1800.0,
    }
    sync = cfg.synchronous
    for key, value in (overrides or {}).items():
        try:
            if key == "synchronous":
                sync = sync_settings(value, cfg.synchronous)
                continue
            values.update({k: v for k, v in validate_dynamic({key: value}).items() if v is not None})
        except ConfigError:
            continue  # a bad value in etcd never stops the loop; PATCH refuses them up front
    values["synchronous"] = sync.as_dict()
    return values


def effective_sync(cfg: AgentConfig, overrides: dict[str, Any] | None) -> SyncSettings:
    """The quorum-commit settings in force (etcd's ``synchronous`` on top of the agent's own)."""
    return sync_settings(effective_dynamic(cfg, overrides)["synchronous"])
