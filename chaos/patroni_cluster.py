"""Patroni on the chaos test bed: the same namespaces, etcd members, partitions and signals as
``ChaosCluster``; only the agent differs (Patroni from the venv that ``bench/setup_patroni.sh``
builds, run as the ``postgres`` OS user, the ``etcd3`` DCS with all three etcd endpoints,
asynchronous replication as Patroni ships it).

Overridden: the agent's command and configuration (``bench/patroni_config.py``, shared with the
loopback benchmark), health and leader from Patroni's REST API, the term function, and the primary
intervals (Patroni's log and its ``/history``). The agent's log is ``<member>/agent.log`` and the
data directory ``<member>/pgdata/data`` (``postgres_pid`` knows), so the faults and the runner
work unchanged.

Profiles: ``aggressive`` = ttl 20 / loop_wait 1 / retry_timeout 3 (the smallest Patroni accepts),
``default`` = 30 / 10 / 10 (Patroni's defaults).
"""

from __future__ import annotations

import calendar
import contextlib
import importlib.util
import json
import os
import re
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any, cast

import psycopg

from pgquorum.agent.config import Timing
from pgquorum.chaos.cluster import (
    API_PORT,
    ETCD_CLIENT_PORT,
    PG_PORT,
    PG_USER,
    ChaosCluster,
    ClusterError,
    ClusterSpec,
    MemberView,
)
from pgquorum.chaos.history import PrimaryInterval
from pgquorum.chaos.procs import REAPER, postmaster_pid

PATRONI_VENV = Path(os.environ.get("BENCH_PATRONI_VENV", "/opt/pgquorum-cache/patroni-venv"))
REPO = Path(__file__).resolve().parent.parent

PROFILES: dict[str, Timing] = {
    # Patroni's validator: ttl >= 20, loop_wait >= 1, retry_timeout >= 3 (same as bench/patroni.py)
    "aggressive": Timing(ttl=20, loop_wait=1, retry_timeout=3),
    "default": Timing(ttl=30, loop_wait=10, retry_timeout=10),
}

# ``pgquorum.current_term()`` for Patroni: the timeline the server writes WAL on. Every promotion
# (failover, switchover, a restart of a crashed primary through recovery) starts a new timeline, so
# a newer timeline is a newer reign, which is what the checker's split-brain detector needs.
# ``pg_control_checkpoint().timeline_id`` would not do: a promoted PG 15 server requests its
# end-of-recovery checkpoint without waiting for it ("fast promotion"), so pg_control keeps the
# old timeline until that spread checkpoint completes (2 s after the first writes in a run here).
# The WAL file name of the current insert position carries the insertion timeline
# (``GetWALInsertionTimeLine()`` in PG 15) from the first write on; it is unavailable during
# recovery, where the last restartpoint's timeline is reported (the checker uses writes' terms).
TERM_SQL = """
CREATE SCHEMA IF NOT EXISTS pgquorum;
CREATE OR REPLACE FUNCTION pgquorum.current_term() RETURNS bigint LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    IF pg_is_in_recovery() THEN
        RETURN (SELECT timeline_id FROM pg_control_checkpoint());
    END IF;
    RETURN ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::bigint;
END $$;
"""

_LOG_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}) (\w+): (.*)$")
_PROMOTED = ("promoted self to leader by acquiring session lock", "promoted self to leader because I had the session")
_ENDED = ("Demoting self", "demoting self", "demoted self", "Lost lock while starting up")


def patroni_available() -> str | None:
    """None when the Patroni venv is usable, else why not."""
    if not (PATRONI_VENV / "bin" / "patroni").exists():
        return f"no Patroni at {PATRONI_VENV} (bash bench/setup_patroni.sh builds it)"
    if not (REPO / "bench" / "patroni_config.py").exists():
        return f"no {REPO / 'bench' / 'patroni_config.py'}: the Patroni bed needs the source checkout"
    return None


def _config_builder() -> Callable[..., dict[str, Any]]:
    """``bench.patroni_config.patroni_config``, loaded by path (``bench`` is not installed)."""
    path = REPO / "bench" / "patroni_config.py"
    spec = importlib.util.spec_from_file_location("pgquorum_chaos_patroni_config", path)
    if spec is None or spec.loader is None:
        raise ClusterError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return cast(Callable[..., dict[str, Any]], module.patroni_config)


def patroni_version() -> str:
    try:
        out = subprocess.run(
            [str(PATRONI_VENV / "bin" / "patroni"), "--version"], capture_output=True, text=True, timeout=60
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (out.stdout.strip() or out.stderr.strip()) or "unknown"


def patroni_spec(profile: str, base: ClusterSpec | None = None) -> ClusterSpec:
    """The bed for Patroni: its profile's timing (the faults' holds follow its ttl), asynchronous."""
    if profile not in PROFILES:
        raise ValueError(f"--profile: unknown profile {profile!r} (known: {', '.join(PROFILES)})")
    return replace(base or ClusterSpec(), timing=PROFILES[profile], synchronous=None, quorum_votes=False)


def _get(url: str, timeout: float = 1.0) -> tuple[int | None, Any]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, None
    except (OSError, ValueError, urllib.error.URLError):
        return None, None


def parse_patroni_log(text: str) -> list[tuple[float, str, str]]:
    """``2026-11-27 03:10:00,123 INFO: message`` (UTC: the agent runs with TZ=UTC) -> (epoch, level, message)."""
    out = []
    for line in text.splitlines():
        m = _LOG_LINE.match(line)
        if m:
            secs = calendar.timegm(time.strptime(m.group(1), "%Y-%m-%d %H:%M:%S")) + int(m.group(2)) / 1000
            out.append((secs, m.group(3), m.group(4)))
    return out


def reigns_from_log(
    events: dict[str, list[tuple[float, str, str]]],
    history: list[list[Any]],
    deaths: list[tuple[float, str, str]],
) -> list[PrimaryInterval]:
    """Primary intervals from Patroni's logs (pure).

    A reign starts at ``initialized a new cluster`` (timeline 1) or at ``promoted self to leader``
    (Patroni has taken the key and asked postgres to promote: the key and the promotion are one
    step for it, so ``start`` = ``serving``). Its timeline comes from ``/history`` (entry
    ``[tl, lsn, reason, time, new_leader]``: ``new_leader`` began timeline ``tl + 1``), matched in
    order to that member's promotions; promotions after the last history entry continue the
    count. Ends: Patroni's demote lines or a fault that killed the member."""
    starts: list[tuple[float, str]] = []  # (time, member) of promotions, in time order
    boot: tuple[float, str] | None = None
    ends: dict[str, list[float]] = {}
    for member, evs in events.items():
        for t, _level, msg in evs:
            if msg.startswith("initialized a new cluster") and (boot is None or t < boot[0]):
                boot = (t, member)
            elif msg.startswith(_PROMOTED):
                starts.append((t, member))
            elif msg.startswith(_ENDED):
                ends.setdefault(member, []).append(t)
    for t, member, _what in deaths:
        ends.setdefault(member, []).append(t)
    starts.sort()
    terms: dict[int, int] = {}  # index in starts -> timeline
    pos = 0
    last_term = 1
    for entry in sorted((e for e in history if isinstance(e, list) and len(e) >= 5), key=lambda e: int(e[0])):
        tl, leader = int(entry[0]), str(entry[4])
        for i in range(pos, len(starts)):
            if starts[i][1] == leader:
                terms[i] = tl + 1
                last_term = max(last_term, tl + 1)
                pos = i + 1
                break
    for i in range(pos, len(starts)):
        last_term += 1
        terms[i] = last_term
    reigns: list[tuple[float, str, int]] = [(t, m, terms[i]) for i, (t, m) in enumerate(starts) if i in terms]
    if boot is not None:
        reigns.append((boot[0], boot[1], 1))
    out = []
    for t, member, term in sorted(reigns):
        later = [e for e in ends.get(member, []) if e > t]
        out.append(PrimaryInterval(member, term, round(t, 3), round(min(later), 3) if later else None, round(t, 3)))
    return out


class PatroniChaosCluster(ChaosCluster):
    """``ChaosCluster`` with Patroni as the agent (see the module docstring)."""

    system = "patroni"

    def __init__(self, workdir: Path, spec: ClusterSpec | None = None, *, python: str | None = None) -> None:
        super().__init__(workdir, spec or patroni_spec("aggressive"), python=python)
        self.cluster_name = "chaos-patroni"
        self._build_config = _config_builder()

    # ------------------------------------------------------------------ lifecycle

    def up(self, timeout: float = 240.0) -> str:
        leader = super().up(timeout)
        try:
            self._create_term_function(leader)
        except BaseException:
            self.down()
            raise
        return leader

    def _create_term_function(self, leader: str) -> None:
        """Right after bootstrap, on the leader (it replicates to the others)."""
        deadline = time.monotonic() + 60
        while True:
            try:
                with psycopg.connect(self.dsn(leader), autocommit=True) as conn:
                    conn.execute(TERM_SQL)
                    return
            except psycopg.Error as exc:
                if time.monotonic() > deadline:
                    raise ClusterError(f"cannot create pgquorum.current_term() on {leader}: {exc}") from None
                time.sleep(0.5)

    def _check_user(self) -> None:
        reason = patroni_available()
        if reason:
            raise ClusterError(reason)
        drop = ["setpriv", f"--reuid={PG_USER}", f"--regid={PG_USER}", "--clear-groups", "--"]
        probe = subprocess.run(
            [*drop, str(PATRONI_VENV / "bin" / "patroni"), "--version"], capture_output=True, text=True, timeout=60
        )
        if probe.returncode != 0:
            raise ClusterError(
                f"the 'postgres' user cannot run {PATRONI_VENV / 'bin' / 'patroni'}: {probe.stderr.strip()[-200:]}"
            )

    def _write_config(self, home: Path, cfg: dict[str, Any]) -> None:
        """Called by ``_prepare_tree`` with pgquorum's configuration of a data member: the same
        addresses, secrets and data directory, written as Patroni's."""
        name = str(cfg["name"])
        pg = cfg["postgres"]
        t = self.spec.timing
        subnet = f"{self.spec.subnet}.0/24"
        patroni = self._build_config(
            name,
            scope=self.cluster_name,
            namespace="/pgqchaos/",
            ttl=int(t.ttl),
            loop_wait=int(t.loop_wait),
            retry_timeout=int(t.retry_timeout),
            api_listen=f"{self.addr(name)}:{API_PORT}",
            etcd_hosts=[f"{self.addr(e)}:{ETCD_CLIENT_PORT}" for e in self.etcd],
            pg_listen=f"{self.addr(name)}:{PG_PORT}",
            data_dir=str(self._data_dir(name)),
            bin_dir=pg["bin_dir"],
            pgpass=str(home / ".pgpass"),
            superuser_password=Path(pg["superuser_password_file"]).read_text().strip(),
            replication_password=Path(pg["replication_password_file"]).read_text().strip(),
            # postgres's own log where the runner copies it from (logs/<member>-postgresql.log)
            local_parameters={
                "unix_socket_directories": str(home),
                "logging_collector": "on",
                "log_directory": str(home / "pglog"),
                "log_filename": "postgresql.log",
                "log_line_prefix": "%m [%p] ",
            },
            pg_hba=[
                "local all all trust",
                f"host all all {subnet} scram-sha-256",
                f"host replication replicator {subnet} scram-sha-256",
            ],
        )
        # ``<member>/pgdata`` may be a volume of its own (the disk-full fault fills it): Patroni
        # removes or renames its data directory when pg_rewind fails, which a mount point refuses
        pgdata = Path(pg["data_dir"])
        for d in (pgdata, self._data_dir(name)):
            d.mkdir(exist_ok=True)
            self._chown_pg(d, 0o700)
        path = home / "patroni.yml"
        path.write_text(json.dumps(patroni, indent=1))  # JSON is YAML
        self._chown_pg(path, 0o600)  # holds the passwords

    def start_agent(self, name: str) -> None:
        if name not in self.data:
            return super().start_agent(name)  # (no witnesses on a Patroni bed)
        proc = self._agents.get(name)
        if proc is not None and proc.poll() is None:
            return
        home = self.workdir / name
        env = {"PATH": "/usr/bin:/bin", "HOME": str(home), "LANG": "C.UTF-8", "TZ": "UTC"}
        argv = [str(PATRONI_VENV / "bin" / "patroni"), str(home / "patroni.yml")]
        proc = self.bed.popen(name, argv, log_path=home / "agent.log", user=PG_USER, cwd=home, env=env)
        REAPER.own(proc.pid)
        self._agents[name] = proc

    def _data_dir(self, name: str) -> Path:
        return self.workdir / name / "pgdata" / "data"

    def postgres_pid(self, name: str) -> int | None:
        return postmaster_pid(self._data_dir(name))

    # ------------------------------------------------------------------ state

    def _cluster_view(self) -> dict[str, Any]:
        """GET /cluster (read from etcd by the member asked) from the first live agent that answers."""
        for n in self.data:
            if self.agent_pid(n) is None:
                continue
            status, body = _get(self.api_url(n) + "/cluster")
            if status == 200 and isinstance(body, dict) and isinstance(body.get("members"), list):
                return body
        return {}

    def members(self) -> list[MemberView]:
        by_name = {m.get("name"): m for m in self._cluster_view().get("members", []) if isinstance(m, dict)}
        out = []
        for n in self.data:
            m = by_name.get(n, {})
            agent = self.agent_pid(n) is not None
            role = str(m.get("role", "down"))
            if role in ("sync_standby", "quorum_standby"):
                role = "replica"
            if role == "replica" and m.get("state") != "streaming":
                role = f"replica-{m.get('state', 'unknown')}"
            tl = m.get("timeline")
            out.append(
                MemberView(
                    n, role if agent else "down", tl if isinstance(tl, int) else None, agent, self.postgres_pid(n)
                )
            )
        return out

    def leader(self) -> str | None:
        """The member whose own Patroni answers ``GET /primary`` with 200 (a primary holding the
        leader lock in its own view), with postgres running."""
        for n in self.data:
            if self.agent_pid(n) is not None and self.postgres_pid(n):
                status, _ = _get(self.api_url(n) + "/primary")
                if status == 200:
                    return n
        return None

    def healthy(self) -> str | None:
        """One leader in etcd's view that also says so itself, every other member streaming on the
        leader's timeline, every etcd member up."""
        if not all(self.etcd_alive(e) for e in self.etcd):
            return None
        ms = self.members()
        leaders = [m for m in ms if m.role == "leader" and m.postgres_pid and m.agent_alive]
        if len(leaders) != 1:
            return None
        lead = leaders[0]
        for m in ms:
            if m is lead:
                continue
            if not (m.role == "replica" and m.postgres_pid and m.agent_alive):
                return None
            if lead.term is not None and m.term is not None and m.term != lead.term:
                return None  # still replaying the old timeline
        return lead.name if self.leader() == lead.name else None

    def history(self) -> list[dict[str, Any]]:
        """Patroni's /history as ``{term, new_leader, at}`` rows (``at`` is its timestamp string)."""
        return [{"term": e[0] + 1, "new_leader": e[4], "at": e[3]} for e in self._patroni_history() if len(e) >= 5]

    def _patroni_history(self) -> list[list[Any]]:
        for n in self.data:
            status, body = _get(self.api_url(n) + "/history", timeout=2)
            if status == 200 and isinstance(body, list):
                return [e for e in body if isinstance(e, list)]
        return []

    def primary_intervals(self) -> list[PrimaryInterval]:
        events = {}
        for n in self.data:
            with contextlib.suppress(OSError):
                events[n] = parse_patroni_log((self.workdir / n / "agent.log").read_text(errors="replace"))
        return reigns_from_log(events, self._patroni_history(), self.deaths)
