"""A switchover asked for in ``spec.switchover`` (target member, optional time), carried out and
audited in ``status.switchover``: a pure function of the request, the record so far, what was
observed and the clock. The record is the request's whole life: Pending (waiting, scheduled or
issued), then Done or Refused with why; each change of state is also a Kubernetes Event.

A request is (target, at): once it is Done or Refused it is never carried out again, even after a
later failover moves the leader away. To ask again for the same member, give a new ``at`` (the
kubectl plugin sets it to now).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

from pgquorum.agent.model import Role
from pgquorum.operator.observed import Observed
from pgquorum.operator.reconcile import Step, StepKind
from pgquorum.operator.spec import SwitchoverRequest

# An issued switchover the agents have not completed by then is given up (the agents refuse one
# whose candidate is not caught up, for instance): the record says so instead of retrying forever.
GIVE_UP = timedelta(seconds=120)


class RequestState(StrEnum):
    PENDING = "Pending"
    DONE = "Done"
    REFUSED = "Refused"


@dataclass(frozen=True)
class Progress:
    step: Step | None  # the switchover to ask the agents for now
    record: dict[str, Any] | None  # the new status.switchover
    event: tuple[str, str, str] | None  # (type, reason, message) when the state changed


def progress(
    ask: SwitchoverRequest | None,
    record: Mapping[str, Any] | None,
    observed: Observed,
    now: datetime,
    busy: str | None,
) -> Progress:
    """``busy``: why no disruptive step may happen now (a membership change or rolling update in
    progress, or its step planned this pass), None when the cluster is settled."""
    if ask is None:
        return Progress(None, dict(record) if record else None, None)
    same = record is not None and record.get("target") == ask.target and record.get("at") == ask.at
    if same and record is not None and record.get("state") in (RequestState.DONE, RequestState.REFUSED):
        return Progress(None, dict(record), None)
    prior: Mapping[str, Any] = record if same and record is not None else {}
    issued = _time(prior.get("issued"))
    leader = observed.leader
    etcd = observed.etcd

    def pending(message: str, *, issue: bool = False) -> Progress:
        new = {"target": ask.target, "at": ask.at, "state": RequestState.PENDING.value, "message": message}
        new["time"] = prior.get("time") if prior.get("state") == RequestState.PENDING else _iso(now)
        if issue or issued is not None:
            new["issued"] = _iso(now) if issue else prior["issued"]
        step = Step(StepKind.SWITCHOVER, leader or "", "spec.switchover", target=ask.target) if issue else None
        event = None
        if issue:
            event = ("Normal", "Switchover", f"{leader} -> {ask.target}: asked for in spec.switchover")
        elif not prior:
            event = ("Normal", "SwitchoverPending", f"to {ask.target}: {message}")
        return Progress(step, {k: v for k, v in new.items() if v is not None}, event)

    def ended(state: RequestState, message: str) -> Progress:
        new = {"target": ask.target, "at": ask.at, "state": state.value, "message": message, "time": _iso(now)}
        if issued is not None:
            new["issued"] = prior["issued"]
        kind = ("Normal", "SwitchoverDone") if state is RequestState.DONE else ("Warning", "SwitchoverRefused")
        return Progress(None, {k: v for k, v in new.items() if v is not None}, (*kind, f"to {ask.target}: {message}"))

    if leader == ask.target and etcd is not None:
        done = f"{ask.target} leads (term {etcd.term})"
        return ended(RequestState.DONE, done if issued is not None else f"{done}: nothing to do")
    if issued is not None:
        asked = etcd.switchover if etcd is not None else None
        if asked is not None and asked.failed and asked.candidate == ask.target:
            return ended(RequestState.REFUSED, f"the agents refused it: {asked.failed}")
        if now - issued > GIVE_UP:
            return ended(RequestState.REFUSED, f"not done {GIVE_UP.seconds} s after it was asked ({leader} leads)")
        return pending(f"asked; waiting for {ask.target} to lead")
    at = _time(ask.at)
    if at is not None and now < at:
        return pending(f"scheduled for {ask.at}")
    if etcd is None:
        return pending("etcd unreachable: waiting")
    if leader is None:
        return pending("no leader: waiting for one (a failover is not a switchover)")
    if busy is not None:
        return pending(f"waiting: {busy}")
    member, pod = etcd.member(ask.target), observed.pod(ask.target)
    if member is None or pod is None or not pod.ready:
        return pending(f"waiting for {ask.target} to be ready")
    if member.role is not Role.REPLICA:
        return pending(f"waiting for {ask.target} to stream as a replica (it is {member.role.value})")
    lead = etcd.member(leader)
    timeline = lead.timeline if lead is not None else None
    if timeline is not None and member.timeline != timeline:
        # the agents hand over only to a replica on the leader's timeline (a rejoining one is not yet)
        return pending(f"waiting for {ask.target} to reach the leader's timeline {timeline}")
    if member.nofailover:
        return ended(RequestState.REFUSED, f"{ask.target} is tagged nofailover")
    return pending(f"asked {leader} to hand over", issue=True)


def _time(text: object) -> datetime | None:
    if not isinstance(text, str):
        return None
    try:
        t = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return t if t.tzinfo is not None else t.replace(tzinfo=UTC)


def _iso(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
