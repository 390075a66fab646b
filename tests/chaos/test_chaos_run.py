"""``pgquorum chaos run`` end to end, as its own process (it becomes a child subreaper; the test
process stays untouched): 3 etcd + 3 data members in network namespaces, quorum commit, the
workload, faults, healing, the checker and the report folder.

The smoke set runs in the default suite (a few faults, about 2-3 minutes); the full catalogue runs
with ``-m chaos``. The seed comes from PGQUORUM_CHAOS_SEED or the clock and is in the failure
message; ``pgquorum chaos run --scenario ... --seed N`` replays the same schedule.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from pgquorum.chaos.faults import CATALOGUE, SMOKE
from pgquorum.chaos.netns import unavailable_reason

REASON = unavailable_reason()
pytestmark = pytest.mark.skipif(REASON is not None, reason=REASON or "")
SEED = int(os.environ.get("PGQUORUM_CHAOS_SEED", str(int(time.time()) % 100000)))


def chaos_run(out: Path, scenario: str, timeout: float, *extra: str) -> tuple[int, dict[str, Any], str]:
    argv = [sys.executable, "-m", "pgquorum", "chaos", "run", "--scenario", scenario, "--seed", str(SEED)]
    argv += ["--out", str(out), "--json", *extra]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    try:
        verdict: dict[str, Any] = json.loads(proc.stdout)
    except ValueError:
        raise AssertionError(
            f"no verdict (exit {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
        ) from None
    return proc.returncode, verdict, proc.stderr


def assert_safe(code: int, verdict: dict[str, Any], log: str, out: Path, faults: list[str]) -> None:
    where = f"seed {SEED}; report {out / 'report.md'}; progress:\n{log[-4000:]}"
    counts = verdict["counts"]
    assert [f["name"] for f in verdict["faults"]] == faults, where
    assert counts["lost"] == 0, f"acknowledged writes lost: {verdict['lost'][:3]}; {where}"
    assert counts["split_brain"] == 0, f"split-brain writes: {verdict['split_brain'][:3]}; {where}"
    assert counts["phantoms"] == 0 and counts["bank_violations"] == 0, f"{verdict['problems']}; {where}"
    assert all(f["recovered"] for f in verdict["faults"]), f"{verdict['problems']}; {where}"
    assert counts["write_ok"] > 1000 and counts["transfer_ok"] > 100 and counts["read_ok"] > 50, where
    assert code == 0 and verdict["ok"], f"{verdict['problems']}; {where}"
    for name in ("report.md", "report.json", "history.json", "logs/n1-agent.log", "logs/e1-etcd.log"):
        assert (out / name).exists(), name
    assert_metrics(out, faults)


def assert_metrics(out: Path, faults: list[str]) -> None:
    """Real Prometheus scraped the run: per fault a PNG and its series, with term and role samples."""
    report = json.loads((out / "report.json").read_text())
    metrics = report["meta"]["metrics"]
    assert [f["fault"] for f in metrics["files"]] == faults, metrics["notes"]
    for f in metrics["files"]:
        assert f["plot"] and (out / f["plot"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", (f, metrics["notes"])
        series = json.loads((out / f["metrics"]).read_text())["series"]
        for name in ("term", "role"):
            assert series[name] and all(s["values"] for s in series[name]), (f["fault"], name)
        assert f["plot"] in (out / "report.md").read_text()


@pytest.mark.timeout(420)
def test_chaos_smoke(tmp_path: Path) -> None:
    """Node kill, postgres crash, a pause longer than ttl, the primary isolated, etcd without
    quorum: no acknowledged write lost, no split-brain, bank invariants hold, healthy again."""
    out = tmp_path / "report"
    code, verdict, log = chaos_run(out, "smoke", 400)
    assert_safe(code, verdict, log, out, SMOKE)
    kill = next(f for f in verdict["faults"] if f["name"] == "kill-member")
    assert kill["unavailability_s"] is not None and not kill["censored"], kill


@pytest.mark.chaos
@pytest.mark.timeout(1800)
def test_chaos_full_catalogue(tmp_path: Path) -> None:
    out = tmp_path / "report"
    code, verdict, log = chaos_run(out, "all", 1750)
    assert_safe(code, verdict, log, out, list(CATALOGUE))
