"""chaos/prometheus.py without a cluster: the range queries it builds, the answers it parses, the
failover histogram reduced per window, the PNG per fault from a synthetic series dict, and the
report's links and notes."""

from __future__ import annotations

import json
import struct
import urllib.parse
from pathlib import Path
from typing import Any

import pytest

from pgquorum.chaos.checker import check
from pgquorum.chaos.cluster import ChaosCluster
from pgquorum.chaos.history import FaultWindow, History
from pgquorum.chaos.prometheus import (
    QUERIES,
    RunMetrics,
    counter_increase,
    failover_summary,
    file_stem,
    instant_url,
    join_points,
    parse_matrix,
    plot_fault,
    range_url,
    segments,
    spans,
    window_range,
    with_gaps,
)
from pgquorum.chaos.report import markdown, metrics_section

NODES = {"10.77.0.11:8008": "n1", "10.77.0.12:8008": "n2", "10.77.0.14:2379": "e1"}


def matrix(*series: tuple[dict[str, str], list[tuple[float, str]]]) -> dict[str, Any]:
    result = [{"metric": labels, "values": [[t, v] for t, v in values]} for labels, values in series]
    return {"status": "success", "data": {"resultType": "matrix", "result": result}}


def test_window_range_spans_inject_minus_margin_to_healthy_plus_margin_but_not_the_future() -> None:
    w = FaultWindow("kill-member", 1000.0, 1008.0, 1012.5, "n1")
    assert window_range(w, now=2000.0) == (990.0, 1022.5)
    assert window_range(w, now=1015.0) == (990.0, 1015.0)
    never = FaultWindow("isolate-primary", 1000.0, 1013.0, None, "n1")
    assert window_range(never, now=2000.0, margin=5) == (995.0, 1018.0)
    unhealed = FaultWindow("pause-long", 1000.0)
    assert window_range(unhealed, now=1001.0) == (990.0, 1001.0)
    assert window_range(unhealed, now=980.0) == (990.0, 990.0)  # never an end before the start
    # Prometheus began scraping 4 s before the first fault: the window starts there, not earlier
    assert window_range(w, now=2000.0, since=996.0) == (996.0, 1022.5)
    assert window_range(w, now=2000.0, since=900.0) == (990.0, 1022.5)
    assert window_range(w, now=2000.0, since=1003.0) == (1000.0, 1022.5)


def test_spans_keep_each_window_between_its_neighbours_faults() -> None:
    ws = [
        FaultWindow("kill-member", 1000.0, 1008.0, 1012.0),
        FaultWindow("pause-long", 1016.0, 1024.0, 1026.0),  # injected 4 s after the previous recovery
        FaultWindow("isolate-primary", 1050.0, 1063.0, None),  # never healthy again
    ]
    # Prometheus first scraped at 995: the first window starts there; the second may not reach back
    # into the first fault's recovery, nor the first run into the second fault
    assert spans(ws, now=1080.0, first_scrape=995.0) == [(995.0, 1016.0), (1012.0, 1036.0), (1040.0, 1073.0)]
    assert spans(ws, now=1068.0) == [(990.0, 1016.0), (1012.0, 1036.0), (1040.0, 1068.0)]
    assert spans([], now=1.0) == []


def test_range_url_carries_the_query_span_and_step() -> None:
    url = range_url("http://127.0.0.1:9999", "pgquorum_role == 1", 990.0, 1022.5, 0.5)
    split = urllib.parse.urlsplit(url)
    assert split.path == "/api/v1/query_range"
    params = dict(urllib.parse.parse_qsl(split.query))
    assert params == {"query": "pgquorum_role == 1", "start": "990.000", "end": "1022.500", "step": "0.5"}


def test_instant_url_and_a_vector_answer_joined_over_two_instants() -> None:
    url = instant_url("http://127.0.0.1:9999", "pgquorum_failover_duration_seconds_bucket", 1022.5)
    assert dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(url).query)) == {
        "query": "pgquorum_failover_duration_seconds_bucket",
        "time": "1022.500",
    }

    def vector(t: float, n1: str, n2: str | None) -> dict[str, Any]:
        result = [{"metric": {"member": "n1", "le": "1.0"}, "value": [t, n1]}]
        if n2 is not None:
            result.append({"metric": {"member": "n2", "le": "1.0"}, "value": [t, n2]})
        return {"status": "success", "data": {"resultType": "vector", "result": result}}

    joined = join_points(parse_matrix(vector(2.0, "1", "3"), NODES), parse_matrix(vector(1.0, "0", None), NODES))
    assert [(s["node"], s["values"]) for s in joined] == [("n1", [[1.0, 0.0], [2.0, 1.0]]), ("n2", [[2.0, 3.0]])]


def test_queries_cover_role_term_lease_lag_and_the_failover_histogram() -> None:
    for name in ("role", "term", "lease_seconds_remaining", "lag_bytes", "lag_seconds", "failover_count"):
        assert name in QUERIES
    assert QUERIES["term"] == "pgquorum_term"


def test_parse_matrix_names_series_by_member_or_instance_and_drops_nan() -> None:
    body = matrix(
        ({"__name__": "pgquorum_term", "member": "n2", "instance": "10.77.0.12:8008"}, [(1.0, "3"), (1.5, "4")]),
        ({"__name__": "up", "instance": "10.77.0.14:2379", "job": "etcd"}, [(1.0, "1"), (1.5, "NaN")]),
        ({"__name__": "up", "instance": "10.9.9.9:1"}, [(1.0, "0")]),
    )
    out = parse_matrix(body, NODES)
    assert [s["node"] for s in out] == ["10.9.9.9:1", "e1", "n2"]
    e1 = out[1]
    assert e1["values"] == [[1.0, 1.0], [1.5, None]]
    assert out[2]["values"] == [[1.0, 3.0], [1.5, 4.0]] and out[2]["labels"]["member"] == "n2"
    json.dumps(out, allow_nan=False)  # valid JSON: no NaN token


@pytest.mark.parametrize(
    "body",
    [
        {"status": "error", "errorType": "bad_data", "error": "parse error at char 3"},
        {"status": "success", "data": {"resultType": "scalar", "result": [1.0, "1"]}},
        "not json",
    ],
)
def test_parse_matrix_rejects_errors_and_other_result_types(body: Any) -> None:
    with pytest.raises(ValueError, match="prometheus"):
        parse_matrix(body, NODES)


def test_counter_increase_counts_restarts_from_zero_and_skips_gaps() -> None:
    assert counter_increase([]) == 0
    assert counter_increase([2.0, 2.0, 3.0, None, 5.0]) == 3.0
    assert counter_increase([4.0, 5.0, 1.0, 2.0]) == 3.0  # 4->5, restart to 1 (1 new), 1->2


def test_failover_summary_keeps_members_and_phases_that_observed_something() -> None:
    def s(node: str, phase: str, values: list[float], le: str | None = None) -> dict[str, Any]:
        labels = {"member": node, "phase": phase} | ({"le": le} if le else {})
        return {"node": node, "labels": labels, "values": [[float(i), v] for i, v in enumerate(values)]}

    counts = [s("n2", "election", [0, 0, 1]), s("n2", "promotion", [0, 1, 1]), s("n3", "election", [2, 2, 2])]
    sums = [s("n2", "election", [0, 0, 0.8]), s("n2", "promotion", [0, 0.3, 0.3]), s("n3", "election", [5, 5, 5])]
    buckets = [
        s("n2", "election", [0, 0], "0.5"),
        s("n2", "election", [0, 1], "1.0"),
        s("n2", "election", [0, 1], "+Inf"),
        s("n2", "promotion", [0, 1], "0.5"),
    ]
    out = failover_summary(counts, sums, buckets)
    assert [(f["node"], f["phase"]) for f in out] == [("n2", "election"), ("n2", "promotion")]
    election = out[0]
    assert election["count"] == 1 and election["sum_s"] == 0.8 and election["mean_s"] == 0.8
    assert list(election["buckets"]) == ["0.5", "1.0", "+Inf"]
    assert election["buckets"]["1.0"] == 1 and election["buckets"]["0.5"] == 0


def test_with_gaps_breaks_the_line_where_samples_are_missing() -> None:
    xs, ys = with_gaps([[0.0, 1.0], [0.5, None], [1.0, 2.0], [3.0, 2.0]], 0.5)
    assert xs == [0.0, 0.5, 1.0, 1.5, 3.0]
    assert ys[0] == 1.0 and ys[2] == 2.0 and ys[4] == 2.0
    assert ys[1] != ys[1] and ys[3] != ys[3]  # NaN: the gap after 1.0 and the missing value


def test_file_stem_and_segments() -> None:
    assert file_stem(3, "kill-member") == "03-kill-member"
    assert file_stem(12, "a b/c") == "12-a_b_c"
    pts = [[0.0, 1.0], [0.5, 1.0], [1.0, None], [2.0, 1.0], [2.5, 1.0], [3.0, 1.0]]
    assert segments(pts, 0.5) == [(0.0, 1.0), (2.0, 1.5)]


def synthetic_window(index: int, fault: str, inject: float, failover: bool) -> dict[str, Any]:
    """A window as RunMetrics._read writes it: n1 leads until the inject, n2 after ~4 s."""
    step = 0.5
    start, end = inject - 10, inject + 25
    ts = [start + i * step for i in range(int((end - start) / step) + 1)]

    def series(node: str, labels: dict[str, str], f: Any) -> dict[str, Any]:
        return {"node": node, "labels": {"member": node, **labels}, "values": [[t, f(t)] for t in ts]}

    new_leader = inject + 4
    role = [
        series("n1", {"role": "leader"}, lambda t: 1.0 if t < inject else None),
        series("n1", {"role": "replica"}, lambda t: 1.0 if t >= inject + 12 else None),
        series("n2", {"role": "replica"}, lambda t: 1.0 if t < new_leader else None),
        series("n2", {"role": "leader"}, lambda t: 1.0 if t >= new_leader else None),
        series("n3", {"role": "replica"}, lambda t: 1.0),
    ]
    term = [series(n, {}, lambda t: 1.0 if t < new_leader else 2.0) for n in ("n2", "n3")]
    lease = [series("n2", {}, lambda t: 2.5 - (t % 1.0) * 2 if t >= new_leader else 0.0)]
    lag = [series("n3", {}, lambda t: 70000.0 if inject < t < new_leader + 1 else 0.0)]
    etcd = [series("e1", {}, lambda t: 1.0), series("e2", {}, lambda t: 0.0)]
    return {
        "index": index,
        "fault": fault,
        "target": "n1",
        "detail": "SIGKILL agent + postgres",
        "inject": inject,
        "heal": inject + 8,
        "healthy": inject + 14,
        "start": start,
        "end": end,
        "step": step,
        "nodes": ["n1", "n2", "n3", "e1", "e2", "e3"],
        "series": {
            "role": role,
            "term": term,
            "lease_seconds_remaining": lease,
            "lag_bytes": lag,
            "lag_seconds": [series("n3", {}, lambda t: 0.0)],
            "etcd_is_leader": etcd,
            "etcd_has_leader": [series("e1", {}, lambda t: 1.0), series("e2", {}, lambda t: 1.0)],
        },
        "failover": (
            [{"node": "n2", "phase": "election", "count": 1, "sum_s": 0.81, "mean_s": 0.81, "buckets": {}}]
            if failover
            else []
        ),
    }


def png_size(path: Path) -> tuple[int, int]:
    raw = path.read_bytes()
    assert raw[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    assert raw[12:16] == b"IHDR"
    width, height = struct.unpack(">II", raw[16:24])
    return width, height


def test_plot_fault_writes_one_valid_png_per_fault(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    windows = [
        synthetic_window(1, "kill-member", 1_700_000_000.0, failover=True),
        synthetic_window(2, "kill-etcd-quorum", 1_700_000_100.0, failover=False),
    ]
    for w in windows:
        plot_fault(w, tmp_path / "plots" / f"{file_stem(w['index'], w['fault'])}.png")
    pngs = sorted(p.name for p in (tmp_path / "plots").iterdir())
    assert pngs == ["01-kill-member.png", "02-kill-etcd-quorum.png"]
    for name in pngs:
        w, h = png_size(tmp_path / "plots" / name)
        assert w >= 600 and h >= 800, (name, w, h)
        assert (tmp_path / "plots" / name).stat().st_size > 20_000  # drawn panels, not an empty canvas


def test_plot_fault_survives_empty_series(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    w = synthetic_window(1, "pause-long", 1_700_000_000.0, failover=False)
    w["series"] = {name: [] for name in QUERIES}
    w["healthy"] = None
    plot_fault(w, tmp_path / "p.png")
    png_size(tmp_path / "p.png")


def test_write_saves_series_and_plots_and_the_report_links_them(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    m = RunMetrics(ChaosCluster(tmp_path / "bed"), tmp_path / "bed", say=lambda _s: None)
    m.windows = [synthetic_window(1, "kill-member", 1_700_000_000.0, failover=True)]
    m.notes.append("prometheus: not every target scraped within 10 s of its start")
    listed = m.write(tmp_path / "report")
    assert listed["files"] == [
        {
            "index": 1,
            "fault": "kill-member",
            "metrics": "metrics/01-kill-member.json",
            "plot": "plots/01-kill-member.png",
        }
    ]
    saved = json.loads((tmp_path / "report" / "metrics" / "01-kill-member.json").read_text())
    assert saved["series"]["term"] and saved["failover"][0]["mean_s"] == 0.81
    png_size(tmp_path / "report" / "plots" / "01-kill-member.png")
    text = "\n".join(metrics_section(listed))
    assert "[plots/01-kill-member.png](plots/01-kill-member.png)" in text
    assert "[metrics/01-kill-member.json](metrics/01-kill-member.json)" in text
    assert "- prometheus: not every target scraped" in text


def test_missing_prometheus_is_a_note_not_an_error(tmp_path: Path) -> None:
    said: list[str] = []
    m = RunMetrics(ChaosCluster(tmp_path), tmp_path, binary=str(tmp_path / "no-prometheus"), say=said.append)
    m.start()
    m.collect([FaultWindow("kill-member", 1.0, 2.0, 3.0)])
    m.stop()
    listed = m.write(tmp_path / "report")
    assert listed["files"] == [] and listed["prometheus"] is False
    assert listed["notes"] == [
        f"prometheus: not installed ({tmp_path / 'no-prometheus'} missing: apt-get install prometheus)"
    ]
    assert said and "apt-get install prometheus" in said[0]
    off = RunMetrics(ChaosCluster(tmp_path), tmp_path, enabled=False, say=said.append)
    off.start()
    assert off.write(tmp_path / "r2")["notes"] == [
        "prometheus: off (--no-prometheus): no metrics or plots in this report"
    ]


def test_report_markdown_shows_metrics_notes_and_a_run_without_metrics() -> None:
    h = History([], faults=[FaultWindow("kill-member", 1.0, 2.0, 3.0, "n1")], meta={"seed": 1})
    v = check(h, 90)
    assert "No metrics were recorded for this run." in markdown(h, v)
    h.meta["metrics"] = {"files": [], "notes": ["prometheus: not installed (apt-get install prometheus)"]}
    md = markdown(h, v)
    assert "## Metrics (Prometheus)" in md and "- prometheus: not installed (apt-get install prometheus)" in md


def test_no_prometheus_option_turns_scraping_off() -> None:
    import argparse

    from pgquorum.chaos.cli import configure_parser

    parser = argparse.ArgumentParser()
    configure_parser(parser)
    assert parser.parse_args(["run"]).prometheus is True
    assert parser.parse_args(["run", "--no-prometheus"]).prometheus is False
