"""The local cluster: etcd + N agents (each with its PostgreSQL) on loopback under one directory.

Layout of ``DATA_DIR``::

    cluster.json            ports, pids, run-as user: what ``status``/``start``/``down`` act on
    secrets/                generated passwords and the REST API token ``api-token`` (0600), a pgpass file
    etcd/ etcd.log          the etcd member
    <name>/agent.yaml       the agent's configuration
    <name>/agent.log        the agent's structured log
    <name>/pgdata           PostgreSQL's data directory
    w<i>/agent.yaml         a witness (``--witnesses N``): a voting member without PostgreSQL

Everything runs as an unprivileged user: the invoking user, or ``postgres`` when invoked as root
(PostgreSQL refuses to run as root).
"""

from __future__ import annotations

import json
import os
import pwd
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
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
    Witness,
    render_agent_config,
    write_agent_config,
)
from pgquorum.agent.postgres.process import kill_tree
from pgquorum.agent.stonith import parse_hooks
from pgquorum.local.etcd import EtcdServer, EtcdServerError
from pgquorum.local.ports import free_port
from pgquorum.local.prometheus import PrometheusError, PrometheusServer


class LocalError(RuntimeError):
    """A local-cluster command failed; the message says what to do."""


def default_data_dir() -> Path:
    if os.geteuid() == 0:
        return Path("/var/lib/pgquorum/local")
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "pgquorum" / "local"


@dataclass
class MemberSlot:
    name: str
    pg_port: int
    api_port: int
    agent_pid: int | None = None

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"


@dataclass
class LocalState:
    cluster: str
    run_as: str
    etcd_client_port: int
    etcd_peer_port: int
    etcd_pid: int | None = None
    members: list[MemberSlot] = field(default_factory=list)
    prometheus_port: int | None = None
    prometheus_pid: int | None = None
    witnesses: list[MemberSlot] = field(default_factory=list)  # pg_port 0: no PostgreSQL

    def member(self, name: str) -> MemberSlot:
        for m in self.members + self.witnesses:
            if m.name == name:
                return m
        names = ", ".join(m.name for m in self.members + self.witnesses)
        raise LocalError(f"--member {name}: no such member (members: {names})")

    def agents(self) -> list[MemberSlot]:
        """Every agent process: data members, then witnesses."""
        return self.members + self.witnesses


def _pid_alive(pid: int | None, marker: str) -> bool:
    """True if ``pid`` runs and its command line mentions ``marker`` (guards against pid reuse)."""
    if not pid:
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    if stat.rsplit(")", 1)[-1].split()[0] == "Z":  # zombie: exited, parent has not reaped it
        return False
    return marker in cmdline


def _postmaster_pid(pgdata: Path) -> int | None:
    try:
        pid = int((pgdata / "postmaster.pid").read_text().splitlines()[0])
    except (OSError, ValueError, IndexError):
        return None
    return pid if _pid_alive(pid, "postgres") else None


class LocalCluster:
    def __init__(self, data_dir: Path | None = None):
        self.data_dir = (data_dir or default_data_dir()).resolve()
        self.state_file = self.data_dir / "cluster.json"

    # -- state ---------------------------------------------------------------------------
    def load(self) -> LocalState:
        try:
            raw = json.loads(self.state_file.read_text())
        except FileNotFoundError:
            raise LocalError(f"no local cluster in {self.data_dir}: run 'pgquorum local up' first") from None
        except (OSError, ValueError) as exc:
            raise LocalError(f"{self.state_file} is unreadable ({exc}); remove the directory to start over") from None
        raw["members"] = [MemberSlot(**m) for m in raw.get("members", [])]
        raw["witnesses"] = [MemberSlot(**m) for m in raw.get("witnesses", [])]
        return LocalState(**raw)

    def save(self, state: LocalState) -> None:
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(state), indent=2))
        tmp.replace(self.state_file)

    # -- up --------------------------------------------------------------------------------
    def up(
        self,
        members: int = 3,
        timeout: float = 180.0,
        timing: Timing | None = None,
        prometheus: bool = False,
        synchronous: dict[str, Any] | None = None,
        witnesses: int = 0,
        quorum_votes: bool = True,
        stonith: list[dict[str, Any]] | None = None,
    ) -> LocalState:
        """``synchronous``: the agents' quorum-commit setting (``{mode, k, durability}``), None: off.
        ``witnesses``: voting members without PostgreSQL. ``quorum_votes``: False runs the lease-only
        mode (no votes, no promises; for comparisons), which has no use for witnesses. ``stonith``: the
        data members' STONITH hooks (agent/stonith), e.g. ``[{"type": "local-kill", "data_dir": DIR}]``."""
        if members < 1 or members > 9:
            raise LocalError(f"--members: expected 1 to 9 data members, got {members}")
        if witnesses < 0 or witnesses > 9:
            raise LocalError(f"--witnesses: expected 0 to 9 witnesses, got {witnesses}")
        if witnesses and not quorum_votes:
            raise LocalError("--witnesses: witnesses only vote; they need quorum votes on")
        run_as = self._run_as()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self.state_file.exists():
            state = self.load()
            if len(state.members) != members or len(state.witnesses) != witnesses:
                raise LocalError(
                    f"--members {members} --witnesses {witnesses}: the cluster in {self.data_dir} has "
                    f"{len(state.members)} members and {len(state.witnesses)} witnesses; "
                    "run 'pgquorum local down --destroy' first to recreate it"
                )
        else:
            state = LocalState(
                cluster="local",
                run_as=run_as,
                etcd_client_port=free_port(),
                etcd_peer_port=free_port(),
                members=[MemberSlot(f"pg{i + 1}", free_port(), free_port()) for i in range(members)],
                witnesses=[MemberSlot(f"w{i + 1}", 0, free_port()) for i in range(witnesses)],
            )
        self._prepare_tree(state, timing or Timing(), synchronous, quorum_votes, stonith)
        self._start_etcd(state)
        for slot in state.agents():
            self._start_agent(state, slot)
        self.save(state)
        self.wait_healthy(state, timeout)
        if prometheus:
            self._start_prometheus(state)
        return state

    def _run_as(self) -> str:
        me = pwd.getpwuid(os.geteuid()).pw_name
        if os.geteuid() != 0:
            return me
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            raise LocalError(
                "running as root, and PostgreSQL refuses root: create the 'postgres' user "
                "(apt-get install postgresql-15 does) or run as a normal user"
            ) from None
        probe = subprocess.run(
            [sys.executable, "-c", "import pgquorum.agent.main"],
            user="postgres",
            group="postgres",
            extra_groups=[],
            capture_output=True,
            text=True,
            timeout=30,
        )
        if probe.returncode != 0:
            raise LocalError(
                f"the 'postgres' user cannot run {sys.executable} with pgquorum installed "
                f"({probe.stderr.strip().splitlines()[-1] if probe.stderr.strip() else 'no output'}); "
                "install pgquorum into a virtualenv outside /root (e.g. /opt) built from /usr/bin/python3"
            )
        return "postgres"

    def _chown(self, path: Path, user: str) -> None:
        if os.geteuid() == 0:
            entry = pwd.getpwnam(user)
            os.chown(path, entry.pw_uid, entry.pw_gid)

    def _write_private(self, path: Path, text: str, owner: str) -> None:
        path.write_text(text)
        path.chmod(0o600)
        self._chown(path, owner)

    def _prepare_tree(
        self,
        state: LocalState,
        timing: Timing,
        synchronous: dict[str, Any] | None = None,
        quorum_votes: bool = True,
        stonith: list[dict[str, Any]] | None = None,
    ) -> None:
        self._chown(self.data_dir, state.run_as)
        self.data_dir.chmod(0o755)
        secrets_dir = self.data_dir / "secrets"
        secrets_dir.mkdir(exist_ok=True)
        secrets_dir.chmod(0o755)
        self._chown(secrets_dir, state.run_as)
        for kind in ("superuser", "replication", "api-token"):
            path = secrets_dir / kind
            if not path.exists():
                self._write_private(path, secrets.token_urlsafe(32 if kind == "api-token" else 24) + "\n", state.run_as)
        password = (secrets_dir / "superuser").read_text().strip()
        me = pwd.getpwuid(os.geteuid()).pw_name
        self._write_private(secrets_dir / "pgpass", f"127.0.0.1:*:*:postgres:{password}\n", me)
        shared = ClusterSettings(
            cluster=state.cluster,
            etcd_endpoints=(f"http://127.0.0.1:{state.etcd_client_port}",),
            timing=timing,
            api=ApiSettings(auth_token_file=secrets_dir / "api-token"),  # for POST/PATCH on the REST API
            quorum_votes=quorum_votes,
        )
        try:
            sync = None if synchronous is None else sync_settings(synchronous)
            hooks = parse_hooks(stonith)
        except ConfigError as exc:
            raise LocalError(str(exc)) from None
        owner = state.run_as if os.geteuid() == 0 else None
        for slot in state.agents():
            home = self.data_dir / slot.name
            home.mkdir(exist_ok=True)
            self._chown(home, state.run_as)
            role: DataMember | Witness = WITNESS
            if slot in state.members:
                postgres = PostgresSettings(
                    data_dir=home / "pgdata",
                    bin_dir=Path(default_bin_dir()),
                    port=slot.pg_port,
                    superuser_password_file=secrets_dir / "superuser",
                    replication_password_file=secrets_dir / "replication",
                    parameters={"shared_buffers": "32MB", "max_connections": "50", "max_slot_wal_keep_size": "1GB"},
                )
                role = DataMember(postgres=postgres, synchronous=sync, stonith=hooks)
            member = MemberSettings(name=slot.name, api_listen=f"127.0.0.1:{slot.api_port}", role=role)
            try:
                write_agent_config(home / "agent.yaml", render_agent_config(shared, member), owner)
            except ConfigError as exc:
                raise LocalError(f"{home / 'agent.yaml'}: {exc}") from None

    def _start_etcd(self, state: LocalState) -> None:
        if _pid_alive(state.etcd_pid, "etcd"):
            return
        etcd = EtcdServer(
            self.data_dir / "etcd",
            state.etcd_client_port,
            state.etcd_peer_port,
            run_as=state.run_as if os.geteuid() == 0 else None,
            log_file=self.data_dir / "etcd.log",
        )
        try:
            etcd.start()
        except EtcdServerError as exc:
            raise LocalError(str(exc)) from None
        state.etcd_pid = etcd.pid
        self.save(state)

    def _start_prometheus(self, state: LocalState) -> None:
        if _pid_alive(state.prometheus_pid, str(self.data_dir / "prometheus")):
            return
        state.prometheus_port = state.prometheus_port or free_port()
        server = PrometheusServer(
            self.data_dir / "prometheus",
            state.prometheus_port,
            [f"127.0.0.1:{m.api_port}" for m in state.agents()],
            run_as=state.run_as if os.geteuid() == 0 else None,
            log_file=self.data_dir / "prometheus.log",
            etcd_targets=[f"127.0.0.1:{state.etcd_client_port}"],
        )
        try:
            server.start()
        except PrometheusError as exc:
            raise LocalError(str(exc)) from None
        state.prometheus_pid = server.pid
        self.save(state)

    def _start_agent(self, state: LocalState, slot: MemberSlot) -> None:
        if _pid_alive(slot.agent_pid, str(self.data_dir)):
            return
        home = self.data_dir / slot.name
        user = state.run_as if os.geteuid() == 0 else None
        log_path = home / "agent.log"
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "pgquorum", "agent", "--config", str(home / "agent.yaml")],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                cwd=str(home),
                user=user,
                group=user,
                extra_groups=[] if user else None,
            )
        self._chown(log_path, state.run_as)
        slot.agent_pid = proc.pid
        self.save(state)

    # -- status ------------------------------------------------------------------------------
    def dsn(self, state: LocalState) -> str:
        hosts = ",".join("127.0.0.1" for _ in state.members)
        ports = ",".join(str(m.pg_port) for m in state.members)
        passfile = self.data_dir / "secrets" / "pgpass"
        return (
            f"host={hosts} port={ports} user=postgres dbname=postgres "
            f"target_session_attrs=read-write connect_timeout=2 passfile={passfile}"
        )

    def cluster_view(self, state: LocalState) -> dict[str, Any] | None:
        """/cluster from the first agent that answers."""
        for slot in state.agents():
            try:
                with urllib.request.urlopen(slot.api_url + "/cluster", timeout=1.0) as resp:
                    data: dict[str, Any] = json.loads(resp.read())
                    if "error" not in data:
                        return data
            except (OSError, ValueError, urllib.error.URLError):
                continue
        return None

    def status(self) -> dict[str, Any]:
        state = self.load()
        view = self.cluster_view(state) or {"members": [], "leader": None, "term": None}
        by_name = {m["name"]: m for m in view.get("members", [])}
        members = []
        for slot in state.members:
            agent_alive = _pid_alive(slot.agent_pid, str(self.data_dir))
            info = by_name.get(slot.name, {})
            role = info.get("role", "stopped") if agent_alive else "down"
            members.append(
                {
                    "name": slot.name,
                    "role": role,
                    "state": info.get("state") if agent_alive else "agent not running",
                    "term": info.get("term"),
                    "timeline": info.get("timeline"),
                    "lsn": info.get("lsn"),
                    "lag_bytes": info.get("lag_bytes"),
                    "api_url": slot.api_url,
                    "pg_port": slot.pg_port,
                    "agent_pid": slot.agent_pid if agent_alive else None,
                    "postgres_pid": _postmaster_pid(self.data_dir / slot.name / "pgdata"),
                }
            )
        for slot in state.witnesses:
            agent_alive = _pid_alive(slot.agent_pid, str(self.data_dir))
            info = by_name.get(slot.name, {})
            members.append(
                {
                    "name": slot.name,
                    "role": "witness" if agent_alive and info else ("starting" if agent_alive else "down"),
                    "state": info.get("state") if agent_alive else "agent not running",
                    "term": info.get("term"),
                    "timeline": None,
                    "lsn": None,
                    "lag_bytes": None,
                    "api_url": slot.api_url,
                    "pg_port": None,
                    "agent_pid": slot.agent_pid if agent_alive else None,
                    "postgres_pid": None,
                }
            )
        return {
            "data_dir": str(self.data_dir),
            "dsn": self.dsn(state),
            "leader": view.get("leader"),
            "term": view.get("term"),
            "etcd": f"http://127.0.0.1:{state.etcd_client_port}",
            "etcd_pid": state.etcd_pid if _pid_alive(state.etcd_pid, "etcd") else None,
            "prometheus": f"http://127.0.0.1:{state.prometheus_port}"
            if _pid_alive(state.prometheus_pid, str(self.data_dir / "prometheus"))
            else None,
            "members": members,
        }

    def wait_healthy(self, state: LocalState, timeout: float) -> dict[str, Any]:
        """Until one leader and every other member streams from it."""
        deadline = time.monotonic() + timeout
        last: dict[str, Any] = {}
        witnesses = {w.name for w in state.witnesses}
        while time.monotonic() < deadline:
            last = self.status()
            roles = [m["role"] for m in last["members"] if m["name"] not in witnesses]
            witnesses_up = all(m["role"] == "witness" for m in last["members"] if m["name"] in witnesses)
            if roles.count("leader") == 1 and roles.count("replica") == len(roles) - 1 and witnesses_up:
                return last
            time.sleep(0.5)
        summary = ", ".join(f"{m['name']}={m['role']}" for m in last.get("members", []))
        raise LocalError(
            f"cluster not healthy after {timeout:g}s ({summary}); see the logs under {self.data_dir}/<member>/agent.log"
        )

    # -- start / stop ----------------------------------------------------------------------
    def start_member(self, name: str) -> None:
        state = self.load()
        slot = state.member(name)
        self._start_etcd(state)
        self._start_agent(state, slot)

    def down(self, destroy: bool = False, timeout: float = 30.0) -> list[str]:
        """Stop what this cluster started (agents, their postgres, etcd) and nothing else."""
        state = self.load()
        stopped: list[str] = []
        marker = str(self.data_dir)
        live = [s for s in state.agents() if _pid_alive(s.agent_pid, marker)]
        for slot in live:
            os.kill(slot.agent_pid or 0, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and any(_pid_alive(s.agent_pid, marker) for s in live):
            time.sleep(0.1)
        for slot in state.members:
            if _pid_alive(slot.agent_pid, marker):
                os.kill(slot.agent_pid or 0, signal.SIGKILL)
            pid = _postmaster_pid(self.data_dir / slot.name / "pgdata")
            if pid:  # an agent killed earlier leaves its postgres behind
                os.kill(pid, signal.SIGQUIT)
                end = time.monotonic() + 10
                while time.monotonic() < end and _postmaster_pid(self.data_dir / slot.name / "pgdata"):
                    time.sleep(0.1)
            slot.agent_pid = None
            stopped.append(slot.name)
        for slot in state.witnesses:
            if _pid_alive(slot.agent_pid, marker):
                os.kill(slot.agent_pid or 0, signal.SIGKILL)
            slot.agent_pid = None
            stopped.append(slot.name)
        if _pid_alive(state.etcd_pid, "etcd"):
            os.kill(state.etcd_pid or 0, signal.SIGTERM)
            end = time.monotonic() + 10
            while time.monotonic() < end and _pid_alive(state.etcd_pid, "etcd"):
                time.sleep(0.1)
            if _pid_alive(state.etcd_pid, "etcd"):
                os.kill(state.etcd_pid or 0, signal.SIGKILL)
            stopped.append("etcd")
        state.etcd_pid = None
        if _pid_alive(state.prometheus_pid, str(self.data_dir / "prometheus")):
            os.kill(state.prometheus_pid or 0, signal.SIGTERM)
            end = time.monotonic() + 10
            while time.monotonic() < end and _pid_alive(state.prometheus_pid, str(self.data_dir / "prometheus")):
                time.sleep(0.1)
            if _pid_alive(state.prometheus_pid, str(self.data_dir / "prometheus")):
                os.kill(state.prometheus_pid or 0, signal.SIGKILL)
            stopped.append("prometheus")
        state.prometheus_pid = None
        self.save(state)
        if destroy:
            import shutil

            shutil.rmtree(self.data_dir)
        return stopped

    def kill_member(self, name: str, what: str = "node") -> dict[str, int | None]:
        """Crash a member for demos and tests: ``node`` (agent + postgres), ``agent`` or ``postgres``."""
        state = self.load()
        slot = state.member(name)
        agent = slot.agent_pid if _pid_alive(slot.agent_pid, str(self.data_dir)) else None
        postgres = _postmaster_pid(self.data_dir / slot.name / "pgdata")
        if what in ("node", "agent") and agent:
            os.kill(agent, signal.SIGKILL)
        if what in ("node", "postgres") and postgres:
            # Every postmaster child calls setsid(): killing the process group alone leaves the WAL
            # receiver alive long enough to confirm a commit for a "dead" standby.
            kill_tree(postgres)
        return {"agent_pid": agent, "postgres_pid": postgres}
