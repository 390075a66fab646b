"""run_hooks: order, timeouts, the required/best-effort verdict, structured logs and the metrics feed (real scripts)."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from pgquorum.agent.clock import SystemClock
from pgquorum.agent.logs import KeyValueFormatter
from pgquorum.agent.metrics import STONITH_OUTCOMES, AgentMetrics
from pgquorum.agent.stonith import FenceJob, FenceRequest, Outcome, StonithOutcome, parse_hooks, run_hooks

REQ = FenceRequest("main", "pg-a", "pg-b", 9)


@pytest.fixture
def journal(tmp_path: Path) -> Path:
    return tmp_path / "journal"


def step(tmp_path: Path, journal: Path, name: str, code: int = 0, sleep: float = 0.0) -> str:
    """A real script that appends its name to the journal, then sleeps and exits with ``code``."""
    path = tmp_path / name
    path.write_text(f"#!/bin/sh\necho {name} >> {journal}\nsleep {sleep}\nexit {code}\n")
    path.chmod(0o755)
    return str(path)


def ran(journal: Path) -> list[str]:
    return journal.read_text().split() if journal.exists() else []


def test_hooks_run_in_order_one_at_a_time(tmp_path: Path, journal: Path) -> None:
    hooks = parse_hooks(
        [
            {"type": "exec", "name": "first", "command": [step(tmp_path, journal, "one", sleep=0.2)]},
            {"type": "exec", "name": "second", "command": [step(tmp_path, journal, "two")]},
            {"type": "exec", "name": "third", "command": [step(tmp_path, journal, "three")]},
        ]
    )
    outcome = run_hooks(hooks, REQ, SystemClock())
    assert ran(journal) == ["one", "two", "three"]  # "one" sleeps: a parallel run would reorder
    assert [r.hook for r in outcome.results] == ["first", "second", "third"]
    assert outcome.may_promote
    assert outcome.results[0].duration >= 0.2
    assert outcome.duration >= sum(r.duration for r in outcome.results)


def test_best_effort_failures_are_counted_and_do_not_block(tmp_path: Path, journal: Path) -> None:
    hooks = parse_hooks(
        [
            {"type": "exec", "name": "notify", "policy": "best-effort", "command": [step(tmp_path, journal, "n", 1)]},
            {
                "type": "exec",
                "name": "slow",
                "policy": "best-effort",
                "timeout": 0.3,
                "command": [step(tmp_path, journal, "s", sleep=30)],
            },
            {"type": "exec", "name": "fence", "command": [step(tmp_path, journal, "f")]},
        ]
    )
    outcome = run_hooks(hooks, REQ, SystemClock())
    assert [r.outcome for r in outcome.results] == [Outcome.FAILED, Outcome.TIMEOUT, Outcome.OK]
    assert outcome.may_promote
    assert outcome.best_effort_failures == 2
    assert outcome.reason == "old leader pg-a fenced for term 9: 1/3 hooks succeeded, 2 best-effort hook(s) failed"


def test_a_failing_required_hook_blocks_and_stops_the_run(tmp_path: Path, journal: Path) -> None:
    hooks = parse_hooks(
        [
            {"type": "exec", "name": "warn", "policy": "best-effort", "command": [step(tmp_path, journal, "w")]},
            {"type": "exec", "name": "ipmi", "policy": "required", "command": [step(tmp_path, journal, "i", 2)]},
            {"type": "exec", "name": "after", "policy": "best-effort", "command": [step(tmp_path, journal, "a")]},
        ]
    )
    outcome = run_hooks(hooks, REQ, SystemClock())
    assert not outcome.may_promote
    assert [r.hook for r in outcome.blocked_by] == ["ipmi"]
    assert ran(journal) == ["w", "i"]
    assert outcome.results[2].outcome is Outcome.SKIPPED
    assert outcome.results[2].message == "not run: required hook 'ipmi' already blocked the promotion"
    assert outcome.reason.startswith(
        "promotion of pg-b for term 9 blocked: required STONITH hook 'ipmi' (exec) failed: "
    )
    assert "exited with status 2" in outcome.reason


def test_a_required_hook_that_times_out_blocks_within_its_timeout(tmp_path: Path, journal: Path) -> None:
    hooks = parse_hooks([{"type": "exec", "timeout": 0.3, "command": [step(tmp_path, journal, "x", sleep=30)]}])
    started = time.monotonic()
    outcome = run_hooks(hooks, REQ, SystemClock())
    assert time.monotonic() - started < 2
    assert not outcome.may_promote
    assert outcome.blocked_by[0].outcome is Outcome.TIMEOUT


def test_no_hooks_and_self_fencing_need_nothing(tmp_path: Path, journal: Path) -> None:
    empty = run_hooks((), REQ, SystemClock())
    assert empty.may_promote and empty.results == () and empty.reason == "no STONITH hooks configured"
    hooks = parse_hooks([{"type": "exec", "command": [step(tmp_path, journal, "x", 1)]}])
    again = run_hooks(hooks, FenceRequest("main", "pg-b", "pg-b", 10), SystemClock())
    assert again.may_promote and ran(journal) == []
    assert again.results[0].outcome is Outcome.SKIPPED
    assert again.reason == "nothing to fence for term 10: the old leader is this member"


def test_a_hook_can_be_retried_on_the_next_attempt(tmp_path: Path, journal: Path) -> None:
    # Fails the first time, succeeds afterwards: the HA loop simply calls run_hooks again.
    flag = tmp_path / "flag"
    script = tmp_path / "flaky"
    script.write_text(f"#!/bin/sh\nif [ -e {flag} ]; then exit 0; fi\ntouch {flag}\nexit 1\n")
    script.chmod(0o755)
    hooks = parse_hooks([{"type": "exec", "command": [str(script)]}])
    assert not run_hooks(hooks, REQ, SystemClock()).may_promote
    assert run_hooks(hooks, REQ, SystemClock()).may_promote


def test_structured_logs_say_who_which_term_and_why(
    tmp_path: Path, journal: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="pgquorum.stonith")
    hooks = parse_hooks([{"type": "exec", "name": "ipmi", "command": [step(tmp_path, journal, "i", 4)]}])
    run_hooks(hooks, REQ, SystemClock())
    lines = [KeyValueFormatter("pg-b").format(r) for r in caplog.records]
    assert len(lines) == 3
    start, hook, verdict = lines
    assert "event=stonith_start old_leader=pg-a new_leader=pg-b term=9 hooks=ipmi" in start
    assert "ERROR" in hook and "event=stonith_hook hook=ipmi hook_type=exec policy=required outcome=failed" in hook
    assert "reason=" in hook and "exited with status 4" in hook
    assert "ERROR" in verdict and "event=stonith_verdict" in verdict and "may_promote=False" in verdict


def test_the_outcome_feeds_the_stonith_metric(tmp_path: Path, journal: Path) -> None:
    hooks = parse_hooks(
        [
            {"type": "exec", "name": "ok-hook", "command": [step(tmp_path, journal, "a")]},
            {"type": "exec", "name": "soft", "policy": "best-effort", "command": [step(tmp_path, journal, "b", 1)]},
            {"type": "exec", "name": "hard", "timeout": 0.2, "command": [step(tmp_path, journal, "c", sleep=30)]},
            {"type": "exec", "name": "later", "command": [step(tmp_path, journal, "d")]},
        ]
    )
    outcome = run_hooks(hooks, REQ, SystemClock())
    samples = outcome.metric_samples()
    assert samples == (("ok-hook", "success"), ("soft", "failure"), ("hard", "timeout"), ("later", "skipped"))
    assert {o for _, o in samples} <= set(STONITH_OUTCOMES)
    metrics = AgentMetrics("pg-b", "main")
    for hook, result in samples:
        metrics.count_stonith(hook, result)
    text = metrics.render()[0].decode()
    values = {
        (s.labels["hook"], s.labels["outcome"]): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "pgquorum_stonith_results_total"
    }
    assert values == {
        ("ok-hook", "success"): 1,
        ("soft", "failure"): 1,
        ("hard", "timeout"): 1,
        ("later", "skipped"): 1,
    }


def test_as_dict_is_json_for_the_api(tmp_path: Path, journal: Path) -> None:
    hooks = parse_hooks([{"type": "exec", "command": [step(tmp_path, journal, "a")]}])
    outcome: StonithOutcome = run_hooks(hooks, REQ, SystemClock())
    data = json.loads(json.dumps(outcome.as_dict()))
    assert data["may_promote"] is True and data["term"] == 9 and data["old_leader"] == "pg-a"
    assert data["hooks"][0]["outcome"] == "ok" and data["hooks"][0]["policy"] == "required"


def test_a_fence_job_runs_in_the_background_and_is_never_cancelled(tmp_path: Path, journal: Path) -> None:
    hooks = parse_hooks([{"type": "exec", "name": "slow", "command": [step(tmp_path, journal, "s", sleep=0.5)]}])
    started = time.monotonic()
    job = FenceJob(hooks, REQ, SystemClock())
    assert time.monotonic() - started < 0.3  # the HA loop is free to renew its lease meanwhile
    assert not job.done() and job.result() is None
    outcome = job.result(timeout=None)
    assert outcome is not None and outcome.may_promote and job.done()
    assert outcome.request is job.request and ran(journal) == ["s"]
