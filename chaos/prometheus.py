"""Metrics during a chaos run: Debian's real Prometheus scrapes every agent and etcd member, and each
fault's window is read back from its HTTP range API into the report folder.

Prometheus runs in the host (root) namespace -- the host's bridge address is never cut, so a
partition never hides a member from it; a SIGSTOPped or killed process shows up as a gap (its
scrapes fail and its series go stale). It listens on 127.0.0.1 on a free port, scrapes every 500 ms
(the agents' loop runs every second: a 1 s scrape would sample the lease at the same phase each
time and draw a flat line) and keeps its TSDB in the cluster's workdir. It runs as the
``prometheus`` OS user when that exists (the Debian package creates it), else as the harness's user.

Per fault, from inject - 10 s to healthy + 10 s (heal + 10 s when it never recovered) at a 0.5 s
step: role, leader, term, lease seconds remaining, replication lag (bytes, seconds), postgres up,
etcd reachable, scrape success, etcd leadership, and the failover duration histogram's count, sum
and buckets, reduced to what this window added per member and phase. Written as
``metrics/<nn>-<fault>.json`` and, with matplotlib, ``plots/<nn>-<fault>.png`` (stacked panels,
vertical lines at inject / heal / healthy).

Nothing here may fail the run: every problem becomes a note in the report (``notes``).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import pwd
import re
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from pgquorum.chaos.cluster import ChaosCluster
from pgquorum.chaos.history import FaultWindow
from pgquorum.chaos.procs import REAPER
from pgquorum.local.ports import free_port
from pgquorum.local.prometheus import DEFAULT_BINARY, PrometheusError, PrometheusServer

SCRAPE_INTERVAL = "500ms"
STEP = 0.5  # seconds between the points of a range query
MARGIN = 10.0  # seconds before the inject and after the healthy instant
RUN_AS = "prometheus"

# Range queries per fault window: name in the JSON -> PromQL. ``role`` keeps only the role each member
# is in (value 1); the failover histogram is reduced per window (``failover`` in the JSON).
QUERIES: dict[str, str] = {
    "role": "pgquorum_role == 1",
    "is_leader": "pgquorum_is_leader",
    "term": "pgquorum_term",
    "lease_seconds_remaining": "pgquorum_lease_seconds_remaining",
    "lag_bytes": "pgquorum_replication_lag_bytes",
    "lag_seconds": "pgquorum_replication_lag_seconds",
    "postgres_up": "pgquorum_postgres_up",
    "dcs_reachable": "pgquorum_dcs_reachable",
    "failover_count": "pgquorum_failover_duration_seconds_count",
    "failover_sum": "pgquorum_failover_duration_seconds_sum",
    "etcd_is_leader": "etcd_server_is_leader",
    "etcd_has_leader": "etcd_server_has_leader",
    "up": "up",
}
BUCKETS_QUERY = "pgquorum_failover_duration_seconds_bucket"

ROLE_COLORS = {
    "leader": "#d62728",
    "replica": "#1f77b4",
    "standby": "#17becf",
    "demoted": "#ff7f0e",
    "witness": "#9467bd",
    "uninitialized": "#bcbd22",
    "stopped": "#7f7f7f",
    "etcd leader": "#8c564b",
    "etcd follower": "#c49c94",
    "etcd no leader": "#000000",
}


# ---------------------------------------------------------------------------- pure: queries and series


def window_range(
    w: FaultWindow, now: float, margin: float = MARGIN, since: float | None = None, until: float | None = None
) -> tuple[float, float]:
    """The span to read for one fault: inject - margin .. healthy (or heal, or inject) + margin, never
    before ``since`` (Prometheus's first scrape, or the previous fault's recovery: its failover is
    not this one's) nor past ``until`` (the next fault's inject) or ``now`` (nothing later yet)."""
    last = _settled(w)
    start = w.start - margin if since is None else min(w.start, max(w.start - margin, since))
    end = min(last + margin, now, math.inf if until is None else until)
    return round(start, 3), round(max(start, end), 3)


def _settled(w: FaultWindow) -> float:
    return w.healthy if w.healthy is not None else w.heal if w.heal is not None else w.start


def spans(
    windows: Sequence[FaultWindow], now: float, margin: float = MARGIN, first_scrape: float | None = None
) -> list[tuple[float, float]]:
    """``window_range`` of every fault of a run, each kept between its neighbours' faults."""
    out: list[tuple[float, float]] = []
    for i, w in enumerate(windows):
        bounds = [t for t in (first_scrape, _settled(windows[i - 1]) if i else None) if t is not None]
        until = windows[i + 1].start if i + 1 < len(windows) else None
        out.append(window_range(w, now, margin, max(bounds) if bounds else None, until))
    return out


def with_gaps(values: Sequence[Sequence[float | None]], step: float) -> tuple[list[float], list[float]]:
    """x and y for a line plot: a NaN where samples are missing (dead, paused, unscraped), so the
    line breaks instead of bridging the gap."""
    xs: list[float] = []
    ys: list[float] = []
    for t, v in values:
        if t is None:
            continue
        if xs and t - xs[-1] > step * 1.5:
            xs.append(xs[-1] + step)
            ys.append(math.nan)
        xs.append(t)
        ys.append(math.nan if v is None else v)
    return xs, ys


def range_url(base: str, query: str, start: float, end: float, step: float) -> str:
    """``GET /api/v1/query_range`` for ``query`` over [start, end] (Unix seconds) every ``step`` s."""
    params = {"query": query, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": f"{step:g}"}
    return f"{base}/api/v1/query_range?{urllib.parse.urlencode(params)}"


def instant_url(base: str, query: str, at: float) -> str:
    """``GET /api/v1/query`` for ``query`` at ``at`` (Unix seconds)."""
    return f"{base}/api/v1/query?{urllib.parse.urlencode({'query': query, 'time': f'{at:.3f}'})}"


def parse_matrix(body: Any, nodes: dict[str, str]) -> list[dict[str, Any]]:
    """A range (or instant) query's answer -> ``[{"node", "labels", "values": [[t, v], ...]}]``.

    ``node`` is the member the series belongs to: the agents' own ``member`` label, else the scrape
    target's ``instance`` mapped through ``nodes`` (``host:port`` -> name). Non-finite values become
    None (JSON has no NaN). Raises ValueError on an answer that is not a successful matrix or vector."""
    if not isinstance(body, dict) or body.get("status") != "success":
        error = body.get("error") if isinstance(body, dict) else None
        raise ValueError(f"prometheus query failed: {error or body!r}"[:300])
    data = body.get("data")
    kind = data.get("resultType") if isinstance(data, dict) else None
    if not isinstance(data, dict) or kind not in ("matrix", "vector") or not isinstance(data.get("result"), list):
        raise ValueError("prometheus answer: data.result is not a matrix or a vector")
    out: list[dict[str, Any]] = []
    for item in data["result"]:
        labels = {str(k): str(v) for k, v in dict(item.get("metric") or {}).items()}
        node = labels.get("member") or nodes.get(labels.get("instance", ""), labels.get("instance", "?"))
        values: list[list[float | None]] = []
        for t, v in (item.get("values") or []) if kind == "matrix" else [item.get("value")]:
            x = float(v)
            values.append([float(t), x if math.isfinite(x) else None])
        out.append({"node": node, "labels": labels, "values": values})
    out.sort(key=lambda s: (s["node"], sorted(s["labels"].items())))
    return out


def join_points(*answers: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Series of several answers (e.g. instant queries at two instants) joined by their labels."""
    joined: dict[tuple[tuple[str, str], ...], dict[str, Any]] = {}
    for answer in answers:
        for s in answer:
            key = tuple(sorted(s["labels"].items()))
            if key in joined:
                joined[key]["values"] = sorted(joined[key]["values"] + s["values"], key=lambda p: p[0])
            else:
                joined[key] = {**s, "values": list(s["values"])}
    return sorted(joined.values(), key=lambda s: (s["node"], sorted(s["labels"].items())))


def counter_increase(values: Sequence[float | None]) -> float:
    """What a counter added over consecutive samples; a drop is a restart (counting from 0 again)."""
    total = 0.0
    prev: float | None = None
    for v in values:
        if v is None:
            continue
        if prev is not None:
            total += v - prev if v >= prev else v
        prev = v
    return total


def _key(s: dict[str, Any]) -> tuple[str, str]:
    return s["node"], s["labels"].get("phase", "")


def failover_summary(
    counts: list[dict[str, Any]], sums: list[dict[str, Any]], buckets: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Per member and phase, the failovers this window observed: count, sum (s), mean (s) and the
    histogram's buckets (``le`` -> observations added). Only pairs with at least one observation."""
    added_sum = {_key(s): counter_increase([v for _, v in s["values"]]) for s in sums}
    per_le: dict[tuple[str, str], dict[str, float]] = {}
    for s in buckets:
        le = s["labels"].get("le", "")
        per_le.setdefault(_key(s), {})[le] = counter_increase([v for _, v in s["values"]])
    out: list[dict[str, Any]] = []
    for s in counts:
        n = counter_increase([v for _, v in s["values"]])
        if n <= 0:
            continue
        k = _key(s)
        total = added_sum.get(k, 0.0)
        out.append(
            {
                "node": k[0],
                "phase": k[1],
                "count": round(n, 3),
                "sum_s": round(total, 4),
                "mean_s": round(total / n, 4),
                "buckets": dict(sorted(per_le.get(k, {}).items(), key=lambda kv: _le_order(kv[0]))),
            }
        )
    out.sort(key=lambda f: (f["node"], f["phase"]))
    return out


def _le_order(le: str) -> float:
    try:
        return float(le)
    except ValueError:
        return math.inf


def file_stem(index: int, fault: str) -> str:
    """``01-kill-member``: the fault's position in the run (from 1) and a file-safe name."""
    return f"{index:02d}-{re.sub(r'[^A-Za-z0-9_.-]+', '_', fault)}"


def segments(values: Sequence[Sequence[float | None]], step: float) -> list[tuple[float, float]]:
    """Runs of consecutive points (each covers ``step`` seconds) as (start, width) pairs."""
    out: list[tuple[float, float]] = []
    for t, v in values:
        if t is None or v is None:
            continue
        if out and t - (out[-1][0] + out[-1][1]) <= step * 0.51:
            out[-1] = (out[-1][0], t + step - out[-1][0])
        else:
            out.append((t, step))
    return out


# ---------------------------------------------------------------------------- plots


def plot_fault(data: dict[str, Any], path: Path) -> None:
    """One PNG for one fault window (``data`` as written to ``metrics/<nn>-<fault>.json``): stacked
    panels sharing the time axis (seconds from the inject) -- role per member (and etcd leadership),
    term, lease seconds remaining, lag bytes, lag seconds -- and the failover phases this window
    measured; vertical lines at inject, heal and healthy."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch
    from matplotlib.ticker import MaxNLocator

    series: dict[str, list[dict[str, Any]]] = data["series"]
    t0 = float(data["inject"])
    step = float(data.get("step", STEP))
    nodes = list(data.get("nodes") or sorted({s["node"] for ss in series.values() for s in ss}))
    fig, axes = plt.subplots(
        6, 1, figsize=(11, 14), gridspec_kw={"height_ratios": [1.6, 1, 1, 1, 1, 0.8]}, layout="constrained"
    )
    timeline = axes[:5]
    for ax in timeline[1:]:
        ax.sharex(timeline[0])
    title = f"{data['index']:02d} {data['fault']}"
    if data.get("target"):
        title += f" on {data['target']}"
    if data.get("detail"):
        detail = str(data["detail"])
        title += f" ({detail if len(detail) <= 70 else detail[:67] + '...'})"  # pause: a list of pids
    fig.suptitle(title, fontsize=12)

    # roles: one band per node, coloured by role; white = no sample (process down, paused, no scrape)
    ax = timeline[0]
    used: dict[str, str] = {}
    bands: list[tuple[str, list[tuple[float, float]], str]] = []
    for s in series.get("role", []):
        role = s["labels"].get("role", "?")
        bands.append((s["node"], segments(s["values"], step), role))
    leaders = {s["node"]: s for s in series.get("etcd_is_leader", [])}
    has_leader = {s["node"]: s for s in series.get("etcd_has_leader", [])}
    for node, s in leaders.items():
        lead = [[t, 1.0] if v == 1 else [t, None] for t, v in s["values"]]
        follow = [[t, 1.0] if v == 0 else [t, None] for t, v in s["values"]]
        hl = {t: v for t, v in has_leader.get(node, {"values": []})["values"]}
        lost = [[t, 1.0] if hl.get(t) == 0 else [t, None] for t, _ in s["values"]]
        bands.append((node, segments(lead, step), "etcd leader"))
        bands.append((node, segments(follow, step), "etcd follower"))
        bands.append((node, segments(lost, step), "etcd no leader"))
    rows = [n for n in nodes if any(b[0] == n for b in bands)] or nodes
    for node, segs, role in bands:
        if node not in rows or not segs:
            continue
        y = len(rows) - 1 - rows.index(node)
        color = ROLE_COLORS.get(role, "#e377c2")
        used[role] = color
        ax.broken_barh([(a - t0, w) for a, w in segs], (y - 0.4, 0.8), facecolors=color)
    ax.set_yticks(range(len(rows)), list(reversed(rows)))
    ax.set_ylim(-0.6, len(rows) - 0.4)
    ax.set_title("role (agents) / leadership (etcd); blank: no sample", fontsize=9, loc="left")

    def lines(ax: Any, name: str, ylabel: str, symlog: bool = False, integer: bool = False) -> None:
        drawn = False
        top, bottom = 0.0, math.inf
        for i, s in enumerate(series.get(name, [])):
            ts, ys = with_gaps(s["values"], step)
            xs = [t - t0 for t in ts]
            if xs:
                # members often share a value (term): the later lines are thinner, so each stays visible
                ax.step(xs, ys, where="post", label=s["node"], linewidth=max(1.0, 3.0 - 0.8 * i))
                drawn = True
                top = max([top, *(y for y in ys if not math.isnan(y))])
                bottom = min([bottom, *(y for y in ys if not math.isnan(y))])
        if symlog:
            linthresh = 1024.0 if name == "lag_bytes" else 0.1
            ax.set_yscale("symlog", linthresh=linthresh)
            ax.set_ylim(-linthresh * 0.3, max(top * 2, linthresh * 10))  # a line at 0 stays visible
        if integer:
            ax.yaxis.set_major_locator(MaxNLocator(integer=True))
            if drawn and math.isfinite(bottom):
                ax.set_ylim(bottom - 0.5, top + 0.5)
        ax.set_ylabel(ylabel, fontsize=8)
        ax.grid(alpha=0.3)
        if drawn:
            ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
        else:
            ax.text(0.5, 0.5, "no samples", transform=ax.transAxes, ha="center", va="center", color="grey")

    lines(timeline[1], "term", "term", integer=True)
    lines(timeline[2], "lease_seconds_remaining", "lease left (s)")
    lines(timeline[3], "lag_bytes", "lag (bytes)", symlog=True)
    lines(timeline[4], "lag_seconds", "lag (s)", symlog=True)
    timeline[4].set_xlabel("seconds from the inject")
    marks = [("inject", data.get("inject"), "red"), ("heal", data.get("heal"), "green")]
    marks.append(("healthy", data.get("healthy"), "blue"))
    for ax in timeline:
        for _, at, color in marks:
            if at is not None:
                ax.axvline(float(at) - t0, color=color, linestyle="--", linewidth=1, label=None)
    handles: list[Any] = [Patch(color=c, label=r) for r, c in used.items()]
    handles += [Line2D([], [], color=c, linestyle="--", label=m) for m, at, c in marks if at is not None]
    timeline[0].legend(
        handles=handles,
        fontsize=7,
        ncols=min(len(handles), 10),
        loc="upper left",
        bbox_to_anchor=(0, -0.08),
        frameon=False,
    )
    timeline[0].set_xlim(float(data["start"]) - t0, float(data["end"]) - t0)

    # the failover histogram, reduced to this window: mean duration per member and phase
    ax = axes[5]
    failovers: list[dict[str, Any]] = data.get("failover") or []
    if failovers:
        labels = [f"{f['node']} {f['phase']}" for f in failovers]
        means = [float(f["mean_s"]) for f in failovers]
        bars = ax.barh(range(len(failovers)), means, color="#2ca02c")
        ax.set_yticks(range(len(failovers)), labels, fontsize=8)
        ax.invert_yaxis()
        for bar, f in zip(bars, failovers, strict=True):
            ax.text(
                bar.get_width(),
                bar.get_y() + bar.get_height() / 2,
                f"  {float(f['mean_s']):.3f} s (n={f['count']:g})",
                va="center",
                fontsize=8,
            )
        ax.set_xlim(0, max(means) * 1.35 or 1)
    else:
        ax.text(0.5, 0.5, "no failover observed in this window", transform=ax.transAxes, ha="center", va="center")
        ax.set_yticks([])
    ax.set_xlabel("failover phase duration (s): pgquorum_failover_duration_seconds, this window", fontsize=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)


# ---------------------------------------------------------------------------- the process and its reads


def get_json(url: str, timeout: float = 10.0) -> Any:
    """A Prometheus API answer as JSON, error answers (400, 422, 503) included."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as exc:  # 400/422/503 carry a JSON error body
        with contextlib.suppress(ValueError, OSError):
            return json.loads(exc.read())
        raise


def _traversable(path: Path) -> bool:
    """Every directory down to ``path`` can be entered by any user (else an unprivileged
    Prometheus could not reach its data directory under it)."""
    p = path.resolve()
    for d in (p, *p.parents):
        try:
            if not d.stat().st_mode & 0o001:
                return False
        except OSError:
            return False
    return True


class RunMetrics:
    """Prometheus for one chaos run: ``start()`` once the cluster is up, ``collect()`` the fault
    windows before the bed goes down, ``stop()``, then ``write()`` the report files. No method
    raises (Ctrl-C aside): problems land in ``notes``."""

    def __init__(
        self,
        cluster: ChaosCluster,
        workdir: Path,
        *,
        enabled: bool = True,
        binary: str = DEFAULT_BINARY,
        say: Callable[[str], None] = print,
    ) -> None:
        self.cluster = cluster
        self.workdir = Path(workdir)
        self.enabled = enabled
        self.binary = binary
        self.say = say
        self.margin = MARGIN
        self.scraping_since: float | None = None  # every target scraped at least once
        self.notes: list[str] = []
        self.server: PrometheusServer | None = None
        self.windows: list[dict[str, Any]] = []
        names = cluster.data + cluster.witnesses
        self.nodes: dict[str, str] = {urllib.parse.urlsplit(cluster.api_url(n)).netloc: n for n in names}
        self.nodes.update({urllib.parse.urlsplit(cluster.etcd_url(e)).netloc: e for e in cluster.etcd})

    def note(self, text: str) -> None:
        self.notes.append(text)
        self.say(f"  {text}")

    @property
    def url(self) -> str | None:
        return self.server.url if self.server is not None and self.server.is_running() else None

    def start(self, timeout: float = 30.0) -> None:
        if not self.enabled:
            self.notes.append("prometheus: off (--no-prometheus): no metrics or plots in this report")
            return
        if not os.access(self.binary, os.X_OK):
            self.note(f"prometheus: not installed ({self.binary} missing: apt-get install prometheus)")
            return
        run_as: str | None = None
        if os.geteuid() == 0 and _traversable(self.workdir):
            with contextlib.suppress(KeyError):
                pwd.getpwnam(RUN_AS)
                run_as = RUN_AS
        agents = [n for n, name in self.nodes.items() if name not in self.cluster.etcd]
        etcd = [n for n, name in self.nodes.items() if name in self.cluster.etcd]
        server = PrometheusServer(
            self.workdir / "prometheus",
            free_port(),
            agents,
            run_as=run_as,
            log_file=self.workdir / "prometheus.log",
            etcd_targets=etcd,
            binary=self.binary,
            scrape_interval=SCRAPE_INTERVAL,
            die_with_parent=True,
        )
        self.server = server  # set first: stop() must reach a process an interrupt left half started
        try:
            server.start(timeout)
        except (PrometheusError, OSError, ValueError, KeyError, subprocess.SubprocessError) as exc:
            self.server = None
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            self.note(f"prometheus: did not start: {first} (log: {server.log_file})")
            return
        if server.pid is not None:
            REAPER.own(server.pid)
        # the first window begins 10 s before the first fault: wait until every target has been scraped
        deadline = time.monotonic() + 10
        want = len(self.nodes)
        while time.monotonic() < deadline:
            with contextlib.suppress(Exception):
                body = get_json(f"{server.url}/api/v1/query?query=count(up%3D%3D1)", timeout=2)
                result = body["data"]["result"]
                if result and int(float(result[0]["value"][1])) >= want:
                    self.scraping_since = time.time()
                    break
            time.sleep(0.25)
        else:
            self.note(f"prometheus: not every target scraped within 10 s of its start (log: {server.log_file})")
        self.say(f"prometheus {server.url} scraping {want} targets every {SCRAPE_INTERVAL}")

    def collect(self, windows: Iterable[FaultWindow], wait_tail: bool = True) -> None:
        """Read every fault window now. ``wait_tail``: wait (at most ``MARGIN`` s) until the last
        window's end has been scraped."""
        if self.server is None:
            return
        ws = list(windows)
        if not ws:
            return
        if wait_tail:
            last = window_range(ws[-1], math.inf, self.margin)[1]
            time.sleep(max(0.0, min(self.margin, last + 1.0 - time.time())))
        if not self.server.is_running():
            self.note(f"prometheus: exited during the run (log: {self.server.log_file}); no series")
            return
        for i, (w, span) in enumerate(zip(ws, spans(ws, time.time(), self.margin, self.scraping_since), strict=True)):
            try:
                self.windows.append(self._read(i + 1, w, span))
            except Exception as exc:
                self.note(f"prometheus: reading the window of {w.name} (#{i + 1}) failed: {exc}")

    def _read(self, index: int, w: FaultWindow, span: tuple[float, float]) -> dict[str, Any]:
        assert self.server is not None
        base = self.server.url
        start, end = span
        series = {
            name: parse_matrix(get_json(range_url(base, q, start, end, STEP)), self.nodes)
            for name, q in QUERIES.items()
        }
        # the buckets only at the window's two ends (20 buckets x phases x members at every step is
        # a lot of JSON for one number each)
        buckets = join_points(
            *(parse_matrix(get_json(instant_url(base, BUCKETS_QUERY, at)), self.nodes) for at in (start, end))
        )
        return {
            "index": index,
            "fault": w.name,
            "target": w.target,
            "detail": w.detail,
            "inject": w.start,
            "heal": w.heal,
            "healthy": w.healthy,
            "start": start,
            "end": end,
            "step": STEP,
            "scrape_interval": SCRAPE_INTERVAL,
            "nodes": [*self.cluster.data, *self.cluster.witnesses, *self.cluster.etcd],
            "queries": {**QUERIES, "failover_buckets": BUCKETS_QUERY},
            "failover": failover_summary(series["failover_count"], series["failover_sum"], buckets),
            "series": series,
        }

    def stop(self) -> None:
        if self.server is not None:
            try:
                self.server.stop()
            except Exception as exc:
                self.note(f"prometheus: stopping it failed: {exc}")

    def write(self, out: Path) -> dict[str, Any]:
        """``metrics/<nn>-<fault>.json`` and ``plots/<nn>-<fault>.png`` per collected window; returns
        what the report lists (relative paths, notes)."""
        files: list[dict[str, Any]] = []
        plots = True
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            plots = False
            self.note("plots: matplotlib not installed (pip install matplotlib); raw series only")
        for data in self.windows:
            stem = file_stem(data["index"], data["fault"])
            entry: dict[str, Any] = {"index": data["index"], "fault": data["fault"], "metrics": None, "plot": None}
            try:
                (out / "metrics").mkdir(parents=True, exist_ok=True)
                (out / "metrics" / f"{stem}.json").write_text(json.dumps(data, indent=None) + "\n")
                entry["metrics"] = f"metrics/{stem}.json"
            except OSError as exc:
                self.note(f"metrics: writing {stem}.json failed: {exc}")
            if plots:
                try:
                    plot_fault(data, out / "plots" / f"{stem}.png")
                    entry["plot"] = f"plots/{stem}.png"
                except Exception as exc:
                    self.note(f"plots: {stem}.png failed: {type(exc).__name__}: {exc}")
            files.append(entry)
        return {
            "prometheus": bool(self.server is not None),
            "scrape_interval": SCRAPE_INTERVAL if self.server is not None else None,
            "step": STEP,
            "files": files,
            "notes": list(self.notes),
        }
