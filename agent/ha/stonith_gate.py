"""The executor's STONITH step between taking the leader key and promoting (invariant I2).

Hooks may take longer than the lease's ttl, so they run on a thread (``FenceJob``) while the HA loop
keeps renewing; each loop the Promote action asks the gate and promotes only once every ``required``
hook succeeded. A failed run keeps the key (no writes anywhere, a clear alert in the log and metrics)
and is retried: hooks are idempotent by contract.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from pgquorum.agent.clock import Clock
from pgquorum.agent.quorum.votes import Vote
from pgquorum.agent.stonith import FenceJob, FenceRequest, Hook, StonithOutcome

log = logging.getLogger("pgquorum.ha")

RETRY_AFTER = 5.0  # seconds between two runs of the hooks for the same term after a failure


class StonithMetrics(Protocol):
    def count_stonith(self, hook: str, outcome: str) -> None: ...


@dataclass(frozen=True)
class OldLeader:
    name: str
    api_url: str | None = None
    host: str | None = None


def voted_for_us(old: str, me: str, term: int, votes: Iterable[Vote]) -> bool:
    """Did the old leader vote for us in ``term``? A voter refuses while it is itself a writable
    primary, and cannot become one again without winning a term: its vote shows it had stopped
    writes, so fencing it again only removes a voter. (Measured on Kubernetes: deleting such an old
    leader's pod in a rolling update took the new leader's majority of promises away with it, and
    the new leader fenced itself 2.6 s after promoting.)"""
    return any(v.voter == old and v.candidate == me and v.term == term for v in votes)


class StonithGate:
    def __init__(self, hooks: tuple[Hook, ...], cluster: str, me: str, clock: Clock, metrics: StonithMetrics):
        self.hooks = hooks
        self._cluster = cluster
        self._me = me
        self._clock = clock
        self._metrics = metrics
        self._job: FenceJob | None = None
        self._passed_term: int | None = None
        self._failed: tuple[int, float, str] | None = None  # (term, when, reason)

    def blocked_reason(self, term: int) -> str | None:
        """Why the last run for ``term`` refused promotion (None: not blocked)."""
        return self._failed[2] if self._failed and self._failed[0] == term else None

    def may_promote(self, term: int, old: OldLeader | None, wait: float) -> tuple[bool, str]:
        """(True, why) once promotion for ``term`` may go ahead; else (False, what we wait for).

        Waits up to ``wait`` seconds for a running job, which also paces a loop that runs again at once.
        """
        if not self.hooks or old is None or old.name == self._me:
            return True, "no STONITH needed (no hooks, or no other old leader)"
        if self._passed_term == term:
            return True, f"STONITH of {old.name} succeeded for term {term}"
        job = self._job
        if job is None or job.request.term != term:
            if self._failed and self._failed[0] == term and self._clock.monotonic() - self._failed[1] < RETRY_AFTER:
                job = None
            else:
                request = FenceRequest(self._cluster, old.name, self._me, term, old.api_url, old.host)
                job = self._job = FenceJob(self.hooks, request, self._clock)
        if job is None:
            assert self._failed is not None
            time.sleep(wait)
            return False, f"promotion blocked by STONITH, retrying: {self._failed[2]}"
        outcome = job.result(timeout=wait)
        if outcome is None:
            return False, f"fencing the old leader {old.name} through STONITH hooks before promoting"
        self._job = None
        self._count(outcome)
        if outcome.may_promote:
            self._passed_term, self._failed = term, None
            return True, f"STONITH: {outcome.reason}"
        self._failed = (term, self._clock.monotonic(), outcome.reason)
        return False, f"promotion blocked by STONITH: {outcome.reason}"

    def _count(self, outcome: StonithOutcome) -> None:
        for hook, result in outcome.metric_samples():
            self._metrics.count_stonith(hook, result)
