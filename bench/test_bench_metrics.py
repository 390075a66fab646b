"""Unit tests of the pure parts of the harness (no processes started).

Run: ``python -m pytest bench/test_bench_metrics.py -q`` (collected apart from tests/).
"""

from __future__ import annotations

import pytest

from bench import metrics, report
from bench.cli import _scenarios
from bench.metrics import WriteRecord


def rec(seq: int, t_send: float, t_ack: float | None, port: int | None = 5432, writer: str = "main") -> WriteRecord:
    return WriteRecord(writer, seq, t_send, t_ack, port if t_ack is not None else None)


def steady(start: float, end: float, port: int, step: float = 0.01, first_seq: int = 1) -> list[WriteRecord]:
    out, t, seq = [], start, first_seq
    while t < end - 1e-9:
        out.append(rec(seq, t, t + 0.002, port))
        t += step
        seq += 1
    return out


def test_longest_gap_spans_the_fault() -> None:
    before = steady(0.0, 1.0, 1)  # last ack at 0.992
    fails = [rec(200 + i, 1.0 + i * 0.1, None) for i in range(30)]
    after = steady(4.0, 5.0, 2, first_seq=500)  # first ack at 4.002
    g = metrics.longest_gap(before + fails + after, fault_t=1.0, end_t=5.0)
    assert g.seconds == pytest.approx(4.002 - 0.992)
    assert g.start == pytest.approx(0.992)
    assert not g.censored


def test_gaps_before_the_fault_do_not_count() -> None:
    recs = [rec(1, 0.0, 0.0), rec(2, 5.0, 5.0), *steady(10.0, 12.0, 1, first_seq=3)]
    g = metrics.longest_gap(recs, fault_t=10.0, end_t=12.0)
    # the 5 s gap before the fault is ignored; the gap containing the fault starts at 5.0
    assert g.seconds == pytest.approx(10.002 - 5.0)
    g2 = metrics.longest_gap(recs, fault_t=11.0, end_t=12.0)
    assert g2.seconds < 0.02


def test_censored_when_no_ack_after_the_fault() -> None:
    recs = [*steady(0.0, 1.0, 1), rec(999, 1.5, None)]
    g = metrics.longest_gap(recs, fault_t=1.0, end_t=30.0)
    assert g.censored
    assert g.seconds == pytest.approx(30.0 - 0.992)


def test_unordered_records_are_sorted_by_ack() -> None:
    recs = list(reversed(steady(0.0, 1.0, 1) + steady(3.0, 3.5, 2, first_seq=1000)))
    assert metrics.longest_gap(recs, 0.5, 3.5).seconds == pytest.approx(3.002 - 0.992)


def test_first_and_last_acks() -> None:
    recs = steady(0.0, 1.0, 1) + steady(1.0, 1.3, 1, first_seq=100) + steady(5.0, 6.0, 2, first_seq=200)
    first_new = metrics.first_ack_after(recs, 1.0, exclude_port=1)
    assert first_new is not None and first_new.port == 2 and first_new.t_ack == pytest.approx(5.002)
    last_old = metrics.last_ack_on(recs, 1)
    assert last_old is not None and last_old.t_ack == pytest.approx(1.292)
    assert metrics.last_ack_on(recs, 1, before=1.0) is not None
    assert metrics.first_ack_after(recs, 7.0) is None


def test_lost_writes_counts_only_acknowledged_rows() -> None:
    recs = [rec(1, 0, 0.1), rec(2, 0, 0.2), rec(3, 0, None), rec(4, 0, 0.4, writer="stale")]
    present = {("main", 1), ("main", 3)}  # 3 failed but committed anyway: in doubt, not lost
    lost = metrics.lost_writes(recs, present)
    assert [r.key for r in lost] == [("main", 2), ("stale", 4)]


def test_split_brain_writes_after_promotion_on_old_primary() -> None:
    recs = [rec(1, 0.0, 1.0, 1), rec(2, 1.5, 2.5, 1), rec(3, 2.6, 3.0, 2), rec(4, 3.1, None)]
    sb = metrics.split_brain_writes(recs, old_port=1, promotion_t=2.0)
    assert [r.seq for r in sb] == [2]
    assert metrics.split_brain_writes(recs, old_port=1, promotion_t=None) == []


def test_summarize_and_ratio() -> None:
    s = metrics.summarize([3.0, None, 1.0, 2.0])
    assert (s.n, s.median, s.min, s.max) == (3, 2.0, 1.0, 3.0)
    assert metrics.summarize([]).median is None
    assert metrics.ratio(2.0, 4.0) == 0.5
    assert metrics.ratio(None, 4.0) is None and metrics.ratio(1.0, 0.0) is None


def test_report_summary_and_ratios() -> None:
    def run(system: str, u: float, lost: int = 0) -> dict[str, object]:
        return {
            "system": system,
            "profile": "aggressive",
            "scenario": "node-kill",
            "ok": True,
            "unavailability_s": u,
            "first_new_ack_s": u,
            "last_old_ack_s": None,
            "promotion_s": None,
            "lost": lost,
            "split_brain": 0,
            "unavailability_censored": False,
            "extra": {},
        }

    runs = [run("patroni", 20.0), run("patroni", 19.0, lost=2), run("patroni", 21.0), run("pgquorum", 4.0)]
    summary = report.summarize_runs(runs)
    s = summary[("patroni", "aggressive", "node-kill")]
    assert s["unavailability_s"]["median"] == 20.0 and s["lost"] == 2 and s["lost_per_run"] == [0, 2, 0]
    text = report.ratios(summary, "pgquorum", "patroni")
    assert "0.20x" in text
    assert "node-kill" in report.table(summary) and "node-kill" in report.markdown_table(summary)


def test_scenario_list_parsing() -> None:
    assert _scenarios("all")[0] == "node-kill"
    assert _scenarios("all,idle")[-1] == "idle"
    assert _scenarios("pause, switchover") == ["pause", "switchover"]
    with pytest.raises(SystemExit):
        _scenarios("nope")
