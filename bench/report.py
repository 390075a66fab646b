"""Summaries, tables and ratios of benchmark results."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from bench.metrics import ratio, summarize


def _f(v: float | None, nd: int = 2) -> str:
    return "-" if v is None else f"{v:.{nd}f}"


def summarize_runs(runs: Iterable[dict[str, Any]]) -> dict[tuple[str, str, str], dict[str, Any]]:
    """Group run dicts by (system, profile, scenario) and summarize them."""
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for r in runs:
        groups.setdefault((r["system"], r["profile"], r["scenario"]), []).append(r)
    out: dict[tuple[str, str, str], dict[str, Any]] = {}
    for key, rs in groups.items():
        ok = [r for r in rs if r.get("ok")]
        s: dict[str, Any] = {"runs": len(rs), "ok": len(ok)}
        for fld in ("unavailability_s", "first_new_ack_s", "last_old_ack_s", "promotion_s"):
            sm = summarize([r.get(fld) for r in ok])
            s[fld] = {"median": sm.median, "min": sm.min, "max": sm.max, "n": sm.n}
        s["censored"] = sum(1 for r in ok if r.get("unavailability_censored"))
        s["lost"] = sum(int(r.get("lost", 0)) for r in ok)
        s["split_brain"] = sum(int(r.get("split_brain", 0)) for r in ok)
        s["lost_per_run"] = [int(r.get("lost", 0)) for r in ok]
        s["split_brain_per_run"] = [int(r.get("split_brain", 0)) for r in ok]
        if key[2] == "idle":
            s["rss_mb"] = summarize([r["extra"].get("rss_mb") for r in ok]).median
            s["cpu_pct"] = summarize([r["extra"].get("cpu_pct") for r in ok]).median
        out[key] = s
    return out


def table(summary: dict[tuple[str, str, str], dict[str, Any]]) -> str:
    head = (
        "system",
        "profile",
        "scenario",
        "ok/runs",
        "unavail median s",
        "min..max s",
        "1st new ack s",
        "last old ack s",
        "promoted s",
        "lost",
        "split-brain",
    )
    rows: list[Sequence[str]] = [head]
    idle: list[str] = []
    for (system, profile, scen), s in summary.items():
        if scen == "idle":
            idle.append(
                f"{system} {profile} idle agent: RSS {_f(s.get('rss_mb'), 1)} MB, "
                f"CPU {_f(s.get('cpu_pct'))} % (median of {s['ok']} x per-agent mean)"
            )
            continue
        u = s["unavailability_s"]
        cens = f" ({s['censored']} censored)" if s["censored"] else ""
        rows.append(
            (
                system,
                profile,
                scen,
                f"{s['ok']}/{s['runs']}",
                _f(u["median"]) + cens,
                f"{_f(u['min'])}..{_f(u['max'])}",
                _f(s["first_new_ack_s"]["median"]),
                _f(s["last_old_ack_s"]["median"]) if scen == "etcd-cut" else "-",
                _f(s["promotion_s"]["median"]),
                f"{s['lost']} {s['lost_per_run']}",
                f"{s['split_brain']} {s['split_brain_per_run']}",
            )
        )
    return _render(rows) + ("\n" + "\n".join(idle) if idle else "")


def markdown_table(summary: dict[tuple[str, str, str], dict[str, Any]]) -> str:
    lines = [
        "| scenario | ok/runs | write-unavailability median (s) | min..max (s) | fault → first ack on "
        "new primary, median (s) | fault → new primary out of recovery, median (s) | fault → last ack "
        "on old primary, median (s) | lost writes (per run) | split-brain writes (per run) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for (_system, _profile, scen), s in summary.items():
        if scen == "idle":
            continue
        u = s["unavailability_s"]
        lines.append(
            f"| {scen} | {s['ok']}/{s['runs']} | {_f(u['median'])} | {_f(u['min'])}..{_f(u['max'])} | "
            f"{_f(s['first_new_ack_s']['median'])} | {_f(s['promotion_s']['median'])} | "
            f"{_f(s['last_old_ack_s']['median']) if scen == 'etcd-cut' else '-'} | "
            f"{s['lost']} {s['lost_per_run']} | {s['split_brain']} {s['split_brain_per_run']} |"
        )
    return "\n".join(lines)


def ratios(summary: dict[tuple[str, str, str], dict[str, Any]], ours: str, peer: str) -> str:
    """``ours / peer`` of the medians of each scenario (same profile name when both have it).

    Lower is better.  A ``*`` marks a median that includes censored runs (writes had not
    come back before the observation ended), where the ratio is only a lower bound.
    """
    fields = [("unavailability_s", "unavail"), ("first_new_ack_s", "1st new ack"), ("last_old_ack_s", "last old ack")]
    head = ["scenario", "profile"]
    for _fld, label in fields:
        head += [f"{ours} {label} s", f"{peer} {label} s", "ratio"]
    rows: list[Sequence[str]] = [head]
    for (system, profile, scen), s in summary.items():
        if system != ours or scen == "idle":
            continue
        other = summary.get((peer, profile, scen)) or next(
            (v for (sy, _p, sc), v in summary.items() if sy == peer and sc == scen), None
        )
        if other is None:
            continue
        row = [scen, profile]
        for fld, _label in fields:
            a, b = s[fld]["median"], other[fld]["median"]
            if fld == "last_old_ack_s" and scen != "etcd-cut":
                a = b = None
            r = ratio(a, b)
            star_a = "*" if fld == "unavailability_s" and s["censored"] else ""
            star_b = "*" if fld == "unavailability_s" and other["censored"] else ""
            row += [_f(a) + star_a, _f(b) + star_b, "-" if r is None else f"{r:.2f}x"]
        rows.append(row)
    return _render(rows) + "\n(ratio = ours / peer, lower is better; * = includes censored runs)"


def _render(rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    out = []
    for k, r in enumerate(rows):
        out.append("  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
        if k == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)
