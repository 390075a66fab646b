"""A pgquorum cluster spread over network namespaces: 3 etcd members and 3 data members (agent +
PostgreSQL, run as the ``postgres`` OS user), each in its own namespace with its own address.

Node names and addresses (``TestBed`` order): data members ``n1..n3`` = 10.77.0.11-13, etcd
``e1..e3`` = 10.77.0.14-16, witnesses ``w1..`` after them. Every node uses the standard ports
(postgres 5432, agent API 8008, etcd 2379/2380): namespaces have their own port space.

The agents' configuration is the one ``local/runner.py`` writes (same keys, same postgres
parameters) with the namespace addresses: ``listen_host`` and ``api_listen`` on the node's address
(so replicas, peers and clients reach it through the bridge) and ``etcd_endpoints`` listing all
three etcd members. Quorum commit (``k = 1``, ``durability: required``) is on by default: the
checker's "no acknowledged write lost" claim is made for quorum mode.

Layout of the work directory::

    secrets/ superuser replication api-token   (postgres, 0600)
    client.pgpass                              (root, 0600: the harness's clients)
    n1/agent.yaml n1/agent.log n1/pgdata ...
    e1/data e1/etcd.log
"""

from __future__ import annotations

import calendar
import contextlib
import json
import logging
import os
import pwd
import secrets
import shlex
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pgquorum.agent.config import (
    ApiSettings,
    ConfigError,
    PostgresSettings,
    Timing,
    default_bin_dir,
    sync_settings,
)
from pgquorum.agent.config_render import (
    WITNESS,
    ClusterSettings,
    DataMember,
    MemberSettings,
    render_agent_config,
    write_agent_config,
)
from pgquorum.chaos.history import PrimaryInterval
from pgquorum.chaos.netns import TestBed
from pgquorum.chaos.procs import REAPER, alive, descendants, postmaster_pid, signal_group, signal_tree

log = logging.getLogger("pgquorum.chaos")

PG_PORT = 5432
API_PORT = 8008
ETCD_CLIENT_PORT = 2379
ETCD_PEER_PORT = 2380
PG_USER = "postgres"
VOLUME_SOURCE = "pqchaos-data"  # the data volumes' tmpfs "device" name, to find them in /proc/mounts


class ClusterError(RuntimeError):
    """The chaos cluster could not be started or did not behave; the message says what to check."""


def quorum_commit() -> dict[str, Any]:
    return {"mode": "quorum", "k": 1, "durability": "required"}


@dataclass(frozen=True)
class ClusterSpec:
    members: int = 3
    etcd_members: int = 3
    witnesses: int = 0
    timing: Timing = field(default_factory=Timing)
    synchronous: dict[str, Any] | None = field(default_factory=quorum_commit)  # None: asynchronous
    quorum_votes: bool = True
    prefix: str = "pqc"  # namespace / interface prefix
    subnet: str = "10.77.0"
    data_volume_mb: int | None = 1024  # each member's PGDATA on its own tmpfs of this size (disk-full)


@dataclass(frozen=True)
class MemberView:
    name: str
    role: str  # leader | replica | standby | stopped | down | ... as the agents publish it
    term: int | None
    agent_alive: bool
    postgres_pid: int | None


def _http_json(url: str, timeout: float = 1.0) -> Any:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return json.loads(resp.read())
    except (OSError, ValueError, urllib.error.URLError):
        return None


def _parse_log_line(line: str) -> tuple[float, dict[str, str]] | None:
    """``2026-11-26T16:40:01.123Z LEVEL member=x msg=... key=value ...`` -> (epoch, fields)."""
    if not line[:4].isdigit() or " event=" not in line:
        return None
    try:
        parts = shlex.split(line)
        ts = parts[0]
        secs = calendar.timegm(time.strptime(ts[:19], "%Y-%m-%dT%H:%M:%S")) + float("0" + ts[19:-1])
    except (ValueError, IndexError):
        return None
    fields = dict(p.split("=", 1) for p in parts[2:] if "=" in p)
    return secs, fields


class ChaosCluster:
    def __init__(self, workdir: Path, spec: ClusterSpec | None = None, *, python: str | None = None) -> None:
        self.spec = spec or ClusterSpec()
        self.workdir = Path(workdir).resolve()
        self.python = python or sys.executable
        self.data = [f"n{i + 1}" for i in range(self.spec.members)]
        self.etcd = [f"e{i + 1}" for i in range(self.spec.etcd_members)]
        self.witnesses = [f"w{i + 1}" for i in range(self.spec.witnesses)]
        self.bed = TestBed(self.data + self.etcd + self.witnesses, prefix=self.spec.prefix, subnet=self.spec.subnet)
        self._agents: dict[str, subprocess.Popen[bytes]] = {}
        self._etcd: dict[str, subprocess.Popen[bytes]] = {}
        # (time, member, what) for faults that end a primary's reign without a log line (SIGKILL)
        self.deaths: list[tuple[float, str, str]] = []
        self.cluster_name = "chaos"
        self.keep_data = False  # copy the tmpfs data volumes to disk at teardown (--keep)

    # ------------------------------------------------------------------ addresses / DSNs

    def addr(self, name: str) -> str:
        return self.bed.addr(name)

    def member_of_addr(self, addr: str | None) -> str | None:
        for n in self.data:
            if self.addr(n) == addr:
                return n
        return None

    @property
    def passfile(self) -> Path:
        return self.workdir / "client.pgpass"

    def dsn(self, member: str | None = None, *, connect_timeout: int = 2) -> str:
        """Any writable member (multi-host, read-write), or one member."""
        hosts = [self.addr(member)] if member else [self.addr(n) for n in self.data]
        tsa = "" if member else " target_session_attrs=read-write"
        return (
            f"host={','.join(hosts)} port={','.join(str(PG_PORT) for _ in hosts)} user=postgres dbname=postgres "
            f"connect_timeout={connect_timeout} passfile={self.passfile} application_name=chaos{tsa}"
        )

    def api_url(self, name: str) -> str:
        return f"http://{self.addr(name)}:{API_PORT}"

    def etcd_url(self, name: str) -> str:
        return f"http://{self.addr(name)}:{ETCD_CLIENT_PORT}"

    # ------------------------------------------------------------------ lifecycle

    def up(self, timeout: float = 240.0) -> str:
        """Namespaces, etcd, agents; returns the leader once one leads and the others stream."""
        self._check_user()
        self.bed.up()
        self._unmount_debris()
        try:
            self._prepare_tree()
            for e in self.etcd:
                self.start_etcd(e)
            self.wait_etcd(60.0)
            for n in self.data + self.witnesses:
                self.start_agent(n)
            return self.wait_healthy(timeout)
        except BaseException:
            self.down()
            raise

    def down(self) -> None:
        """Stop everything started here (agents, their postgres, etcd) and remove the namespaces."""
        for proc in list(self._agents.values()):
            if proc.poll() is None:
                signal_tree(proc.pid, signal.SIGCONT)  # a paused member stops only once continued
                signal_group(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        for proc in self._agents.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(max(0.1, deadline - time.monotonic()))
            if proc.poll() is None:
                signal_group(proc.pid, signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(5)
        for name in self.data:
            pid = self.postgres_pid(name)
            if pid:  # left by a killed agent (a fault) or not stopped in time
                signal_tree(pid, signal.SIGCONT)
                signal_group(pid, signal.SIGQUIT)
        for proc in self._etcd.values():
            if proc.poll() is None:
                signal_tree(proc.pid, signal.SIGCONT)
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)
        self._agents.clear()
        self._etcd.clear()
        self.bed.down()  # kills whatever still runs inside the namespaces
        for n in self.data:
            self._unmount_volume(self.workdir / n / "pgdata")

    def __enter__(self) -> ChaosCluster:
        self.up()
        return self

    def __exit__(self, *exc: object) -> None:
        self.down()

    def _check_user(self) -> None:
        try:
            pwd.getpwnam(PG_USER)
        except KeyError:
            raise ClusterError("no 'postgres' OS user: apt-get install postgresql-15 creates it") from None
        drop = ["setpriv", f"--reuid={PG_USER}", f"--regid={PG_USER}", "--clear-groups", "--"]
        probe = subprocess.run(
            [*drop, self.python, "-c", "import pgquorum.agent.main"],
            capture_output=True,
            text=True,
            timeout=60,
            cwd="/",
        )
        if probe.returncode != 0:
            last = probe.stderr.strip().splitlines()[-1] if probe.stderr.strip() else "no output"
            raise ClusterError(
                f"the 'postgres' user cannot run {self.python} with pgquorum installed ({last}); "
                "use a virtualenv outside /root built from /usr/bin/python3 (scripts/setup.sh makes one)"
            )

    def _chown_pg(self, path: Path, mode: int) -> None:
        pw = pwd.getpwnam(PG_USER)
        os.chown(path, pw.pw_uid, pw.pw_gid)
        path.chmod(mode)

    def _private(self, path: Path, text: str, owner_pg: bool = True) -> None:
        path.write_text(text)
        if owner_pg:
            self._chown_pg(path, 0o600)
        else:
            path.chmod(0o600)

    def _prepare_tree(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.workdir.chmod(0o755)
        sec = self.workdir / "secrets"
        sec.mkdir(exist_ok=True)
        self._chown_pg(sec, 0o700)
        for kind in ("superuser", "replication", "api-token"):
            if not (sec / kind).exists():
                self._private(sec / kind, secrets.token_urlsafe(24) + "\n")
        password = (sec / "superuser").read_text().strip()
        self._private(self.passfile, f"*:*:*:postgres:{password}\n", owner_pg=False)
        shared = ClusterSettings(
            cluster=self.cluster_name,
            etcd_endpoints=tuple(self.etcd_url(e) for e in self.etcd),
            timing=self.spec.timing,
            api=ApiSettings(auth_token_file=sec / "api-token"),
            quorum_votes=self.spec.quorum_votes,
        )
        try:
            sync = None if self.spec.synchronous is None else sync_settings(self.spec.synchronous)
        except ConfigError as exc:
            raise ClusterError(str(exc)) from None
        for n in self.data:
            home = self.workdir / n
            home.mkdir(exist_ok=True)
            self._chown_pg(home, 0o755)
            self._mount_volume(home / "pgdata")
            postgres = PostgresSettings(
                data_dir=home / "pgdata",
                bin_dir=Path(default_bin_dir()),
                listen_host=self.addr(n),
                port=PG_PORT,
                superuser_password_file=sec / "superuser",
                replication_password_file=sec / "replication",
                parameters={"shared_buffers": "32MB", "max_connections": "50", "max_slot_wal_keep_size": "1GB"},
            )
            role = DataMember(postgres=postgres, synchronous=sync)
            self._write_config(home, render_agent_config(shared, MemberSettings(n, f"{self.addr(n)}:{API_PORT}", role)))
        for w in self.witnesses:
            home = self.workdir / w
            home.mkdir(exist_ok=True)
            self._chown_pg(home, 0o755)
            self._write_config(
                home, render_agent_config(shared, MemberSettings(w, f"{self.addr(w)}:{API_PORT}", WITNESS))
            )
        for e in self.etcd:
            home = self.workdir / e
            home.mkdir(exist_ok=True)
            self._chown_pg(home, 0o700)

    def _mount_volume(self, pgdata: Path) -> None:
        """PGDATA on a small tmpfs of its own, so that a fault can fill it (the agent wipes PGDATA's
        contents, never the directory: a mount point is fine). The logs stay outside it."""
        if self.spec.data_volume_mb is None:
            return
        pgdata.mkdir(exist_ok=True)
        if not os.path.ismount(pgdata):
            pw = pwd.getpwnam(PG_USER)
            opts = f"size={self.spec.data_volume_mb}m,mode=0700,uid={pw.pw_uid},gid={pw.pw_gid}"
            res = subprocess.run(
                ["mount", "-t", "tmpfs", "-o", opts, VOLUME_SOURCE, str(pgdata)], capture_output=True, text=True
            )
            if res.returncode != 0:
                raise ClusterError(f"cannot mount a tmpfs on {pgdata}: {res.stderr.strip()}")

    def _unmount_debris(self) -> None:
        """Data volumes a crashed run left mounted (we hold the bed's lock: no other run is live)."""
        with contextlib.suppress(OSError):
            for line in Path("/proc/mounts").read_text().splitlines():
                source, target = [*line.split(), "", ""][:2]
                if source == VOLUME_SOURCE and not target.startswith(f"{self.workdir}/"):
                    subprocess.run(["umount", "--lazy", target], capture_output=True, check=False)

    def _unmount_volume(self, pgdata: Path) -> None:
        """Unmount a data volume (its processes are dead by now); with ``keep_data`` its contents
        are copied to disk first and take its place, so a kept work directory has them."""
        if not os.path.ismount(pgdata):
            return
        kept = pgdata.with_name(pgdata.name + ".kept")
        if self.keep_data:
            subprocess.run(["cp", "-a", str(pgdata), str(kept)], capture_output=True, check=False)
        subprocess.run(["umount", "--lazy", str(pgdata)], capture_output=True, check=False)
        if kept.is_dir() and not os.path.ismount(pgdata):
            with contextlib.suppress(OSError):
                pgdata.rmdir()
                kept.rename(pgdata)

    def _write_config(self, home: Path, doc: dict[str, Any]) -> None:
        try:
            write_agent_config(home / "agent.yaml", doc, owner=PG_USER)
        except ConfigError as exc:
            raise ClusterError(f"{home / 'agent.yaml'}: {exc}") from None

    # ------------------------------------------------------------------ etcd

    def start_etcd(self, name: str) -> None:
        proc = self._etcd.get(name)
        if proc is not None and proc.poll() is None:
            return
        home = self.workdir / name
        peers = ",".join(f"{e}=http://{self.addr(e)}:{ETCD_PEER_PORT}" for e in self.etcd)
        me = self.addr(name)
        argv = [
            "etcd",
            f"--name={name}",
            f"--data-dir={home / 'data'}",
            f"--listen-client-urls=http://{me}:{ETCD_CLIENT_PORT}",
            f"--advertise-client-urls=http://{me}:{ETCD_CLIENT_PORT}",
            f"--listen-peer-urls=http://{me}:{ETCD_PEER_PORT}",
            f"--initial-advertise-peer-urls=http://{me}:{ETCD_PEER_PORT}",
            f"--initial-cluster={peers}",
            "--initial-cluster-state=new",  # ignored once the data dir holds a member
            f"--initial-cluster-token={self.cluster_name}",
            "--logger=zap",
            "--auto-compaction-mode=periodic",
            "--auto-compaction-retention=1h",
        ]
        env = {"PATH": "/usr/bin:/bin", "HOME": str(home), "LANG": "C.UTF-8"}
        proc = self.bed.popen(name, argv, log_path=home / "etcd.log", user=PG_USER, cwd=home, env=env)
        REAPER.own(proc.pid)
        self._etcd[name] = proc

    def kill_etcd(self, name: str) -> None:
        proc = self._etcd.get(name)
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(10)

    def etcd_alive(self, name: str) -> bool:
        proc = self._etcd.get(name)
        return proc is not None and proc.poll() is None

    def etcd_healthy(self, name: str) -> bool:
        body = _http_json(self.etcd_url(name) + "/health")
        return isinstance(body, dict) and body.get("health") == "true"

    def wait_etcd(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            dead = [e for e in self.etcd if not self.etcd_alive(e)]
            if dead:
                raise ClusterError(f"etcd {dead[0]} exited while starting: see {self.workdir / dead[0] / 'etcd.log'}")
            if all(self.etcd_healthy(e) for e in self.etcd):
                return
            time.sleep(0.2)
        raise ClusterError(f"etcd cluster not healthy after {timeout:g} s: see {self.workdir}/e*/etcd.log")

    def etcd_leader(self) -> str | None:
        """The etcd member that leads raft right now (None when none answers or none leads)."""
        ids: dict[str, str] = {}
        leader_id = None
        for e in self.etcd:
            req = urllib.request.Request(self.etcd_url(e) + "/v3/maintenance/status", data=b"{}", method="POST")
            try:
                with urllib.request.urlopen(req, timeout=1) as resp:
                    body = json.loads(resp.read())
            except (OSError, ValueError, urllib.error.URLError):
                continue
            ids[str(body.get("header", {}).get("member_id"))] = e
            leader_id = str(body.get("leader")) if body.get("leader") else leader_id
        return ids.get(leader_id) if leader_id else None

    # ------------------------------------------------------------------ agents / postgres

    def start_agent(self, name: str) -> None:
        proc = self._agents.get(name)
        if proc is not None and proc.poll() is None:
            return
        home = self.workdir / name
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(home), "LANG": "C.UTF-8"}
        argv = [self.python, "-m", "pgquorum", "agent", "--config", str(home / "agent.yaml")]
        proc = self.bed.popen(name, argv, log_path=home / "agent.log", user=PG_USER, cwd=home, env=env)
        REAPER.own(proc.pid)
        self._agents[name] = proc

    def agent_pid(self, name: str) -> int | None:
        proc = self._agents.get(name)
        return proc.pid if proc is not None and proc.poll() is None and alive(proc.pid) else None

    def postgres_pid(self, name: str) -> int | None:
        return postmaster_pid(self.workdir / name / "pgdata")

    def kill_agent(self, name: str) -> None:
        """SIGKILL the agent and its own children, not its postgres (which runs on without it)."""
        proc = self._agents.get(name)
        pg = self.postgres_pid(name)
        if proc is not None and proc.poll() is None:
            spare = {pg, *descendants(pg)} if pg else set()
            for p in [proc.pid, *descendants(proc.pid)]:
                if p not in spare:
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.kill(p, signal.SIGKILL)
            proc.wait(10)

    def kill_postgres(self, name: str) -> int | None:
        pid = self.postgres_pid(name)
        if pid:
            signal_tree(pid, signal.SIGKILL)  # postmaster and every backend (each its own session)
            self.deaths.append((time.time(), name, "postgres"))
        return pid

    def kill_member(self, name: str) -> None:
        """The node dies: agent, postgres and all their processes at once."""
        pg = self.postgres_pid(name)
        proc = self._agents.get(name)
        if proc is not None and proc.poll() is None:
            signal_tree(proc.pid, signal.SIGKILL)
        signal_tree(pg, signal.SIGKILL)
        self.deaths.append((time.time(), name, "member"))
        if proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(10)

    def pause(self, name: str) -> list[int]:
        """SIGSTOP the agent, postgres and every process of theirs; returns them for ``resume``."""
        return [
            p for root in (self.agent_pid(name), self.postgres_pid(name)) for p in signal_tree(root, signal.SIGSTOP)
        ]

    def resume(self, pids: list[int]) -> None:
        for p in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(p, signal.SIGCONT)

    def recover(self) -> None:
        """Undo whatever a fault may have left: rules, stopped processes, dead agents or etcd."""
        self.bed.heal()
        for n in self.data + self.witnesses:
            for pid in (self.agent_pid(n), self.postgres_pid(n)):
                signal_tree(pid, signal.SIGCONT)
            if self.agent_pid(n) is None:
                self.start_agent(n)
        for e in self.etcd:
            if not self.etcd_alive(e):
                self.start_etcd(e)

    # ------------------------------------------------------------------ state

    def views(self) -> dict[str, dict[str, Any]]:
        """GET /cluster of every data member's agent that answers."""
        out = {}
        for n in self.data:
            body = _http_json(self.api_url(n) + "/cluster")
            if isinstance(body, dict) and "members" in body:
                out[n] = body
        return out

    def members(self) -> list[MemberView]:
        views = self.views()
        # prefer the leader's own view, else any
        view = next((v for n, v in views.items() if v.get("leader") == n), None) or next(iter(views.values()), {})
        by_name = {m.get("name"): m for m in view.get("members", [])}
        out = []
        for n in self.data:
            m = by_name.get(n, {})
            agent = self.agent_pid(n) is not None
            out.append(
                MemberView(
                    n, str(m.get("role", "down")) if agent else "down", m.get("term"), agent, self.postgres_pid(n)
                )
            )
        return out

    def leader(self) -> str | None:
        """The member whose own agent says it leads, with postgres running."""
        for n, v in self.views().items():
            if v.get("leader") == n and self.postgres_pid(n):
                mine: dict[str, Any] = next((m for m in v.get("members", []) if m.get("name") == n), {})
                if mine.get("role") == "leader":
                    return n
        return None

    def healthy(self) -> str | None:
        """The leader when one leads and every other data member streams from it (and every etcd
        member and witness is up), else None."""
        if not all(self.etcd_alive(e) for e in self.etcd):
            return None
        if any(self.agent_pid(w) is None for w in self.witnesses):
            return None
        ms = self.members()
        leaders = [m for m in ms if m.role == "leader" and m.postgres_pid and m.agent_alive]
        if len(leaders) != 1:
            return None
        if not all(m.role == "replica" and m.postgres_pid and m.agent_alive for m in ms if m is not leaders[0]):
            return None
        return leaders[0].name if self.leader() == leaders[0].name else None

    def wait_healthy(self, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while True:
            leader = self.healthy()
            if leader:
                return leader
            if time.monotonic() > deadline:
                summary = ", ".join(f"{m.name}={m.role}" for m in self.members())
                raise ClusterError(
                    f"cluster not healthy after {timeout:g} s ({summary}); see {self.workdir}/n*/agent.log"
                )
            time.sleep(0.3)

    def history(self) -> list[dict[str, Any]]:
        for n in self.data:
            body = _http_json(self.api_url(n) + "/history", timeout=2)
            if isinstance(body, dict) and isinstance(body.get("history"), list):
                return list(body["history"])
        return []

    # ------------------------------------------------------------------ primary intervals

    def log_events(self, name: str) -> list[tuple[float, dict[str, str]]]:
        try:
            text = (self.workdir / name / "agent.log").read_text(errors="replace")
        except OSError:
            return []
        return [ev for ev in (_parse_log_line(line) for line in text.splitlines()) if ev is not None]

    def primary_intervals(self) -> list[PrimaryInterval]:
        """Reigns from the agents' logs (``leader_acquired`` starts one, ``Promote`` begins serving)
        and the cluster history (the bootstrap's term 1 has no log line), ended by the member's
        next fence/release/demote line or by a fault that killed it; the earliest evidence wins."""
        starts: dict[tuple[str, int], float] = {}
        serving: dict[tuple[str, int], float] = {}
        for entry in self.history():
            with contextlib.suppress(KeyError, TypeError, ValueError):
                key = (str(entry["new_leader"]), int(entry["term"]))
                starts[key] = min(starts.get(key, float("inf")), float(entry["at"]))
        ends: dict[str, list[float]] = {}
        for n in self.data:
            for t, f in self.log_events(n):
                ev = f.get("event")
                if ev == "leader_acquired" and f.get("term", "").isdigit():
                    key = (n, int(f["term"]))
                    starts[key] = min(starts.get(key, float("inf")), t)
                elif ev in ("action", "promoted") and f.get("term", "").isdigit():
                    # "executing Promote(term=N)": from here its WAL receiver stops taking the old
                    # primary's WAL; "promoted" (later) in case that line is missing
                    if ev == "promoted" or f.get("action", "").startswith("Promote("):
                        key = (n, int(f["term"]))
                        serving[key] = min(serving.get(key, float("inf")), t)
                elif ev in ("fence", "release", "shutdown") or (
                    ev == "action" and f.get("action", "").startswith(("Follow", "Rejoin", "HandOver"))
                ):
                    ends.setdefault(n, []).append(t)
        for t, n, _what in self.deaths:
            ends.setdefault(n, []).append(t)
        out = []
        for (member, term), start in sorted(starts.items(), key=lambda kv: kv[1]):
            later = [t for t in ends.get(member, []) if t > start]
            served = serving.get((member, term))
            out.append(
                PrimaryInterval(
                    member,
                    term,
                    round(start, 3),
                    round(min(later), 3) if later else None,
                    None if served is None else round(served, 3),
                )
            )
        return out
