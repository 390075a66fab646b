"""Fault scenarios and the run loop that measures them."""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench import metrics
from bench.metrics import WriteRecord
from bench.pgclient import CREATE_TABLE, RolePoller, Writer, execute, read_present
from bench.system import System

log = logging.getLogger("bench.scenario")


@dataclass
class Options:
    warmup: float = 2.0  # writes before the fault
    settle: float = 3.0  # keep observing after the cluster is writable again, before healing
    interval: float = 0.01  # writer period
    query_timeout: float = 2.0
    connect_timeout: int = 2
    recover_timeout: float = 240.0
    idle_seconds: float = 30.0


@dataclass
class RunResult:
    system: str
    profile: str
    scenario: str
    run: int
    ok: bool = False
    error: str | None = None
    old_leader: str | None = None
    new_leader: str | None = None
    served_by_after: str | None = None  # member that acknowledged the first write after the fault
    fault_t: float = 0.0
    heal_t: float | None = None
    unavailability_s: float | None = None
    unavailability_censored: bool = False
    first_new_ack_s: float | None = None  # fault -> first ack by a member other than the old primary
    last_old_ack_s: float | None = None  # fault -> last ack by the old primary (any writer), before healing
    promotion_s: float | None = None  # fault -> a new primary seen out of recovery (poller, 50 ms)
    attempts: int = 0
    acked: int = 0
    failed: int = 0
    lost: int = 0
    split_brain: int = 0
    in_doubt_present: int = 0  # failed attempts whose row exists anyway (not an error)
    lost_examples: list[dict[str, Any]] = field(default_factory=list)
    split_brain_examples: list[dict[str, Any]] = field(default_factory=list)
    load_before: float = 0.0
    load_after: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# ----------------------------------------------------------------------------- scenarios


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    inject: Callable[[System, str], None]
    failover: bool  # True: the system is expected to move the primary elsewhere
    heal: Callable[[System, str], None] = lambda s, n: None


def _pause(system: System, name: str) -> None:
    system.pause_node(name, system.timing.ttl + 5)


def _switchover(system: System, name: str) -> None:
    system.switchover()


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in [
        Scenario(
            "node-kill",
            "SIGKILL the primary's agent and postgres process group",
            lambda s, n: (s.kill_node(n), None)[1],
            failover=True,
            heal=lambda s, n: s.start_member(n),
        ),
        Scenario(
            "postgres-crash",
            "SIGKILL the primary's postmaster only; its agent stays",
            lambda s, n: (s.kill_postgres(n), None)[1],
            failover=False,
        ),
        Scenario(
            "pause", "SIGSTOP the primary's agent and postgres for ttl + 5 s, then SIGCONT", _pause, failover=True
        ),
        Scenario("switchover", "planned switchover through the system's API", _switchover, failover=True),
        Scenario(
            "etcd-cut",
            "the primary loses etcd (its proxy blackholes)",
            lambda s, n: s.cut_from_etcd(n),
            failover=True,
            heal=lambda s, n: s.heal_etcd(n),
        ),
    ]
}
FAULT_ORDER = ["node-kill", "postgres-crash", "pause", "switchover", "etcd-cut"]
ALL_SCENARIOS = [*FAULT_ORDER, "idle"]


# ----------------------------------------------------------------------------- runner


def prepare(system: System, opts: Options) -> None:
    execute(system.dsn(connect_timeout=opts.connect_timeout), CREATE_TABLE)


def _recovered(records: list[WriteRecord], t_fault: float, old_port: int, failover: bool) -> float | None:
    """Ack time that ends the outage, once the fault has shown (None: not yet)."""
    if failover:
        r = metrics.first_ack_after(records, t_fault, exclude_port=old_port)
        return r.t_ack if r else None
    fails = [x.t_send for x in records if x.t_ack is None and x.t_send >= t_fault]
    if not fails:
        return None
    r = metrics.first_ack_after(records, fails[0])
    return r.t_ack if r else None


def run_once(system: System, scen: Scenario, run_no: int, opts: Options) -> RunResult:
    res = RunResult(system.name, system.profile, scen.name, run_no)
    res.load_before = os.getloadavg()[0]
    old = system.recover(opts.recover_timeout)
    res.old_leader = old
    ports = {m.name: m.pg_port for m in system.members()}
    by_port = {p: n for n, p in ports.items()}
    old_port = ports[old]
    run_id = f"{system.name}-{scen.name}-{run_no}-{int(time.time() * 1000)}"
    main = Writer(
        "main",
        system.dsn(connect_timeout=opts.connect_timeout),
        run_id,
        interval=opts.interval,
        query_timeout=opts.query_timeout,
    )
    stale = Writer(
        "stale",
        system.member_dsn(old, connect_timeout=opts.connect_timeout, read_write=True),
        run_id,
        interval=opts.interval,
        query_timeout=opts.query_timeout,
    )
    pollers = [RolePoller(n, system.member_dsn(n, connect_timeout=1)) for n in ports]
    threads: list[Writer | RolePoller] = [main, stale, *pollers]
    for t in threads:
        t.start()
    injector: threading.Thread | None = None
    inject_error: list[BaseException] = []
    try:
        time.sleep(opts.warmup)
        if not any(r.acked for r in main.snapshot()):
            raise RuntimeError("writer got no ack before the fault")

        def do_inject() -> None:
            try:
                scen.inject(system, old)
            except BaseException as exc:
                inject_error.append(exc)

        system.arm(old)
        res.fault_t = t_fault = time.time()
        log.info("%s run %d: fault on %s (port %d)", scen.name, run_no, old, old_port)
        injector = threading.Thread(target=do_inject, name="inject", daemon=True)
        injector.start()
        limit = t_fault + 3 * system.timing.ttl + 60
        t_rec: float | None = None
        while time.time() < limit:
            if inject_error:
                raise inject_error[0]
            t_rec = _recovered(main.snapshot(), t_fault, old_port, scen.failover)
            if t_rec is not None:
                break
            time.sleep(0.1)
        if t_rec is None:
            log.warning("%s run %d: no recovery within %.0f s", scen.name, run_no, limit - t_fault)
        # let blocking injections (pause, switchover) finish, then observe a little longer
        injector.join(max(0.0, limit - time.time()))
        system.disarm()
        if inject_error:
            raise inject_error[0]
        time.sleep(opts.settle)
        res.heal_t = t_heal = time.time()
        scen.heal(system, old)
        new = system.recover(opts.recover_timeout)
        time.sleep(0.5)
    finally:
        system.disarm()
        for t in threads:
            t.stop()
        for t in threads:
            t.join(10)
        if injector is not None and injector.is_alive():
            injector.join(60)
    res.load_after = os.getloadavg()[0]
    res.new_leader = new
    records = main.snapshot() + stale.snapshot()
    mrec = main.snapshot()
    gap = metrics.longest_gap(mrec, t_fault, t_heal)
    res.unavailability_s = round(gap.seconds, 3)
    res.unavailability_censored = gap.censored
    first_after = metrics.first_ack_after(mrec, t_fault, exclude_port=old_port if scen.failover else None)
    if first_after is not None and first_after.t_ack is not None and first_after.t_ack <= t_heal:
        res.first_new_ack_s = round(first_after.t_ack - t_fault, 3) if scen.failover else None
        res.served_by_after = by_port.get(first_after.port or 0)
    last_old = metrics.last_ack_on(records, old_port, before=t_heal)
    if last_old is not None and last_old.t_ack is not None:
        res.last_old_ack_s = round(last_old.t_ack - t_fault, 3)
    promos = [pt for p in pollers if p.member != old and (pt := p.first_primary_since(t_fault)) is not None]
    promotion_t = min(promos) if promos else None
    if promotion_t is not None:
        res.promotion_s = round(promotion_t - t_fault, 3)
    present = read_present(system.member_dsn(new), run_id)
    lost = metrics.lost_writes(records, present)
    # without a poller sample, the first ack from another server bounds the promotion from above
    sb_t = promotion_t if promotion_t is not None else (first_after.t_ack if first_after and scen.failover else None)
    split = metrics.split_brain_writes(records, old_port, sb_t)
    res.attempts = len(records)
    res.acked = sum(1 for r in records if r.acked)
    res.failed = res.attempts - res.acked
    res.lost = len(lost)
    res.split_brain = len(split)
    res.in_doubt_present = sum(1 for r in records if not r.acked and r.key in present)
    res.lost_examples = [_rec(r, t_fault, by_port) for r in lost[:10]]
    res.split_brain_examples = [_rec(r, t_fault, by_port) for r in split[:10]]
    res.extra["errors"] = _error_histogram(records)
    res.extra["main_connects"] = main.connects
    res.ok = True
    return res


def _rec(r: WriteRecord, t0: float, by_port: dict[int, str]) -> dict[str, Any]:
    return {
        "writer": r.writer,
        "seq": r.seq,
        "sent_s": round(r.t_send - t0, 3),
        "ack_s": round(r.t_ack - t0, 3) if r.t_ack is not None else None,
        "member": by_port.get(r.port or 0),
    }


def _error_histogram(records: list[WriteRecord]) -> dict[str, int]:
    hist: dict[str, int] = {}
    for r in records:
        if r.error:
            key = r.error[:90]
            hist[key] = hist.get(key, 0) + 1
    return dict(sorted(hist.items(), key=lambda kv: -kv[1])[:8])


# ----------------------------------------------------------------------------- idle footprint


def _rss_kb(pid: int) -> int:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def _cpu_ticks(pid: int) -> int:
    with contextlib.suppress(OSError, IndexError, ValueError):
        raw = Path(f"/proc/{pid}/stat").read_text()
        f = raw[raw.rfind(")") + 2 :].split()
        return int(f[11]) + int(f[12])  # utime + stime
    return 0


def run_idle(system: System, run_no: int, opts: Options) -> RunResult:
    """Idle agent footprint: RSS and CPU of each agent process over ``idle_seconds``."""
    res = RunResult(system.name, system.profile, "idle", run_no)
    res.load_before = os.getloadavg()[0]
    res.old_leader = res.new_leader = system.recover(opts.recover_timeout)
    pids = {m.name: system.agent_pids(m.name) for m in system.members()}
    t0 = time.monotonic()
    c0 = {n: sum(_cpu_ticks(p) for p in ps) for n, ps in pids.items()}
    time.sleep(opts.idle_seconds)
    dt = time.monotonic() - t0
    hz = os.sysconf("SC_CLK_TCK")
    per: dict[str, dict[str, float]] = {}
    for n, ps in pids.items():
        cpu = (sum(_cpu_ticks(p) for p in ps) - c0[n]) / hz / dt * 100
        per[n] = {"rss_mb": round(sum(_rss_kb(p) for p in ps) / 1024, 1), "cpu_pct": round(cpu, 2)}
    res.extra["agents"] = per
    res.extra["rss_mb"] = round(sum(v["rss_mb"] for v in per.values()) / max(1, len(per)), 1)
    res.extra["cpu_pct"] = round(sum(v["cpu_pct"] for v in per.values()) / max(1, len(per)), 2)
    res.load_after = os.getloadavg()[0]
    res.ok = True
    return res


def run_scenario(
    system: System, name: str, runs: int, opts: Options, on_result: Callable[[RunResult], None] | None = None
) -> list[RunResult]:
    out: list[RunResult] = []
    for i in range(1, runs + 1):
        try:
            r = run_idle(system, i, opts) if name == "idle" else run_once(system, SCENARIOS[name], i, opts)
        except KeyboardInterrupt:
            raise
        except Exception as exc:
            log.exception("%s run %d failed", name, i)
            r = RunResult(system.name, system.profile, name, i, ok=False, error=f"{type(exc).__name__}: {exc}")
        out.append(r)
        if on_result:
            on_result(r)
    return out
