"""One chaos run: the cluster in namespaces, the workload, the faults one after another, then
healing, quiescence, the final state, the checker and the report.

Schedule: every selected fault once, in the order given; with ``duration`` more faults drawn at
random (seeded) from the selection until that many seconds have passed since the first fault.
Each fault waits for a healthy cluster and flowing writes, then a random 0-2 s (seeded), hits its
target (the primary of that moment unless the fault says otherwise), is held for its ``hold`` (or
the run's), is healed, and the cluster must be healthy again within ``recovery_bound``.
"""

from __future__ import annotations

import contextlib
import os
import platform
import random
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pgquorum.chaos import linearizability
from pgquorum.chaos.checker import Verdict, check
from pgquorum.chaos.cluster import ChaosCluster, ClusterError, ClusterSpec
from pgquorum.chaos.faults import Fault
from pgquorum.chaos.history import FaultWindow, History
from pgquorum.chaos.procs import REAPER
from pgquorum.chaos.prometheus import RunMetrics
from pgquorum.chaos.register import RegisterSpec, RegisterWorkload
from pgquorum.chaos.workload import Workload, WorkloadSpec, digest


@dataclass
class RunOptions:
    faults: list[Fault]
    out: Path
    seed: int = 0
    duration: float | None = None  # keep injecting random faults of the selection until this long
    hold: float | None = None  # hold every fault this long instead of its own default
    workdir: Path | None = None
    keep: bool = False  # keep the cluster's directory (data, logs)
    recovery_bound: float = 90.0
    prometheus: bool = True  # scrape agents and etcd; per-fault series and plots in the report
    warmup: float = 3.0
    settle: float = 3.0
    cluster: ClusterSpec = field(default_factory=ClusterSpec)
    system: str = "pgquorum"  # or "patroni": the same bed, faults and clients (chaos/patroni_cluster.py)
    workload: WorkloadSpec = field(default_factory=WorkloadSpec)
    register: RegisterSpec | None = field(default_factory=RegisterSpec)  # None: no linearizability check


@dataclass
class RunResult:
    history: History
    verdict: Verdict
    out: Path
    errors: list[str]


def _schedule(opts: RunOptions, rng: random.Random, started: Callable[[], float | None]) -> Iterator[Fault]:
    yield from opts.faults
    if opts.duration is None:
        return
    while True:
        t0 = started()
        if t0 is None or time.time() - t0 >= opts.duration:
            return
        yield rng.choice(opts.faults)


def _wait(what: Callable[[], bool], timeout: float, interval: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if what():
            return True
        time.sleep(interval)
    return False


def _one_fault(
    c: ChaosCluster, wl: Workload, fault: Fault, rng: random.Random, opts: RunOptions, say: Callable[[str], None]
) -> FaultWindow:
    leader = c.wait_healthy(opts.recovery_bound)
    since = time.time()
    if not _wait(lambda: wl.acked_since(since) > 0, 20):
        raise ClusterError(f"before {fault.name}: healthy cluster (leader {leader}) but no write acknowledged in 20 s")
    time.sleep(rng.uniform(0.0, 2.0))
    primary = c.leader() or leader
    hold = opts.hold if opts.hold is not None else fault.hold(c.spec.timing)
    start = time.time()
    target, heal = fault.inject(c, primary, rng)
    say(f"  {fault.name}: {target.detail} on {target.name}; holding {hold:g} s")
    time.sleep(hold)
    heal_t = time.time()
    heal()
    c.recover()  # whatever the fault's own heal left (e.g. a member that died meanwhile)
    healthy_t: float | None = None
    try:
        c.wait_healthy(opts.recovery_bound)
        healthy_t = time.time()
        say(f"  {fault.name}: healthy again {healthy_t - heal_t:.1f} s after the heal")
    except ClusterError as exc:
        say(f"  {fault.name}: NOT healthy within {opts.recovery_bound:g} s after the heal: {exc}")
    time.sleep(opts.settle)
    return FaultWindow(
        fault.name,
        round(start, 3),
        round(heal_t, 3),
        None if healthy_t is None else round(healthy_t, 3),
        target.name,
        target.detail,
    )


def _converged(c: ChaosCluster) -> bool:
    try:
        digests = {digest(c.dsn(n)) for n in c.data}
    except Exception:
        return False
    return len(digests) == 1


def _versions(system: str = "pgquorum") -> dict[str, str]:
    out = {"kernel": platform.release(), "python": platform.python_version()}
    if system == "patroni":
        from pgquorum.chaos.patroni_cluster import patroni_version

        out["patroni"] = patroni_version()
    for name, argv in (("etcd", ["etcd", "--version"]), ("postgres", ["pg_config", "--version"])):
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out[name] = subprocess.run(argv, capture_output=True, text=True, timeout=10).stdout.splitlines()[0].strip()
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        repo = Path(__file__).resolve().parent.parent
        out["commit"] = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10
        ).stdout.strip()
    return out


def _copy_logs(c: ChaosCluster, out: Path) -> None:
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    for n in c.data + c.witnesses:
        for src, dst in (
            (c.workdir / n / "agent.log", f"{n}-agent.log"),
            (c.workdir / n / "pgdata.pgquorum" / "postgresql.log", f"{n}-postgresql.log"),
            (c.workdir / n / "pglog" / "postgresql.log", f"{n}-postgresql.log"),  # Patroni bed
        ):
            with contextlib.suppress(OSError):
                shutil.copyfile(src, logs / dst)
    for e in c.etcd:
        with contextlib.suppress(OSError):
            shutil.copyfile(c.workdir / e / "etcd.log", logs / f"{e}-etcd.log")


def make_cluster(system: str, workdir: Path, spec: ClusterSpec) -> ChaosCluster:
    if system == "patroni":
        from pgquorum.chaos.patroni_cluster import PatroniChaosCluster

        return PatroniChaosCluster(workdir, spec)
    if system != "pgquorum":
        raise ValueError(f"--system: unknown system {system!r} (known: pgquorum, patroni)")
    return ChaosCluster(workdir, spec)


def run(opts: RunOptions, say: Callable[[str], None] = print) -> RunResult:
    """Run the faults and return the checked history (also written under ``opts.out``)."""
    from pgquorum.chaos.report import write_report

    REAPER.start()
    opts.out.mkdir(parents=True, exist_ok=True)
    own_workdir = opts.workdir is None
    workdir = opts.workdir or Path(tempfile.mkdtemp(prefix="pgquorum-chaos-", dir="/var/tmp"))
    rng = random.Random(opts.seed)
    c = make_cluster(opts.system, workdir, opts.cluster)
    c.keep_data = opts.keep  # PGDATA is a tmpfs volume: copied to disk at teardown to be kept
    meta: dict[str, Any] = {
        "system": opts.system,
        "seed": opts.seed,
        "faults": [f.name for f in opts.faults],
        "duration": opts.duration,
        "hold": opts.hold,
        "recovery_bound": opts.recovery_bound,
        "timing": asdict(opts.cluster.timing),
        "synchronous": opts.cluster.synchronous,
        "quorum_votes": opts.cluster.quorum_votes,
        "members": opts.cluster.members,
        "etcd_members": opts.cluster.etcd_members,
        "workload": asdict(opts.workload),
        "register": None if opts.register is None else asdict(opts.register),
        "versions": _versions(opts.system),
        "workdir": str(workdir),
    }
    windows: list[FaultWindow] = []
    errors: list[str] = []
    wl: Workload | None = None
    reg: RegisterWorkload | None = None
    history = History([], meta=meta)
    first_fault: list[float] = []
    metrics = RunMetrics(c, workdir, enabled=opts.prometheus, say=say)
    try:
        t0 = time.time()
        leader = c.up()
        say(f"cluster up in {time.time() - t0:.1f} s: leader {leader}; workdir {workdir}")
        metrics.start()
        wl = Workload(
            c.dsn(),
            {n: c.dsn(n) for n in c.data},
            c.member_of_addr,
            run_id=f"s{opts.seed}",
            spec=opts.workload,
            seed=opts.seed,
        )
        wl.setup()
        if opts.register is not None:  # read / write / cas on a few keys, checked by porcupine after the run
            reg = RegisterWorkload(c.dsn(), c.member_of_addr, spec=opts.register, seed=opts.seed)
            reg.setup()
            reg.start()
        wl.start()
        time.sleep(opts.warmup)
        for fault in _schedule(opts, rng, lambda: first_fault[0] if first_fault else None):
            try:
                w = _one_fault(c, wl, fault, rng, opts, say)
            except ClusterError as exc:
                errors.append(f"{fault.name}: {exc}")
                say(f"  {fault.name}: aborted: {exc}")
                c.recover()
                break
            first_fault.append(w.start)
            windows.append(w)
            if w.healthy is None:
                errors.append(f"{fault.name}: cluster not healthy after the heal; remaining faults skipped")
                break
        # quiescence: writes keep flowing a moment on a healthy cluster, then stop, then replicas converge
        with contextlib.suppress(ClusterError):
            c.wait_healthy(opts.recovery_bound)
        time.sleep(opts.settle)
        wl.stop()
        if reg is not None:
            reg.stop()
        if not _wait(lambda: _converged(c), 60, interval=1.0):
            errors.append("the members' data did not converge within 60 s after the run (see the report)")
        leader_now = c.leader()
        final = wl.read_final(c.dsn(leader_now) if leader_now else c.dsn())
        history = History(wl.ops(), c.primary_intervals(), final, windows, meta)
    except BaseException as exc:
        errors.append(f"run aborted: {type(exc).__name__}: {exc}")
        if reg is not None:
            reg.stop()
        if wl is not None:
            wl.stop()
            history = History(wl.ops(), c.primary_intervals() if c.bed.is_up else [], None, windows, meta)
        if isinstance(exc, KeyboardInterrupt):
            raise
    finally:
        meta["ended"] = time.time()
        meta["errors"] = errors
        try:  # read the fault windows before the bed goes down (its tail would show the teardown)
            metrics.collect(windows, wait_tail=not any(e.startswith("run aborted") for e in errors))
        finally:
            metrics.stop()
            _copy_logs(c, opts.out)
            c.down()
            if own_workdir and not opts.keep:
                shutil.rmtree(workdir, ignore_errors=True)
    meta["metrics"] = metrics.write(opts.out)  # notes only: metrics never decide the verdict
    verdict = check(history, opts.recovery_bound)
    if errors:
        verdict.ok = False
        verdict.problems.extend(errors)
    if reg is not None:  # register.json + porcupine; anything but a decided "linearizable" fails the run
        say(f"  {linearizability.record(verdict, reg.ops(), opts.out, reg.spec.check_timeout).describe()}")
    write_report(opts.out, history, verdict)
    return RunResult(history, verdict, opts.out, errors)


def default_out() -> Path:
    base = Path(os.environ.get("PGQUORUM_CHAOS_OUT", "chaos-results"))
    return base / time.strftime("%Y%m%d-%H%M%S")
