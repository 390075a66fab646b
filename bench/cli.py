"""``python -m bench run|report ...``"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import importlib
import inspect
import json
import logging
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

from bench import report
from bench.scenarios import ALL_SCENARIOS, FAULT_ORDER, Options, RunResult, prepare, run_scenario
from bench.system import System, install_signal_handlers

log = logging.getLogger("bench")


def load_system(name: str) -> type[System]:
    """The ``System`` subclass named ``name`` in module ``bench.<name>``.

    Adding a system is one file: ``bench/<name>.py`` with a ``System`` subclass
    whose ``name`` attribute is ``<name>`` and whose constructor takes
    ``profile``, ``workdir`` and ``keep``.
    """
    mod = importlib.import_module(f"bench.{name}")
    for obj in vars(mod).values():
        if inspect.isclass(obj) and issubclass(obj, System) and obj is not System and obj.name == name:
            return obj
    raise SystemExit(f"bench.{name} defines no System subclass named {name!r}")


def _scenarios(arg: str) -> list[str]:
    """``all`` (every fault scenario), or a comma-separated list that may contain ``all``."""
    names: list[str] = []
    for s in (x.strip() for x in arg.split(",")):
        for n in FAULT_ORDER if s == "all" else [s] if s else []:
            if n not in names:
                names.append(n)
    bad = [n for n in names if n not in ALL_SCENARIOS]
    if bad or not names:
        raise SystemExit(f"unknown scenario(s) {bad}; choose from {ALL_SCENARIOS} or 'all'")
    return names


def cmd_run(args: argparse.Namespace) -> int:
    install_signal_handlers()
    out = Path(args.out or f"bench/results/{dt.datetime.now():%Y%m%d-%H%M%S}")
    out.mkdir(parents=True, exist_ok=True)
    opts = Options(warmup=args.warmup, settle=args.settle, idle_seconds=args.idle_seconds)
    scenarios = _scenarios(args.scenario)
    doc: dict[str, Any] = {
        "started": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": " ".join(["python -m bench", *sys.argv[1:]]),
        "host": {"nodename": platform.node(), "cpus": os.cpu_count(), "loadavg": os.getloadavg()},
        "options": vars(opts),
        "systems": {},
        "runs": [],
    }
    results_path = out / "results.json"

    def save() -> None:
        doc["summary"] = [
            {"system": k[0], "profile": k[1], "scenario": k[2], **v}
            for k, v in report.summarize_runs(doc["runs"]).items()
        ]
        results_path.write_text(json.dumps(doc, indent=2, default=str))

    def on_result(r: RunResult) -> None:
        doc["runs"].append(r.as_dict())
        tag = "ok" if r.ok else f"FAILED {r.error}"
        if r.scenario == "idle":
            log.info("idle run %d: %s %s", r.run, r.extra.get("agents"), tag)
        else:
            log.info(
                "%s run %d: unavailable %.2f s%s, first new ack %s, last old ack %s, lost %d, "
                "split-brain %d (%s -> %s) %s",
                r.scenario,
                r.run,
                r.unavailability_s or -1,
                " (censored)" if r.unavailability_censored else "",
                r.first_new_ack_s,
                r.last_old_ack_s,
                r.lost,
                r.split_brain,
                r.old_leader,
                r.new_leader,
                tag,
            )
        save()

    for sysname in [s.strip() for s in args.system.split(",")]:
        cls = load_system(sysname)
        system = cls(profile=args.profile, workdir=None, keep=args.keep)  # type: ignore[call-arg]
        t0 = time.time()
        try:
            system.up()
            doc["systems"][sysname] = {
                "profile": args.profile,
                "timing": dataclasses.asdict(system.timing),
                "version": getattr(system, "version", None),
                "workdir": str(system.workdir),
            }
            log.info("%s up in %.1f s", sysname, time.time() - t0)
            prepare(system, opts)
            for scen in scenarios:
                run_scenario(system, scen, args.runs, opts, on_result)
        finally:
            system.down()
    save()
    summary = report.summarize_runs(doc["runs"])
    print()
    print(report.table(summary))
    systems = list(doc["systems"])
    if len(systems) > 1:
        print()
        print(report.ratios(summary, systems[1], systems[0]))
    (out / "table.md").write_text(report.markdown_table(summary) + "\n")
    print(f"\nresults: {results_path}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    runs: list[dict[str, Any]] = []
    for p in args.files:
        runs.extend(json.loads(Path(p).read_text())["runs"])
    summary = report.summarize_runs(runs)
    print(report.markdown_table(summary) if args.markdown else report.table(summary))
    if args.ours and args.peer:
        print()
        print(report.ratios(summary, args.ours, args.peer))
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="start a system, inject faults, measure")
    r.add_argument("--system", default="patroni", help="comma-separated: patroni[,pgquorum]")
    r.add_argument("--profile", default="aggressive", help="timing profile (patroni: aggressive|default)")
    r.add_argument(
        "--scenario",
        default="all",
        help=f"'all' ({','.join(FAULT_ORDER)}) or a comma-separated list of {ALL_SCENARIOS}",
    )
    r.add_argument("--runs", type=int, default=5)
    r.add_argument("--out", default=None, help="results dir (default bench/results/<timestamp>)")
    r.add_argument("--warmup", type=float, default=2.0)
    r.add_argument("--settle", type=float, default=3.0)
    r.add_argument("--idle-seconds", type=float, default=30.0)
    r.add_argument("--keep", action="store_true", help="keep the data dirs (logs) after the run")
    r.add_argument("-v", "--verbose", action="store_true")
    r.set_defaults(fn=cmd_run)
    rep = sub.add_parser("report", help="summarize results.json files (and ratios)")
    rep.add_argument("files", nargs="+")
    rep.add_argument("--markdown", action="store_true")
    rep.add_argument("--ours", default=None)
    rep.add_argument("--peer", default=None)
    rep.set_defaults(fn=cmd_report)
    args = ap.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if getattr(args, "verbose", False) else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        rc: int = args.fn(args)
    except KeyboardInterrupt as exc:  # teardown already ran in the command's finally blocks
        log.error("interrupted (%s); everything started was stopped", exc or "Ctrl-C")
        return 130
    return rc
