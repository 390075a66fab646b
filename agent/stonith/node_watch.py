"""The deferred out-of-service taint: after a fence that found the old leader's node still Ready,
watch that node and taint it once Kubernetes sees it down.

Why deferred: the taint is for a node that is down, and the node controller marks a node that stopped
reporting ``Ready=Unknown`` only after its grace period (``--node-monitor-grace-period``, 50 s by
default), while a failover takes a few seconds. So at fence time a cut-off node is nearly always
still Ready, and tainting it then would evict every pod of a node that may be healthy (a pod killed
on a working node looks the same from here). The watch waits for the node controller's verdict:

- the node turns not Ready (``False`` or ``Unknown``) within ``taint_wait``: taint it;
- the old leader's member is Ready again on that node (its pod came back: the node works): stop;
- the node is gone, or ``taint_wait`` passes with the node Ready: stop without a taint.

``next_step`` decides from plain data (the node and pod objects as the apiserver returns them, and
the time); ``NodeWatch`` is the thin executor on a thread of its own, one per node at a time.
Removing the taint stays with the operator of the cluster, as Kubernetes documents for it: only a
person (or a node lifecycle tool) knows the node was really repaired.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from pgquorum.agent.clock import Clock

log = logging.getLogger("pgquorum.stonith")


class Step(StrEnum):
    TAINT = "taint"
    WAIT = "wait"
    STOP = "stop"


def node_ready(node: Mapping[str, Any]) -> bool:
    """The node's kubelet reports it Ready (condition ``Ready`` is ``True``)."""
    conditions = (node.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def pod_ready_on(pod: Mapping[str, Any] | None, node: str) -> bool:
    """``pod`` runs on ``node`` and its ``Ready`` condition is ``True``."""
    if pod is None or (pod.get("spec") or {}).get("nodeName") != node:
        return False
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


@dataclass(frozen=True)
class Observed:
    """One look at the apiserver: the node (None: not found) and the old leader's pod (None: none)."""

    node: Mapping[str, Any] | None
    pod: Mapping[str, Any] | None


def next_step(observed: Observed, node: str, now: float, deadline: float) -> tuple[Step, str]:
    """What the watch does next, and why (one line for the log)."""
    if observed.node is None:
        return Step.STOP, f"node {node} is gone: nothing to taint"
    if not node_ready(observed.node):
        return Step.TAINT, f"node {node} is not Ready any more"
    if pod_ready_on(observed.pod, node):
        return Step.STOP, f"the old leader's pod is Ready again on node {node}: the node works, no taint"
    if now >= deadline:
        return Step.STOP, f"node {node} stayed Ready: not tainted"
    return Step.WAIT, f"node {node} still Ready"


_running: dict[str, NodeWatch] = {}
_lock = threading.Lock()


class NodeWatch:
    """Polls ``observe`` every ``poll`` seconds until ``next_step`` says taint (then calls ``taint``)
    or stop. API errors are logged and retried at the next poll, up to the deadline."""

    def __init__(
        self,
        node: str,
        wait: float,
        poll: float,
        observe: Callable[[], Observed],
        taint: Callable[[], str],
        clock: Clock,
        context: Mapping[str, object],
    ) -> None:
        self.node = node
        self.deadline = clock.monotonic() + wait
        self.poll = poll
        self._observe = observe
        self._taint = taint
        self._clock = clock
        self._context = dict(context)
        self.outcome: str | None = None  # the last line it logged, once finished
        self.stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"taint-watch-{node}", daemon=True)

    def _log(self, level: int, message: str, event: str) -> None:
        log.log(level, message, extra={"event": event, "node": self.node, "reason": message, **self._context})

    def _run(self) -> None:
        try:
            while not self.stopped.wait(self.poll):  # first look one poll after the fence saw it Ready
                try:
                    step, why = next_step(self._observe(), self.node, self._clock.monotonic(), self.deadline)
                    if step is Step.TAINT:
                        why = f"{why}: {self._taint()}"
                except Exception as exc:  # an API error: try again at the next poll, until the deadline
                    if self._clock.monotonic() < self.deadline:
                        self._log(logging.WARNING, f"node {self.node}: {exc}; retrying", "stonith_taint_retry")
                        continue
                    step, why = Step.STOP, f"node {self.node}: gave up after an error: {exc}"
                if step is not Step.WAIT:
                    self.outcome = why
                    self._log(logging.INFO, why, "stonith_taint")
                    return
        finally:
            with _lock:
                if _running.get(self.node) is self:
                    del _running[self.node]

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)


def start(watch: NodeWatch) -> bool:
    """Start ``watch`` unless one already watches its node (two fences of the same node in a row)."""
    with _lock:
        if watch.node in _running:
            return False
        _running[watch.node] = watch
    watch._thread.start()
    return True


def stop_all(timeout: float = 5.0) -> None:
    """Stop every watch (the agent shutting down; tests): no taint after this returns."""
    with _lock:
        watches = list(_running.values())
    for watch in watches:
        watch.stopped.set()
    for watch in watches:
        watch.join(timeout)
