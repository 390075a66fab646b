"""The deferred taint's decision (node_watch.next_step) over plain apiserver objects."""

from __future__ import annotations

from typing import Any

from pgquorum.agent.stonith.node_watch import Observed, Step, next_step


def node(ready: str | None) -> dict[str, Any]:
    conditions = (
        [] if ready is None else [{"type": "MemoryPressure", "status": "False"}, {"type": "Ready", "status": ready}]
    )
    return {"metadata": {"name": "n1"}, "status": {"conditions": conditions}}


def pod(on: str, ready: bool) -> dict[str, Any]:
    return {"spec": {"nodeName": on}, "status": {"conditions": [{"type": "Ready", "status": str(ready)}]}}


def step(observed: Observed, now: float = 10.0, deadline: float = 100.0) -> Step:
    return next_step(observed, "n1", now, deadline)[0]


def test_a_node_not_ready_or_unknown_is_tainted() -> None:
    assert step(Observed(node("False"), None)) is Step.TAINT
    assert step(Observed(node("Unknown"), None)) is Step.TAINT
    # a node with no Ready condition at all is not known to be Ready either
    assert step(Observed(node(None), None)) is Step.TAINT


def test_down_wins_over_the_deadline_and_over_a_stale_ready_pod() -> None:
    # the pod object still says Ready: its kubelet, cut off, never reported otherwise
    assert step(Observed(node("Unknown"), pod("n1", True)), now=200.0) is Step.TAINT


def test_a_ready_node_is_watched_until_the_deadline() -> None:
    assert step(Observed(node("True"), None)) is Step.WAIT
    assert step(Observed(node("True"), pod("n1", False))) is Step.WAIT
    assert step(Observed(node("True"), pod("n2", True))) is Step.WAIT  # back, but elsewhere
    assert step(Observed(node("True"), None), now=100.0) is Step.STOP
    assert next_step(Observed(node("True"), None), "n1", 100.0, 100.0)[1] == "node n1 stayed Ready: not tainted"


def test_the_member_back_and_ready_on_its_node_ends_the_watch() -> None:
    assert step(Observed(node("True"), pod("n1", True))) is Step.STOP


def test_a_deleted_node_ends_the_watch() -> None:
    assert step(Observed(None, None)) is Step.STOP
