"""``pgquorum chaos``: ``run`` the fault catalogue against a cluster in network namespaces,
``check`` a recorded history again, ``list`` the faults."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pgquorum.chaos.cluster import ClusterSpec
    from pgquorum.chaos.runner import RunOptions


def configure_parser(chaos: argparse.ArgumentParser) -> None:
    sub = chaos.add_subparsers(dest="chaos_command", required=True, parser_class=type(chaos))
    run = sub.add_parser(
        "run",
        help="faults against a 3 etcd + 3 member cluster in network namespaces (root); table + report folder",
    )
    run.add_argument("--scenario", default="smoke", help="all, smoke (default) or a comma-separated list of faults")
    run.add_argument(
        "--duration",
        type=float,
        default=None,
        help="after one pass over the faults, keep injecting random ones of them until this many seconds",
    )
    run.add_argument("--seed", type=int, default=None, help="random seed (default: from the clock; printed)")
    run.add_argument("--hold", type=float, default=None, help="hold every fault this many seconds (default: per fault)")
    run.add_argument("--out", type=Path, default=None, help="report folder (default chaos-results/<time>)")
    run.add_argument("--recovery-bound", type=float, default=90.0, help="seconds to be healthy again after a heal")
    run.add_argument(
        "--system",
        default="pgquorum",
        help="pgquorum (default), patroni, or both comma-separated: one after the other, same faults and seed, "
        "then a comparison table (Patroni from bench/setup_patroni.sh's venv)",
    )
    run.add_argument(
        "--profile",
        default="aggressive",
        help="Patroni's timing: aggressive (ttl 20 / loop_wait 1 / retry_timeout 3, default) or default (30/10/10)",
    )
    run.add_argument(
        "--async", dest="asynchronous", action="store_true", help="asynchronous replication (no quorum commit)"
    )
    run.add_argument("--members", type=int, default=3, help="data members (agent + PostgreSQL), 2-5 (default 3)")
    run.add_argument(
        "--witnesses", type=int, default=0, help="witness members (voting agents without PostgreSQL), 0-3 (default 0)"
    )
    run.add_argument("--keep", action="store_true", help="keep the cluster's data directory under /var/tmp")
    run.add_argument(
        "--no-prometheus",
        dest="prometheus",
        action="store_false",
        help="no Prometheus scraping (no per-fault metrics and plots in the report)",
    )
    run.add_argument("--json", action="store_true", help="print the verdict as JSON instead of the table")
    check = sub.add_parser("check", help="check a recorded history.json again")
    check.add_argument("history", type=Path)
    check.add_argument("--recovery-bound", type=float, default=90.0)
    sub.add_parser("list", help="the fault catalogue")
    probe = sub.add_parser(
        "probe",
        help="write through one DSN (e.g. a -rw Service, from a pod) until a stop file appears; "
        "then check nothing acknowledged was lost and print the report as JSON",
    )
    probe.add_argument("--dsn", required=True, help="libpq connection string, e.g. 'host=db-rw user=postgres'")
    probe.add_argument("--stop-file", type=Path, required=True, help="stop writing once this file exists")
    probe.add_argument("--max-seconds", type=_positive, default=900.0, help="stop after this long anyway (900)")
    probe.add_argument("--interval", type=_positive, default=0.05, help="seconds between writes (0.05)")
    probe.add_argument("--gap", type=_positive, default=1.0, help="report windows without acks longer than this (1)")
    probe.add_argument("--no-transfers", dest="transfers", action="store_false", help="writes only, no bank client")


def run(args: argparse.Namespace) -> int:
    from pgquorum.chaos import faults

    if args.chaos_command == "list":
        for f in faults.CATALOGUE.values():
            print(f"{f.name:<28} {'smoke ' if f.smoke else '      '}{f.description}")
        return 0
    if args.chaos_command == "check":
        return _check(args)
    if args.chaos_command == "probe":
        return _probe(args)
    try:
        return _run(args)
    except KeyboardInterrupt as exc:
        print(f"pgquorum: chaos run interrupted ({exc or 'Ctrl-C'}); the cluster was torn down", file=sys.stderr)
        return 130


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {text!r}")
    return value


def _probe(args: argparse.Namespace) -> int:
    import json

    from pgquorum.chaos.probe import ProbeOptions
    from pgquorum.chaos.probe import run as run_probe

    opts = ProbeOptions(
        dsn=args.dsn,
        stop_file=args.stop_file,
        max_seconds=args.max_seconds,
        write_interval=args.interval,
        transfers=args.transfers,
        gap=args.gap,
    )
    try:
        result = run_probe(opts)
    except RuntimeError as exc:
        print(f"pgquorum chaos probe: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result), flush=True)
    return 0 if not (result["lost"] or result["phantoms"] or result["bank"]) else 1


def _check(args: argparse.Namespace) -> int:
    import json

    from pgquorum.chaos.checker import check
    from pgquorum.chaos.history import History, HistoryError
    from pgquorum.chaos.report import summary_line, table

    try:
        history = History.load(args.history)
    except HistoryError as exc:
        return _usage_error(str(exc))
    verdict = check(history, args.recovery_bound)
    print(table(verdict))
    print(summary_line(verdict))
    for p in verdict.problems:
        print(f"  - {p}")
    if not verdict.ok:
        print(json.dumps(verdict.to_json()["counts"]))
    return 0 if verdict.ok else 1


def _run(args: argparse.Namespace) -> int:
    import json
    import time
    from dataclasses import replace

    from pgquorum.chaos import faults
    from pgquorum.chaos.cluster import ClusterSpec
    from pgquorum.chaos.netns import unavailable_reason
    from pgquorum.chaos.report import summary_line, table
    from pgquorum.chaos.runner import default_out
    from pgquorum.chaos.runner import run as run_chaos

    try:
        selected = faults.select(args.scenario)
    except ValueError as exc:
        return _usage_error(str(exc))
    systems = [s.strip() for s in args.system.split(",") if s.strip()]
    if not systems or len(set(systems)) != len(systems) or any(s not in ("pgquorum", "patroni") for s in systems):
        return _usage_error(f"--system: expected pgquorum, patroni or both, got {args.system!r}")
    if not 2 <= args.members <= 5:
        return _usage_error(f"--members: expected 2 to 5 data members, got {args.members}")
    if not 0 <= args.witnesses <= 3:
        return _usage_error(f"--witnesses: expected 0 to 3 witnesses, got {args.witnesses}")
    if args.witnesses and "patroni" in systems:
        return _usage_error("--witnesses: Patroni has no witness members; run --system pgquorum")
    if "patroni" in systems:
        from pgquorum.chaos.patroni_cluster import PROFILES, patroni_available

        if args.profile not in PROFILES:
            return _usage_error(f"--profile: expected one of {', '.join(PROFILES)}, got {args.profile!r}")
        missing = patroni_available()
        if missing:
            return _usage_error(f"chaos run: {missing}")
    reason = unavailable_reason()
    if reason:
        return _usage_error(f"chaos run: {reason}")
    seed = args.seed if args.seed is not None else int(time.time()) % 100000
    spec = ClusterSpec(members=args.members, witnesses=args.witnesses)
    if args.asynchronous:
        spec = replace(spec, synchronous=None)
    out = args.out or default_out()
    if systems != ["pgquorum"]:
        return _run_systems(args, systems, selected, spec, seed, out)
    opts = _options(args, selected, out, seed, spec)
    say = _interruptible(args)
    say(f"chaos run: seed {seed}, faults {', '.join(f.name for f in selected)}, report in {out}")
    result = run_chaos(opts, say=say)
    if args.json:
        print(json.dumps(result.verdict.to_json(), indent=1))
    else:
        print()
        print(table(result.verdict))
        print()
        print(summary_line(result.verdict))
        for p in result.verdict.problems:
            print(f"  - {p}")
        print(f"report: {out / 'report.md'}  (history: {out / 'history.json'})")
    return 0 if result.verdict.ok else 1


def _usage_error(message: str) -> int:
    print(f"pgquorum: {message}", file=sys.stderr)
    return 2


def _options(
    args: argparse.Namespace, selected: list[Any], out: Path, seed: int, cluster: ClusterSpec, system: str = "pgquorum"
) -> RunOptions:
    """The runner's options from the command line (``RunOptions``)."""
    from pgquorum.chaos.runner import RunOptions

    return RunOptions(
        faults=selected,
        out=out,
        seed=seed,
        duration=args.duration,
        hold=args.hold,
        keep=args.keep,
        prometheus=args.prometheus,
        recovery_bound=args.recovery_bound,
        cluster=cluster,
        system=system,
    )


def _interruptible(args: argparse.Namespace) -> Callable[[str], None]:
    """SIGTERM and SIGHUP end a run like Ctrl-C; returns how progress is said (on stderr when stdout
    carries the JSON verdict)."""
    import signal

    def interrupted(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")  # the runner's finally tears the cluster down

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, interrupted)
    return (lambda s: print(s, file=sys.stderr, flush=True)) if args.json else print


def _run_systems(
    args: argparse.Namespace, systems: list[str], selected: list[Any], spec: Any, seed: int, out: Path
) -> int:
    """Each system on a fresh bed, one after the other, same faults and seed; reports in
    ``out/<system>/``, the comparison in ``out/comparison.md``."""
    import json

    from pgquorum.chaos.checker import Verdict
    from pgquorum.chaos.history import History
    from pgquorum.chaos.patroni_cluster import patroni_spec
    from pgquorum.chaos.report import comparison, summary_line, table
    from pgquorum.chaos.runner import run as run_chaos

    say = _interruptible(args)
    runs: dict[str, tuple[History, Verdict]] = {}
    for system in systems:
        cluster = patroni_spec(args.profile, spec) if system == "patroni" else spec
        label = f"{system} ({args.profile} profile)" if system == "patroni" else system
        say(f"chaos run [{label}]: seed {seed}, faults {', '.join(f.name for f in selected)}, report in {out / system}")
        opts = _options(args, selected, out / system, seed, cluster, system)
        result = run_chaos(opts, say=say)
        runs[system] = (result.history, result.verdict)
        if not args.json:
            print(f"\n== {label}\n{table(result.verdict)}\n{summary_line(result.verdict)}")
            for p in result.verdict.problems:
                print(f"  - {p}")
    text = comparison(runs)
    out.mkdir(parents=True, exist_ok=True)
    (out / "comparison.md").write_text(
        f"# chaos: {', '.join(systems)} (seed {seed}, Patroni profile {args.profile})\n\n"
        f"Command: `pgquorum {' '.join(sys.argv[1:])}`\n\n{text}\n"
    )
    if args.json:
        print(json.dumps({s: v.to_json() for s, (_h, v) in runs.items()}, indent=1))
    else:
        print(f"\n== comparison (seed {seed})\n{text}\nreports: {out}/<system>/report.md, {out / 'comparison.md'}")
    return 0 if all(v.ok for _h, v in runs.values()) else 1
