"""What a fence is asked to do (``FenceRequest``) and what came of it (``HookResult``, ``StonithOutcome``)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from pgquorum.agent.stonith.config import PLACEHOLDERS, Policy


@dataclass(frozen=True)
class FenceRequest:
    """The new leader (this agent) fences the old one before promoting itself for ``term``."""

    cluster: str
    old_leader: str
    new_leader: str
    term: int  # the term the new leader took with the leader key
    old_leader_api_url: str | None = None
    old_leader_host: str | None = None

    def values(self) -> dict[str, str]:
        """Placeholder values; an unknown optional value is absent (a template using it fails clearly)."""
        out = {
            "cluster": self.cluster,
            "old_leader": self.old_leader,
            "new_leader": self.new_leader,
            "term": str(self.term),
        }
        if self.old_leader_host:
            out["old_leader_host"] = self.old_leader_host
        if self.old_leader_api_url:
            out["old_leader_api_url"] = self.old_leader_api_url
        assert set(out) <= set(PLACEHOLDERS)
        return out

    def env(self) -> dict[str, str]:
        """``PGQUORUM_*`` variables for an exec hook."""
        return {f"PGQUORUM_{key.upper()}": value for key, value in self.values().items()}


class Outcome(StrEnum):
    OK = "ok"  # the old leader is fenced (or verifiably gone)
    FAILED = "failed"
    TIMEOUT = "timeout"  # the hook did not finish in time and was abandoned (processes killed)
    SKIPPED = "skipped"  # not run: nothing to fence, or an earlier required hook already blocked

    @property
    def metric(self) -> str:
        """The ``outcome`` label of ``pgquorum_stonith_results_total`` (agent/metrics.py STONITH_OUTCOMES)."""
        return _METRIC[self]


_METRIC = {Outcome.OK: "success", Outcome.FAILED: "failure", Outcome.TIMEOUT: "timeout", Outcome.SKIPPED: "skipped"}


@dataclass(frozen=True)
class HookResult:
    hook: str  # the hook's name: the ``hook`` label of the metric
    type: str  # exec, webhook, local-kill, kubernetes
    policy: Policy
    outcome: Outcome
    message: str  # one line for humans; never contains a secret
    duration: float  # seconds

    @property
    def blocking(self) -> bool:
        """A required hook that did not fence: the promotion must not go on."""
        return self.policy is Policy.REQUIRED and self.outcome in (Outcome.FAILED, Outcome.TIMEOUT)

    def as_dict(self) -> dict[str, Any]:
        return {
            "hook": self.hook,
            "type": self.type,
            "policy": str(self.policy),
            "outcome": str(self.outcome),
            "message": self.message,
            "duration": round(self.duration, 3),
        }


@dataclass(frozen=True)
class StonithOutcome:
    request: FenceRequest
    results: tuple[HookResult, ...]  # one per configured hook, in run order
    duration: float

    @property
    def may_promote(self) -> bool:
        """True iff every ``required`` hook succeeded (or had nothing to fence)."""
        return not any(r.blocking for r in self.results)

    @property
    def blocked_by(self) -> tuple[HookResult, ...]:
        return tuple(r for r in self.results if r.blocking)

    @property
    def best_effort_failures(self) -> int:
        return sum(
            1 for r in self.results if r.policy is Policy.BEST_EFFORT and r.outcome in (Outcome.FAILED, Outcome.TIMEOUT)
        )

    @property
    def reason(self) -> str:
        """One line for logs, status and the alert: why promotion may or may not go on."""
        req = self.request
        if not self.results:
            return "no STONITH hooks configured"
        if self.blocked_by:
            first = self.blocked_by[0]
            return (
                f"promotion of {req.new_leader} for term {req.term} blocked: required STONITH hook {first.hook!r} "
                f"({first.type}) {first.outcome}: {first.message}"
            )
        ok = sum(1 for r in self.results if r.outcome is Outcome.OK)
        text = f"old leader {req.old_leader} fenced for term {req.term}: {ok}/{len(self.results)} hooks succeeded"
        if self.best_effort_failures:
            text += f", {self.best_effort_failures} best-effort hook(s) failed"
        if all(r.outcome is Outcome.SKIPPED for r in self.results):
            text = f"nothing to fence for term {req.term}: {self.results[0].message}"
        return text

    def metric_samples(self) -> tuple[tuple[str, str], ...]:
        """``(hook, outcome)`` label pairs, one per hook: feed each to ``AgentMetrics.count_stonith``."""
        return tuple((r.hook, r.outcome.metric) for r in self.results)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready, for the REST API's status/history."""
        return {
            "old_leader": self.request.old_leader,
            "new_leader": self.request.new_leader,
            "term": self.request.term,
            "may_promote": self.may_promote,
            "reason": self.reason,
            "duration": round(self.duration, 3),
            "hooks": [r.as_dict() for r in self.results],
        }


class HookFailure(Exception):
    """Raised by a hook implementation: the hook did not fence (``outcome`` FAILED or TIMEOUT)."""

    def __init__(self, outcome: Outcome, message: str):
        super().__init__(message)
        self.outcome = outcome
        self.message = message


def render(template: str, request: FenceRequest, where: str) -> str:
    """Fill ``{old_leader}``-style placeholders (validated at parse time) from the request."""
    values = request.values()
    try:
        return template.format_map(values)
    except KeyError as exc:
        raise HookFailure(
            Outcome.FAILED, f"{where}: placeholder {{{exc.args[0]}}} has no value for this failover"
        ) from None
