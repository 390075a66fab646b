"""The report of a chaos run: a table per fault, the verdict, and the files of the report folder.

Folder::

    report.md      the table, the violations, the counts, the setup (human)
    report.json    the verdict and the run's metadata (machines)
    history.json   the recorded history: ops, primary intervals, final state, fault windows
    logs/          the agents', postgres's and etcd's logs
    metrics/       per fault, the Prometheus series of its window (role, term, lease, lag, failovers)
    plots/         per fault, a PNG of those series (chaos/prometheus.py)
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from pgquorum.chaos.checker import FaultVerdict, Verdict
from pgquorum.chaos.history import FaultWindow, History

HEADER = ("FAULT", "TARGET", "UNAVAILABLE (s)", "ACK'D LOST", "SPLIT-BRAIN", "LATE ACKS", "RECOVERY (s)", "OK")


def _row(f: FaultVerdict) -> tuple[str, ...]:
    unavail = "-" if f.unavailability_s is None else f"{f.unavailability_s:.2f}{'+' if f.censored else ''}"
    recovery = "never" if f.recovery_s is None else f"{f.recovery_s:.1f}"
    ok = "yes" if f.recovered and not f.lost and not f.split_brain else "NO"
    return (f.name, f.target or "-", unavail, str(f.lost), str(f.split_brain), str(f.late_acks), recovery, ok)


def table(verdict: Verdict) -> str:
    rows = [HEADER, *(_row(f) for f in verdict.faults)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(HEADER))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows)


def markdown_table(verdict: Verdict) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(_row(f)) + " |" for f in verdict.faults]
    return "\n".join(lines)


def summary_line(verdict: Verdict) -> str:
    c = verdict.counts
    acked = sum(v for k, v in c.items() if k.endswith("_ok") and not k.startswith("read"))
    return (
        f"{'PASS' if verdict.ok else 'FAIL'}: {c.get('ops', 0)} operations, {acked} acknowledged writes/transfers, "
        f"{c.get('lost', 0)} lost, {c.get('split_brain', 0)} split-brain writes, {c.get('phantoms', 0)} phantoms, "
        f"{c.get('bank_violations', 0)} bank invariant violations" + _linearizable(verdict)
    )


def _linearizable(verdict: Verdict) -> str:
    lin = verdict.linearizability
    if lin is None:
        return ""
    decided = lin.get("linearizable")
    word = "yes" if decided is True else "NO" if decided is False else f"unknown ({lin.get('result')})"
    return f", register linearizable: {word} ({lin.get('ops_checked', 0)} of {lin.get('ops', 0)} ops checked)"


def _fmt_time(t: float | None) -> str:
    return "-" if t is None else time.strftime("%H:%M:%S", time.gmtime(t)) + f".{int((t % 1) * 1000):03d}Z"


def markdown(history: History, verdict: Verdict) -> str:
    meta = history.meta
    out = [
        "# pgquorum chaos run",
        "",
        f"**{summary_line(verdict)}**",
        "",
        markdown_table(verdict),
        "",
        "UNAVAILABLE: longest gap between acknowledgements of any client from the last ack before the fault "
        "until the next fault ('+': writes had not come back). RECOVERY: heal -> one leader and every member "
        "streaming. ACK'D LOST / SPLIT-BRAIN / LATE ACKS: operations sent during that fault's period. "
        "LATE ACKS (informational): acknowledged by the old primary after another member took the leader key, "
        "before that member began promoting; kept by the new primary (else they would count as lost).",
        "",
    ]
    if verdict.problems:
        out += ["## Violations and errors", ""] + [f"- {p}" for p in verdict.problems] + [""]
    if verdict.linearizability is not None:
        lin = verdict.linearizability
        out += ["## Linearizability (register workload, porcupine)", ""]
        for k, v in sorted(lin.get("keys", {}).items()):
            out.append(f"- {k}: {v['result']}, {v['ops']} ops, {v['pending']} pending, {v['seconds']:.2f} s")
        out += [f"- visualization: {Path(p).name}" for p in lin.get("visualizations", [])]
        out += [f"- {lin['error']}"] if lin.get("error") else []
        out += ["- history: register.json (`python -m pgquorum.chaos.linearizability register.json`)", ""]
    out += ["## Faults", "", "| fault | target | what | injected | healed | healthy |", "|---|---|---|---|---|---|"]
    for w in history.faults:
        out.append(
            f"| {w.name} | {w.target or '-'} | {w.detail} | {_fmt_time(w.start)} | {_fmt_time(w.heal)} | "
            f"{_fmt_time(w.healthy)} |"
        )
    out += [
        "",
        "## Primary intervals (agents' logs and cluster history)",
        "",
        "| member | term | took the key | began promoting | ended |",
        "|---|---|---|---|---|",
    ]
    for i in history.intervals:
        out.append(f"| {i.member} | {i.term} | {_fmt_time(i.start)} | {_fmt_time(i.serving)} | {_fmt_time(i.end)} |")
    if verdict.overlaps:
        out += [
            "",
            f"{len(verdict.overlaps)} overlapping primary intervals (informational: a deposed primary "
            "that acknowledges nothing is not a violation; an open end means it died without a log line).",
        ]
    out += ["", "## Counts", "", "```", json.dumps(verdict.counts, indent=1), "```", ""]
    for title, items in (("Lost (examples)", verdict.lost), ("Phantoms (examples)", verdict.phantoms)):
        if items:
            out += [f"## {title}", "", "```", *(json.dumps(i) for i in items), "```", ""]
    if verdict.split_brain:
        out += ["## Split-brain writes (examples)", ""] + [f"- {s.describe()}" for s in verdict.split_brain] + [""]
    if verdict.late_acks:
        out += ["## Late acks (examples; the newer member had taken the key, not yet promoting)", ""]
        out += [f"- {s.describe()}" for s in verdict.late_acks] + [""]
    setup = {
        k: meta.get(k)
        for k in (
            "seed",
            "faults",
            "duration",
            "hold",
            "timing",
            "synchronous",
            "quorum_votes",
            "members",
            "etcd_members",
            "versions",
        )
    }
    out += [
        "## Setup",
        "",
        "```",
        json.dumps(setup, indent=1),
        "```",
        "",
    ]
    return "\n".join(out + metrics_section(meta.get("metrics")))


def metrics_section(metrics: Any) -> list[str]:
    """Links to the per-fault plots and series, and why some are missing (never a verdict)."""
    out = ["## Metrics (Prometheus)", ""]
    if not isinstance(metrics, dict):
        return [*out, "No metrics were recorded for this run.", ""]
    files = [f for f in metrics.get("files") or [] if isinstance(f, dict)]
    if files:
        out += [
            f"Scraped every {metrics.get('scrape_interval')}; each window runs from 10 s before the inject to 10 s "
            "after the cluster was healthy again, within Prometheus's first scrape, the previous fault's recovery "
            "and the next fault.",
            "",
            "| # | fault | plot | series |",
            "|---|---|---|---|",
        ]
        for f in files:
            plot = f"[{f['plot']}]({f['plot']})" if f.get("plot") else "-"
            series = f"[{f['metrics']}]({f['metrics']})" if f.get("metrics") else "-"
            out.append(f"| {f.get('index')} | {f.get('fault')} | {plot} | {series} |")
        out.append("")
    out += [f"- {n}" for n in metrics.get("notes") or []]
    return [*out, ""]


def write_report(out: Path, history: History, verdict: Verdict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    history.save(out / "history.json")
    data: dict[str, Any] = {"meta": history.meta, "verdict": verdict.to_json(), "table": table(verdict)}
    (out / "report.json").write_text(json.dumps(data, indent=1) + "\n")
    (out / "report.md").write_text(markdown(history, verdict))


# ----------------------------------------------------------------------------- systems compared


def old_primary_last_ack(history: History, window: FaultWindow) -> float | None:
    """Seconds from the fault to the last write the fault's target acknowledged before the heal
    (how long a cut or paused primary kept acknowledging); None when it acknowledged none."""
    end = window.heal if window.heal is not None else float("inf")
    acks = [
        o.ack
        for o in history.ops
        if o.acked and o.mutates and o.server == window.target and o.ack is not None and window.start <= o.ack <= end
    ]
    return round(max(acks) - window.start, 3) if acks else None


def _ratio(ours: float | None, peer: float | None) -> str:
    if ours is None or peer is None:
        return "-"
    if peer == 0:
        return "=" if ours == 0 else "inf"
    return f"{ours / peer:.2f}"


def _num(v: float | None, fmt: str = "{:.2f}") -> str:
    return "-" if v is None else fmt.format(v)


def comparison(runs: dict[str, tuple[History, Verdict]], ours: str = "pgquorum", peer: str = "patroni") -> str:
    """Per fault (the first occurrence in each run), each system's figures and ``ours/peer``:
    write unavailability, the target's last acknowledgement between fault and heal (for a primary
    cut from etcd: how long it kept acknowledging), acknowledged writes lost, split-brain writes,
    recovery time; markdown."""
    systems = list(runs)
    header = ["fault", "metric", *systems] + ([f"{ours}/{peer}"] if ours in runs and peer in runs else [])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    per: dict[str, dict[str, tuple[FaultWindow, FaultVerdict]]] = {}
    for s, (h, v) in runs.items():
        for w, f in zip(h.faults, v.faults, strict=False):
            per.setdefault(f.name, {}).setdefault(s, (w, f))
    metrics: list[tuple[str, Any, str]] = [
        ("unavailable (s)", lambda h, w, f: f.unavailability_s, "{:.2f}"),
        ("target's last ack, fault -> (s)", lambda h, w, f: old_primary_last_ack(h, w), "{:.2f}"),
        ("ack'd lost", lambda h, w, f: f.lost, "{:d}"),
        ("split-brain writes", lambda h, w, f: f.split_brain, "{:d}"),
        ("recovery (s)", lambda h, w, f: f.recovery_s, "{:.1f}"),
    ]
    for fault, by_sys in per.items():
        for label, get, fmt in metrics:
            vals = {s: get(runs[s][0], *by_sys[s]) if s in by_sys else None for s in systems}
            row = [fault, label, *(_num(vals[s], fmt) for s in systems)]
            if ours in runs and peer in runs:
                row.append(_ratio(vals[ours], vals[peer]))
            lines.append("| " + " | ".join(row) + " |")
    totals = ["total", "ack'd lost / split-brain"]
    totals += [f"{v.counts.get('lost', 0)} / {v.counts.get('split_brain', 0)}" for _h, v in runs.values()]
    if ours in runs and peer in runs:
        totals.append("")
    lines.append("| " + " | ".join(totals) + " |")
    return "\n".join(lines)
