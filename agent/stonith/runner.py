"""Run the STONITH hooks before a promotion: synchronously, in order, each within its own timeout.

Unlike Patroni's callbacks nothing here is cancelled by a later event: ``run_hooks`` returns only
when every hook it started has finished or timed out (and, for executables, had its process group
killed). Its worst case is ``worst_case_seconds(hooks)``.

Verdict: the promotion may proceed iff every ``required`` hook fenced the old leader. The first
required hook that fails or times out stops the run (the promotion is blocked anyway; later hooks
would only act on a failover that is not happening) and the remaining hooks are reported as
``skipped``. Best-effort failures are reported, logged and counted, and do not block.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from pgquorum.agent.clock import Clock
from pgquorum.agent.stonith.config import ExecHook, Hook, KubernetesHook, LocalKillHook, Policy, WebhookHook
from pgquorum.agent.stonith.exec_hook import run_exec
from pgquorum.agent.stonith.kubernetes import run_kubernetes
from pgquorum.agent.stonith.local_kill import run_local_kill
from pgquorum.agent.stonith.model import FenceRequest, HookFailure, HookResult, Outcome, StonithOutcome
from pgquorum.agent.stonith.webhook import run_webhook

log = logging.getLogger("pgquorum.stonith")


def _dispatch(hook: Hook, request: FenceRequest) -> str:
    if isinstance(hook, ExecHook):
        return run_exec(hook, request)
    if isinstance(hook, WebhookHook):
        return run_webhook(hook, request)
    if isinstance(hook, LocalKillHook):
        return run_local_kill(hook, request)
    if isinstance(hook, KubernetesHook):
        return run_kubernetes(hook, request)
    raise TypeError(f"not a STONITH hook: {hook!r}")


def _run_one(
    hook: Hook, request: FenceRequest, clock: Clock, runner: Callable[[Hook, FenceRequest], str]
) -> HookResult:
    started = clock.monotonic()
    try:
        message = runner(hook, request)
        outcome = Outcome.OK
    except HookFailure as exc:
        outcome, message = exc.outcome, exc.message
    except Exception as exc:  # a bug in a hook must block (or be counted), never crash the agent
        log.exception("STONITH hook crashed", extra={"event": "stonith_hook_error", "hook": hook.name})
        outcome, message = Outcome.FAILED, f"internal error: {type(exc).__name__}: {exc}"
    return HookResult(hook.name, hook.type, hook.policy, outcome, message, clock.monotonic() - started)


def _log(result: HookResult, request: FenceRequest) -> None:
    if result.outcome in (Outcome.OK, Outcome.SKIPPED):
        level = logging.INFO
    else:
        level = logging.ERROR if result.policy is Policy.REQUIRED else logging.WARNING
    log.log(
        level,
        f"STONITH hook {result.hook}: {result.outcome}",
        extra={
            "event": "stonith_hook",
            "hook": result.hook,
            "hook_type": result.type,
            "policy": str(result.policy),
            "outcome": str(result.outcome),
            "old_leader": request.old_leader,
            "new_leader": request.new_leader,
            "term": request.term,
            "duration": round(result.duration, 3),
            "reason": result.message,
        },
    )


def run_hooks(
    hooks: tuple[Hook, ...],
    request: FenceRequest,
    clock: Clock,
    runner: Callable[[Hook, FenceRequest], str] = _dispatch,
) -> StonithOutcome:
    """Fence ``request.old_leader``; blocks for at most ``worst_case_seconds(hooks)``.

    ``runner`` exists for the HA loop's own unit tests (a pure stand-in); production uses the default.
    """
    started = clock.monotonic()
    results: list[HookResult] = []
    if hooks:
        log.info(
            "STONITH: fencing the old leader before promotion",
            extra={
                "event": "stonith_start",
                "old_leader": request.old_leader,
                "new_leader": request.new_leader,
                "term": request.term,
                "hooks": ",".join(h.name for h in hooks),
            },
        )
    blocked: HookResult | None = None
    for hook in hooks:
        if request.old_leader == request.new_leader:
            # Our own former leadership: we are about to be leader again, there is no one else to fence.
            result = HookResult(
                hook.name, hook.type, hook.policy, Outcome.SKIPPED, "the old leader is this member", 0.0
            )
        elif blocked is not None:
            result = HookResult(
                hook.name,
                hook.type,
                hook.policy,
                Outcome.SKIPPED,
                f"not run: required hook {blocked.hook!r} already blocked the promotion",
                0.0,
            )
        else:
            result = _run_one(hook, request, clock, runner)
            if result.blocking:
                blocked = result
        _log(result, request)
        results.append(result)
    outcome = StonithOutcome(request, tuple(results), clock.monotonic() - started)
    if hooks:
        log.log(
            logging.INFO if outcome.may_promote else logging.ERROR,
            outcome.reason,
            extra={
                "event": "stonith_verdict",
                "old_leader": request.old_leader,
                "new_leader": request.new_leader,
                "term": request.term,
                "may_promote": outcome.may_promote,
                "best_effort_failures": outcome.best_effort_failures,
                "duration": round(outcome.duration, 3),
            },
        )
    return outcome


class FenceJob:
    """``run_hooks`` on a thread of its own, so the HA loop keeps renewing its lease while hooks run.

    Hooks can take longer than the lease's ttl (a 10 s fence against a 3 s lease): the loop starts a
    job after taking the key, keeps looping (renewing), and promotes once ``result()`` says so and
    it still holds the key for ``request.term``. A job is never cancelled — a later event does not
    kill a fence halfway; if the loop no longer needs the result (the key was lost meanwhile), it
    simply drops the job, which still finishes and logs.
    """

    def __init__(self, hooks: tuple[Hook, ...], request: FenceRequest, clock: Clock):
        self.request = request
        self._outcome: StonithOutcome | None = None
        self._thread = threading.Thread(
            target=self._run, args=(hooks, clock), name=f"stonith-term-{request.term}", daemon=True
        )
        self._thread.start()

    def _run(self, hooks: tuple[Hook, ...], clock: Clock) -> None:
        self._outcome = run_hooks(hooks, self.request, clock)

    def done(self) -> bool:
        return not self._thread.is_alive()

    def result(self, timeout: float | None = 0.0) -> StonithOutcome | None:
        """The outcome, waiting up to ``timeout`` seconds (``None``: until done); None while still running."""
        self._thread.join(timeout)
        return self._outcome
