"""STONITH ("shoot the other node in the head"): fence the old leader before this member promotes.

invariant I2. The new leader, after taking the leader key for term ``T`` and before promoting its
postgres, calls ``run_hooks(hooks, FenceRequest(...), clock)``; it promotes only if
``outcome.may_promote``. Hooks are configured as a list (``parse_hooks``) and run synchronously, in
order, each within its timeout; see README.md in this folder for writing an exec hook and verifying a
webhook's signature.
"""

from pgquorum.agent.stonith.config import (
    ExecHook,
    Hook,
    KubernetesHook,
    LocalKillHook,
    Policy,
    WebhookHook,
    parse_hooks,
    preflight,
    worst_case_seconds,
)
from pgquorum.agent.stonith.model import FenceRequest, HookResult, Outcome, StonithOutcome
from pgquorum.agent.stonith.runner import FenceJob, run_hooks
from pgquorum.agent.stonith.webhook import verify_signature

__all__ = [
    "ExecHook",
    "FenceJob",
    "FenceRequest",
    "Hook",
    "HookResult",
    "KubernetesHook",
    "LocalKillHook",
    "Outcome",
    "Policy",
    "StonithOutcome",
    "WebhookHook",
    "parse_hooks",
    "preflight",
    "run_hooks",
    "verify_signature",
    "worst_case_seconds",
]
