"""``pgquorum chaos run --system patroni`` end to end (``-m chaos``, not in the default suite):
Patroni (the venv ``bench/setup_patroni.sh`` builds) on the same bed, one node kill, and a verdict
with recovery. Lost or split-brain writes are findings about Patroni (asynchronous by default),
not failures of this test; a harness that never sees the cluster healthy is."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pgquorum.chaos.netns import unavailable_reason
from pgquorum.chaos.patroni_cluster import patroni_available

REASON = unavailable_reason() or patroni_available()
pytestmark = [pytest.mark.chaos, pytest.mark.skipif(REASON is not None, reason=REASON or "")]
SEED = int(os.environ.get("PGQUORUM_CHAOS_SEED", str(int(time.time()) % 100000)))


@pytest.mark.timeout(600)
def test_patroni_kill_member_verdict(tmp_path: Path) -> None:
    out = tmp_path / "report"
    argv = [sys.executable, "-m", "pgquorum", "chaos", "run", "--system", "patroni", "--scenario", "kill-member"]
    argv += ["--seed", str(SEED), "--out", str(out), "--json"]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=580)
    where = f"seed {SEED}; report {out}; progress:\n{proc.stderr[-4000:]}"
    try:
        verdicts = json.loads(proc.stdout)
    except ValueError:
        raise AssertionError(f"no verdict (exit {proc.returncode}): {proc.stdout[-2000:]}\n{where}") from None
    v = verdicts["patroni"]
    [fault] = v["faults"]
    assert fault["name"] == "kill-member", where
    assert fault["recovered"] and fault["recovery_s"] is not None, where
    # Patroni fails over after its leader key expires: writes stop for about ttl (20 s), not forever
    assert fault["unavailability_s"] is not None and not fault["censored"], where
    assert 5 < fault["unavailability_s"] < 60, where
    assert v["counts"]["write_ok"] > 1000 and v["counts"]["phantoms"] == 0, where
    assert not [p for p in v["problems"] if "aborted" in p or "not healthy" in p], where
    for name in ("patroni/report.md", "patroni/history.json", "patroni/logs/n1-agent.log", "comparison.md"):
        assert (out / name).exists(), name
    meta = json.loads((out / "patroni" / "report.json").read_text())["meta"]
    assert meta["system"] == "patroni" and meta["versions"]["patroni"].startswith("patroni 4"), meta["versions"]
