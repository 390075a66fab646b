"""``pgquorum chaos list|check`` and argument errors of ``chaos run`` (no cluster needed), the
fault selection, and the report's table and markdown from a synthetic history."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pgquorum.chaos.checker import check
from pgquorum.chaos.faults import CATALOGUE, SMOKE, select
from pgquorum.chaos.history import FaultWindow, FinalState, History, Op, PrimaryInterval
from pgquorum.chaos.report import markdown, table, write_report


def pgquorum(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pgquorum", *args], capture_output=True, text=True, timeout=60)


def history(lost: bool = False) -> History:
    ops = [
        Op("c", i, "write", float(i), "ok", i + 0.01, "n1" if i < 5 else "n2", 1 if i < 5 else 2, f"k{i}")
        for i in range(10)
    ]
    keys = frozenset(o.key for o in ops if o.key and not (lost and o.key == "k3"))
    return History(
        ops,
        [PrimaryInterval("n1", 1, 0.0, 4.5), PrimaryInterval("n2", 2, 4.6, serving=4.7)],
        FinalState(keys, {}, {"a1": 100}, 100),
        [FaultWindow("kill-member", 4.5, 4.8, 4.9, "n1", "SIGKILL agent + postgres")],
        {"seed": 3},
    )


def test_list_names_every_fault() -> None:
    proc = pgquorum("chaos", "list")
    assert proc.returncode == 0, proc.stderr
    for name in CATALOGUE:
        assert name in proc.stdout
    assert proc.stdout.count("smoke") == len(SMOKE)


def test_check_passes_a_clean_history_and_fails_a_lossy_one(tmp_path: Path) -> None:
    good, bad = tmp_path / "good.json", tmp_path / "bad.json"
    history().save(good)
    history(lost=True).save(bad)
    proc = pgquorum("chaos", "check", str(good))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "PASS" in proc.stdout and "kill-member" in proc.stdout
    proc = pgquorum("chaos", "check", str(bad))
    assert proc.returncode == 1
    assert "FAIL" in proc.stdout and "1 lost" in proc.stdout and "missing from the final database" in proc.stdout


def test_check_refuses_a_file_that_is_not_a_history(tmp_path: Path) -> None:
    junk = tmp_path / "junk.json"
    junk.write_text(json.dumps({"hello": 1}))
    proc = pgquorum("chaos", "check", str(junk))
    assert proc.returncode == 2 and "version 1" in proc.stderr and "Traceback" not in proc.stderr


def test_run_refuses_an_unknown_fault() -> None:
    proc = pgquorum("chaos", "run", "--scenario", "kill-member,meteor")
    assert proc.returncode == 2
    assert "unknown fault 'meteor'" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--members", "1"), "--members: expected 2 to 5 data members, got 1"),
        (("--witnesses", "4"), "--witnesses: expected 0 to 3 witnesses, got 4"),
        (("--witnesses", "1", "--system", "pgquorum,patroni"), "Patroni has no witness members"),
    ],
)
def test_run_refuses_bad_member_counts(args: tuple[str, ...], message: str) -> None:
    proc = pgquorum("chaos", "run", *args)
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr


def test_select() -> None:
    assert [f.name for f in select("smoke")] == SMOKE
    assert [f.name for f in select("all")] == list(CATALOGUE)
    assert [f.name for f in select("pause-long, kill-member")] == ["pause-long", "kill-member"]
    with pytest.raises(ValueError, match="at least one"):
        select(" , ")


def test_report_files(tmp_path: Path) -> None:
    h = history(lost=True)
    v = check(h)
    write_report(tmp_path, h, v)
    assert History.load(tmp_path / "history.json").to_json() == h.to_json()
    data = json.loads((tmp_path / "report.json").read_text())
    assert data["verdict"]["counts"]["lost"] == 1 and data["meta"]["seed"] == 3
    text = (tmp_path / "report.md").read_text()
    assert "| kill-member | n1 |" in text and "FAIL" in text and "missing from the final database" in text
    lines = table(v).splitlines()
    assert lines[0].split()[:2] == ["FAULT", "TARGET"] and lines[1].split()[0] == "kill-member"
    assert "began promoting" in markdown(h, v)
