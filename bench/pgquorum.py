"""``PgquorumSystem``: the local cluster of ``pgquorum local`` driven through its CLI.

What the driver does:

1. ``pgquorum local up --json``, so pgquorum bootstraps its own tree;
2. for each member, replicas first and the leader last: stop its agent
   (SIGTERM), rewrite its ``agent.yaml`` (``etcd_endpoints`` -> the member's
   proxy, for the etcd-cut scenario; ``timing`` -> the profile), start it again
   with ``pgquorum local start --member X`` (``start`` never rewrites
   ``agent.yaml``; only ``up`` does) and wait for health.  Rolling, because a
   full-cluster restart (``local down`` + ``start``) left pgquorum (2026-11-26)
   unable to fail over: the old primary re-promotes itself to a new timeline on
   restart while the replicas keep reporting the old timeline, so every
   candidate is "not eligible: on timeline 1, the newest is 2".
   ``BENCH_PGQ_REWIRE=0`` skips step 2 (pgquorum's default timing, agents
   straight to etcd, no etcd-cut).

A ``pgquorum local up`` option to set the timing and a per-member etcd
endpoint would make step 2 unnecessary.  Switchover needs ``POST /switchover``
(Bearer token from ``secrets/api-token``); it answered 501 on 2026-11-26.

The ``pgquorum`` executable is ``$BENCH_PGQUORUM`` or the one in the venv that
``scripts/setup.sh`` (re)installs from this checkout (readable by the postgres user).
"""

from __future__ import annotations

import json
import logging
import os
import pwd
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import yaml

from bench.procs import REAPER, http_json, pid_alive, wait_for
from bench.system import Member, System, Timing
from pgquorum.agent.config_render import write_agent_config

log = logging.getLogger("bench.pgquorum")

# pgquorum's own defaults (ttl 3, loop_wait 1, retry_timeout 1, safety_margin 0.5): the targets in
# docs/invariants.md (Targets) are meant for these. "default" mirrors Patroni's default profile for
# a like-for-like run.
PROFILES: dict[str, Timing] = {
    "aggressive": Timing(ttl=3, loop_wait=1, retry_timeout=1),
    "default": Timing(ttl=30, loop_wait=10, retry_timeout=10),
}
SAFETY_MARGIN = {"aggressive": 0.5, "default": 2.0}
_TIMING_KEYS = ("ttl", "loop_wait", "retry_timeout")


def find_pgquorum() -> str:
    """``$BENCH_PGQUORUM``, else the venv ``scripts/setup.sh`` (re)builds from this checkout: the bench
    must measure the code it is run from, not whatever a cached venv last installed."""
    env = os.environ.get("BENCH_PGQUORUM")
    if env:
        return env
    repo = Path(__file__).resolve().parent.parent
    proc = subprocess.run(["bash", str(repo / "scripts" / "setup.sh")], capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        raise RuntimeError(f"scripts/setup.sh failed ({proc.returncode}): {proc.stderr.strip()[-500:]}")
    return str(Path(proc.stdout.strip().splitlines()[-1]) / "bin" / "pgquorum")


class PgquorumSystem(System):
    name = "pgquorum"

    def __init__(self, profile: str = "aggressive", workdir: Path | None = None, keep: bool = False) -> None:
        if profile not in PROFILES:
            raise ValueError(f"unknown profile {profile!r}; choose from {sorted(PROFILES)}")
        super().__init__(profile, PROFILES[profile], workdir, keep)
        self.exe = find_pgquorum()
        self.cluster_dir = self.workdir / "local"
        self.version = self._run(["--version"], check=False).strip() or "unknown"
        self._names: list[str] = []
        self._ports: dict[str, int] = {}
        self._api: dict[str, str] = {}
        self._etcd_port = 0
        # BENCH_PGQ_REWIRE=0: keep the cluster exactly as `local up` made it (pgquorum's default
        # timing, agents straight to etcd: no etcd-cut scenario, no full restart).
        self.rewire = os.environ.get("BENCH_PGQ_REWIRE", "1") != "0"

    # ------------------------------------------------------------------ CLI

    def _run(self, args: list[str], *, check: bool = True, timeout: float = 300) -> str:
        argv = [self.exe, *args]
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
        if check and proc.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.strip()[-500:]}")
        return proc.stdout

    def _local(self, *args: str, timeout: float = 300) -> str:
        return self._run(["local", args[0], "--data-dir", str(self.cluster_dir), *args[1:]], timeout=timeout)

    def status(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self._local("status", "--json", timeout=30))
        return data

    # ------------------------------------------------------------------ lifecycle

    def up(self) -> None:
        st: dict[str, Any] = json.loads(self._local("up", "--json", "--members", "3", "--timeout", "240"))
        self._learn(st)
        if self.rewire:
            # One member at a time, replicas first, the leader last (its graceful stop is a
            # failover): a full-cluster restart is avoided on purpose, see the module docstring.
            leader = st.get("leader")
            for name in sorted(self._names, key=lambda n: n == leader):
                self.proxies.add(name, "127.0.0.1", self._etcd_port)
                self.stop_member(name)
                self._rewrite_config(name)
                self.start_member(name)
                self.wait_healthy(240)
        else:
            self.timing = Timing(**{k: float(v) for k, v in self._yaml_timing().items() if k in _TIMING_KEYS})
        passfile = self.cluster_dir / "secrets" / "pgpass"
        if passfile.exists():
            self.dsn_extra = f"passfile={passfile}"
        self.wait_healthy(240)

    def _learn(self, st: dict[str, Any]) -> None:
        self._names = [m["name"] for m in st["members"]]
        self._ports = {m["name"]: int(m["pg_port"]) for m in st["members"]}
        self._api = {m["name"]: str(m["api_url"]) for m in st["members"]}
        self._etcd_port = int(str(st["etcd"]).rsplit(":", 1)[1])

    def _yaml_timing(self) -> dict[str, Any]:
        cfg = yaml.safe_load((self.cluster_dir / self._names[0] / "agent.yaml").read_text())
        timing: dict[str, Any] = cfg.get("timing") or {}
        return timing

    def _rewrite_config(self, name: str) -> None:
        path = self.cluster_dir / name / "agent.yaml"
        cfg = yaml.safe_load(path.read_text())
        cfg["etcd_endpoints"] = [f"http://127.0.0.1:{self.proxies.port(name)}"]
        t = self.timing
        cfg["timing"] = {
            "ttl": t.ttl,
            "loop_wait": t.loop_wait,
            "retry_timeout": t.retry_timeout,
            "safety_margin": SAFETY_MARGIN[self.profile],
        }
        write_agent_config(path, cfg, owner=pwd.getpwuid(path.stat().st_uid).pw_name)

    def _down(self) -> None:
        if (self.cluster_dir / "cluster.json").exists():
            try:
                self._local("down", *([] if self.keep else ["--destroy"]), timeout=120)
            except (RuntimeError, subprocess.TimeoutExpired) as exc:
                log.warning("pgquorum local down: %s", exc)

    # ------------------------------------------------------------------ inspection

    def members(self) -> list[Member]:
        st = self.status()
        out = []
        for m in st["members"]:
            role = str(m.get("role") or "unknown")
            agent = m.get("agent_pid")
            pg = m.get("postgres_pid")
            norm = "stopped" if not agent else role if role in ("leader", "replica") else "unknown"
            out.append(
                Member(
                    name=m["name"],
                    role=norm,
                    state=str(m.get("state")),
                    streaming=norm == "replica" and bool(pg),
                    agent_pid=int(agent) if agent else None,
                    postgres_pid=int(pg) if pg else None,
                    pg_port=int(m["pg_port"]),
                    api_url=m.get("api_url"),
                )
            )
        return out

    # ------------------------------------------------------------------ control

    def switchover(self, candidate: str | None = None) -> None:
        """``POST /switchover`` on the leader's API (Bearer token from ``secrets/api-token``), waiting."""
        leader = self.armed_leader()
        if leader is None:
            raise RuntimeError("switchover: no leader")
        headers = {}
        token_file = self.cluster_dir / "secrets" / "api-token"
        if token_file.exists():
            headers["Authorization"] = f"Bearer {token_file.read_text().strip()}"
        body = {"candidate": candidate, "wait": True}
        status, resp = http_json(
            f"{self._api[leader]}/switchover", method="POST", body=body, timeout=120, headers=headers
        )
        if status in (404, 405, 501):
            raise NotImplementedError(f"pgquorum REST API has no POST /switchover (HTTP {status})")
        if status not in (200, 202):
            raise RuntimeError(f"switchover failed: HTTP {status}: {resp}")

    def start_member(self, name: str) -> None:
        self._local("start", "--member", name, timeout=60)
        # `local start` detaches the agent; as subreaper we may inherit its orphans
        REAPER.reap_once()

    def stop_member(self, name: str) -> None:
        m = self.member(name)
        if m.agent_pid:
            os.kill(m.agent_pid, signal.SIGTERM)
            try:
                wait_for(f"{name} agent exit", lambda: not pid_alive(m.agent_pid), 30, interval=0.2)
            except TimeoutError:
                os.kill(m.agent_pid, signal.SIGKILL)
        time.sleep(0.2)
