"""``PatroniSystem``: one etcd + 3 Patroni members (etcd3 DCS) on loopback.

Patroni runs from the venv built by ``bench/setup_patroni.sh`` as the
postgres OS user.  Every member reaches etcd through its own proxy
(``use_proxies: true`` keeps Patroni from discovering etcd's real client URL
and bypassing the proxy).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from bench.patroni_config import patroni_config
from bench.procs import (
    PG_BIN,
    REAPER,
    free_ports,
    http_json,
    make_pg_dir,
    pg_user_ids,
    pid_alive,
    proc_state,
    read_postmaster_pid,
    signal_tree,
    spawn_as_postgres,
    stop_process,
    wait_for,
)
from bench.system import EtcdServer, Member, System, Timing

log = logging.getLogger("bench.patroni")

PATRONI_VENV = Path(os.environ.get("BENCH_PATRONI_VENV", "/opt/pgquorum-cache/patroni-venv"))

PROFILES: dict[str, Timing] = {
    # the most aggressive timings Patroni accepts (its validator: ttl >= 20, loop_wait >= 1, retry >= 3)
    "aggressive": Timing(ttl=20, loop_wait=1, retry_timeout=3),
    "default": Timing(ttl=30, loop_wait=10, retry_timeout=10),
}

MEMBER_NAMES = ("m1", "m2", "m3")
SCOPE = "bench"
NAMESPACE = "/pgqbench/"


@dataclass
class _PMember:
    name: str
    dir: Path
    pg_port: int
    api_port: int
    proc: subprocess.Popen[bytes] | None = None

    @property
    def data_dir(self) -> Path:
        return self.dir / "data"

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def config(self) -> Path:
        return self.dir / "patroni.yml"

    @property
    def agent_pid(self) -> int | None:
        if self.proc is not None and self.proc.poll() is None:
            return self.proc.pid
        return None


def patroni_version() -> str:
    out = subprocess.run(
        [str(PATRONI_VENV / "bin" / "patroni"), "--version"], capture_output=True, text=True, check=True, timeout=30
    )
    return out.stdout.strip() or out.stderr.strip()


class PatroniSystem(System):
    name = "patroni"

    def __init__(self, profile: str = "aggressive", workdir: Path | None = None, keep: bool = False) -> None:
        if profile not in PROFILES:
            raise ValueError(f"unknown profile {profile!r}; choose from {sorted(PROFILES)}")
        if not (PATRONI_VENV / "bin" / "patroni").exists():
            raise RuntimeError(f"no Patroni at {PATRONI_VENV}: run bench/setup_patroni.sh first")
        super().__init__(profile, PROFILES[profile], workdir, keep)
        self.version = patroni_version()
        ports = free_ports(2 + 2 * len(MEMBER_NAMES))
        self.etcd = EtcdServer(self.workdir, ports[0], ports[1])
        self._m: dict[str, _PMember] = {}
        for i, name in enumerate(MEMBER_NAMES):
            self._m[name] = _PMember(name, make_pg_dir(self.workdir / name), ports[2 + 2 * i], ports[3 + 2 * i])

    # ------------------------------------------------------------------ lifecycle

    def up(self) -> None:
        log.info("patroni %s (%s profile) in %s", self.version, self.profile, self.workdir)
        self.etcd.start()
        for name in self._m:
            self.proxies.add(name, "127.0.0.1", self.etcd.client_port)
        for m in self._m.values():
            self._write_config(m)
        # Start the first member alone so that it bootstraps; the others clone it.
        first = next(iter(self._m))
        self.start_member(first)
        wait_for("bootstrap leader", lambda: self.leader() == first, 120, interval=0.5)
        for name in list(self._m)[1:]:
            self.start_member(name)
        self.wait_healthy(240)

    def _down(self) -> None:
        for m in self._m.values():
            if m.proc is not None:
                stop_process(m.proc, timeout=20)
                m.proc = None
            # a postmaster whose agent was SIGKILLed may survive the agent: stop it too
            pid = read_postmaster_pid(m.data_dir)
            if pid:
                signal_tree([pid], signal.SIGCONT)
                signal_tree([pid], signal.SIGQUIT)
                time.sleep(0.5)
                signal_tree([pid], signal.SIGKILL)
        self.etcd.stop()

    def _write_config(self, m: _PMember) -> None:
        t = self.timing
        cfg = patroni_config(
            m.name,
            scope=SCOPE,
            namespace=NAMESPACE,
            ttl=t.ttl,
            loop_wait=t.loop_wait,
            retry_timeout=t.retry_timeout,
            api_listen=f"127.0.0.1:{m.api_port}",
            etcd_hosts=[f"127.0.0.1:{self.proxies.port(m.name)}"],
            use_proxies=True,
            pg_listen=f"127.0.0.1:{m.pg_port}",
            data_dir=str(m.data_dir),
            bin_dir=str(PG_BIN),
            pgpass=str(m.dir / ".pgpass"),
            superuser_password="bench",
            replication_password="bench",
            local_parameters={"unix_socket_directories": str(m.dir)},
            pg_hba=[
                "local all all trust",
                "host all all 127.0.0.1/32 trust",
                "host replication all 127.0.0.1/32 trust",
            ],
        )
        m.config.write_text(json.dumps(cfg, indent=2))  # JSON is YAML
        os.chown(m.config, *pg_user_ids())

    # ------------------------------------------------------------------ inspection

    def _cluster(self) -> dict[str, dict[str, object]]:
        """Patroni's /cluster view (from any responsive member API), keyed by member name."""
        order = sorted(self._m.values(), key=lambda m: m.agent_pid is None or proc_state(m.agent_pid) == "T")
        for m in order:
            if m.agent_pid is None or proc_state(m.agent_pid) == "T":
                continue
            try:
                status, body = http_json(f"{m.api_url}/cluster", timeout=1.0)
            except OSError:
                continue
            if status == 200 and isinstance(body, dict):
                return {str(x["name"]): x for x in body.get("members", []) if isinstance(x, dict)}
        return {}

    def members(self) -> list[Member]:
        view = self._cluster()
        out = []
        for name, m in self._m.items():
            info = view.get(name, {})
            agent = m.agent_pid
            pg = read_postmaster_pid(m.data_dir)
            prole = str(info.get("role", ""))
            state = str(info.get("state", "unknown" if agent else "stopped"))
            if agent is None:
                role = "stopped"
            elif prole in ("leader", "standby_leader", "master", "primary"):
                role = "leader"
            elif prole in ("replica", "sync_standby", "quorum_standby"):
                role = "replica"
            else:
                role = "unknown"
            streaming = role == "replica" and state == "streaming" and pg is not None
            out.append(Member(name, role, state, streaming, agent, pg, m.pg_port, m.api_url))
        return out

    # ------------------------------------------------------------------ control

    def switchover(self, candidate: str | None = None) -> None:
        leader = self.armed_leader()
        if leader is None:
            raise RuntimeError("switchover: no leader")
        body: dict[str, object] = {"leader": leader}
        if candidate:
            body["candidate"] = candidate
        status, resp = http_json(f"{self._m[leader].api_url}/switchover", method="POST", body=body, timeout=90)
        if status != 200:
            raise RuntimeError(f"switchover failed: HTTP {status}: {resp}")

    def start_member(self, name: str) -> None:
        m = self._m[name]
        if m.agent_pid is not None:
            return
        REAPER.reap_once()  # a zombie postmaster would keep postgres from starting
        m.proc = spawn_as_postgres(
            [str(PATRONI_VENV / "bin" / "patroni"), str(m.config)], cwd=m.dir, log_path=m.dir / "patroni.log"
        )

    def stop_member(self, name: str) -> None:
        m = self._m[name]
        stop_process(m.proc, timeout=30)
        m.proc = None

    def agent_pids(self, name: str) -> list[int]:
        pid = self._m[name].agent_pid
        return [pid] if pid and pid_alive(pid) else []

    def logs(self) -> dict[str, Path]:
        out = {name: m.dir / "patroni.log" for name, m in self._m.items()}
        out["etcd"] = self.etcd.dir / "etcd.log"
        return out
