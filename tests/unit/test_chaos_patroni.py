"""The Patroni side of the chaos harness without a cluster: reading Patroni's log into primary
intervals (timelines from /history), the comparison table, and ``--system``/``--profile`` errors."""

from __future__ import annotations

import subprocess
import sys

from pgquorum.chaos.checker import check
from pgquorum.chaos.history import FaultWindow, FinalState, History, Op
from pgquorum.chaos.patroni_cluster import PROFILES, parse_patroni_log, patroni_spec, reigns_from_log
from pgquorum.chaos.report import comparison, old_primary_last_ack

LOG_N1 = """\
2026-11-27 03:11:59,128 INFO: initialized a new cluster
2026-11-27 03:12:00,100 INFO: no action. I am (n1), the leader with the lock
not a log line
2026-11-27 03:13:03,905 INFO: promoted self to leader by acquiring session lock
"""
LOG_N3 = """\
2026-11-27 03:12:30,404 INFO: promoted self to leader by acquiring session lock
2026-11-27 03:13:07,709 INFO: Demoting self (immediate-nolock)
"""
T0 = 1795748400.0  # 2026-11-27 03:00:00 UTC


def test_parse_patroni_log_reads_utc_times_and_skips_other_lines() -> None:
    evs = parse_patroni_log(LOG_N1)
    assert evs[0][2] == "initialized a new cluster"
    assert len(evs) == 3
    assert abs(evs[0][0] - (T0 + 11 * 60 + 59.128)) < 1e-6
    assert evs[0][1] == "INFO"


def test_reigns_take_timelines_from_history_and_deaths_end_them() -> None:
    events = {"n1": parse_patroni_log(LOG_N1), "n3": parse_patroni_log(LOG_N3)}
    history = [[1, 67108864, "no recovery target specified", "2026-11-27T03:12:30+00:00", "n3"]]
    deaths = [(T0 + 12 * 60 + 10.936, "n1", "member")]
    ivs = reigns_from_log(events, history, deaths)
    assert [(i.member, i.term) for i in ivs] == [("n1", 1), ("n3", 2), ("n1", 3)]
    assert ivs[0].end == round(T0 + 12 * 60 + 10.936, 3)
    assert ivs[1].end == round(T0 + 13 * 60 + 7.709, 3)
    assert ivs[2].end is None and ivs[2].serving == ivs[2].start


def test_reigns_match_history_to_the_right_member() -> None:
    # two promotions, but /history says timeline 2 began on n3 and timeline 3 on n1: order by member
    events = {"n1": parse_patroni_log(LOG_N1), "n3": parse_patroni_log(LOG_N3)}
    history = [[1, 1, "r", "t", "n3"], [2, 2, "r", "t", "n1"], [3, 3, "r", "t", "n2"]]
    ivs = reigns_from_log(events, history, [])
    assert {(i.member, i.term) for i in ivs} == {("n1", 1), ("n3", 2), ("n1", 3)}
    # without /history the promotions are numbered in time order
    assert [(i.member, i.term) for i in reigns_from_log(events, [], [])] == [("n1", 1), ("n3", 2), ("n1", 3)]


def test_patroni_spec_profiles() -> None:
    spec = patroni_spec("default")
    assert (spec.timing.ttl, spec.timing.loop_wait, spec.timing.retry_timeout) == (30, 10, 10)
    assert spec.synchronous is None
    assert PROFILES["aggressive"].ttl == 20
    try:
        patroni_spec("fast")
    except ValueError as exc:
        assert "--profile" in str(exc)
    else:
        raise AssertionError("unknown profile accepted")


def _history(split: bool) -> History:
    # n1 primary (term 1) is cut at t=10; n2 promotes at 14 (term 2); n1 acknowledges until 12 (or 16)
    last = 16 if split else 12
    ops = [Op("w", i, "write", float(i), "ok", i + 0.01, "n1", 1, f"a{i}") for i in range(0, last)]
    ops += [Op("w", 100 + i, "write", float(i), "ok", i + 0.01, "n2", 2, f"b{i}") for i in range(14, 30)]
    keys = frozenset(o.key for o in ops if o.key and not (split and o.key in ("a14", "a15")))
    return History(
        ops, [], FinalState(keys, {}, {"a1": 100}, 100), [FaultWindow("partition-primary-etcd", 10.0, 20.0, 25.0, "n1")]
    )


def test_comparison_ratios_and_last_ack() -> None:
    ours, peer = _history(False), _history(True)
    assert old_primary_last_ack(ours, ours.faults[0]) == 1.01  # acked at 11.01
    assert old_primary_last_ack(peer, peer.faults[0]) == 5.01
    text = comparison({"pgquorum": (ours, check(ours, 90)), "patroni": (peer, check(peer, 90))})
    rows = {tuple(c.strip() for c in line.strip("|").split("|"))[1]: line for line in text.splitlines()[2:]}
    assert "| pgquorum | patroni | pgquorum/patroni |" in text.splitlines()[0]
    assert rows["target's last ack, fault -> (s)"].endswith("| 1.01 | 5.01 | 0.20 |")
    assert rows["ack'd lost"].endswith("| 0 | 2 | 0.00 |")
    # a14 was sent before n2's first ack (no interval given): only a15 is a split-brain write
    assert rows["split-brain writes"].endswith("| 0 | 1 | 0.00 |")
    assert text.splitlines()[-1].startswith("| total | ack'd lost / split-brain | 0 / 0 | 2 / 1 |")


def test_cli_rejects_unknown_system_and_profile() -> None:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-m", "pgquorum", "chaos", "run", "--scenario", "kill-member", *args]
        return subprocess.run(argv, capture_output=True, text=True, timeout=60)

    bad = run("--system", "pgquorum,stolon")
    assert bad.returncode == 2 and "--system" in bad.stderr and "Traceback" not in bad.stderr
    bad = run("--system", "patroni", "--profile", "fast")
    assert bad.returncode == 2 and "--profile" in bad.stderr and "Traceback" not in bad.stderr
