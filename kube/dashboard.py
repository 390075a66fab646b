"""The chart's Grafana dashboard without Grafana: every panel's PromQL, run against a real
Prometheus over a time range, and the panels drawn to one PNG from the same answers.

Grafana cannot run here, so this is how the dashboard is proven: a panel whose query returns no
series during a run that exercised it (a failover, fencing, STONITH) is a broken panel.
``panels`` reads the dashboard JSON (pure), ``read_panels`` queries, ``render_png`` draws.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pgquorum.chaos.prometheus import with_gaps
from pgquorum.kube.images import source_root
from pgquorum.kube.prometheus import query_range

Obj = dict[str, Any]


def dashboard_path(root: Path | None = None) -> Path:
    return (root or source_root()) / "charts" / "pgquorum" / "files" / "dashboard.json"


@dataclass(frozen=True)
class Panel:
    title: str
    exprs: tuple[str, ...]


def panels(dashboard: Obj, cluster: str = ".+") -> list[Panel]:
    """Each panel's queries with the ``$cluster`` variable set to the regex ``cluster`` (Grafana's
    "All" is ``.+`` for a multi-value variable used with ``=~``)."""
    out = []
    for p in dashboard.get("panels") or []:
        exprs = tuple(
            re.sub(r"\$\{cluster\}|\$cluster\b", cluster, str(t["expr"]))
            for t in p.get("targets") or []
            if t.get("expr")
        )
        if exprs:
            out.append(Panel(str(p.get("title", "?")), exprs))
    return out


@dataclass(frozen=True)
class PanelResult:
    panel: Panel
    series: tuple[Obj, ...]  # every target's series, as query_range returns them

    @property
    def empty(self) -> bool:
        return not self.series


def read_panels(url: str, selected: list[Panel], start: float, end: float, step: float = 1.0) -> list[PanelResult]:
    return [
        PanelResult(p, tuple(s for expr in p.exprs for s in query_range(url, expr, start, end, step))) for p in selected
    ]


def _legend(labels: dict[str, str]) -> str:
    shown = {k: v for k, v in labels.items() if k not in ("__name__", "cluster")}
    return ", ".join(f"{v}" for _, v in sorted(shown.items())) or "value"


def render_png(results: list[PanelResult], path: Path, start: float, step: float = 1.0, title: str = "") -> None:
    """All panels in a grid of two columns, seconds from ``start`` on the x axis."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    rows = max(1, math.ceil(len(results) / 2))
    fig, axes = plt.subplots(rows, 2, figsize=(14, 2.6 * rows), layout="constrained", squeeze=False)
    for ax, r in zip(axes.flat, results, strict=False):
        for s in r.series:
            ts, ys = with_gaps(s["values"], step)
            ax.step([t - start for t in ts], ys, where="post", label=_legend(s["labels"]))
        ax.set_title(r.panel.title + ("  (no series)" if r.empty else ""), fontsize=9, loc="left")
        ax.tick_params(labelsize=7)
        if r.series and len(r.series) <= 8:
            ax.legend(fontsize=6, loc="upper left")
    for ax in list(axes.flat)[len(results) :]:
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=11)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)


def load(root: Path | None = None) -> Obj:
    doc: Obj = json.loads(dashboard_path(root).read_text())
    return doc
