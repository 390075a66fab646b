"""kopf handlers: thin. Each one parses the spec, asks the pure functions what the cluster should be
and what to do next, lets the executor do it and returns the status. Our errors become kopf's:
a refused spec is permanent (nothing retries it until it changes), an I/O failure temporary.

The operator is never in the failover path: agents fail over by themselves through etcd, label
their own pods (``-rw`` follows), and fence the old primary. With the operator scaled to zero a
killed primary is still replaced; only membership, status and recreating lost pods wait for it.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import kopf

from pgquorum.agent.kubeapi import KubeApi, KubeApiError, in_cluster
from pgquorum.operator import crd, manifests, status, switchover
from pgquorum.operator.executor import ClusterIO, EtcdTarget, ExecutorError
from pgquorum.operator.reconcile import StepKind, plan
from pgquorum.operator.spec import ClusterSpec, SpecError, check_update, parse_spec

log = logging.getLogger("pgquorum.operator")

RECONCILE_SECONDS = 2.0
BUNDLED_ETCD_ENV = "PGQUORUM_BUNDLED_ETCD"  # the chart's etcd, for clusters with etcd.bundled


@dataclass(frozen=True)
class Runtime:
    api: KubeApi
    bundled_etcd: tuple[str, ...]


def runtime_from_env(environ: Mapping[str, str] | None = None) -> Runtime:
    env = os.environ if environ is None else environ
    if "PGQUORUM_KUBE_API" in env:  # outside a pod (development): an explicit apiserver and token
        from pathlib import Path

        token_file = Path(env["PGQUORUM_KUBE_TOKEN_FILE"])
        ca = Path(env["PGQUORUM_KUBE_CA_FILE"]) if "PGQUORUM_KUBE_CA_FILE" in env else None
        api = KubeApi(env["PGQUORUM_KUBE_API"], None, ca, "pgquorum-operator", token_file=token_file)
    else:
        endpoint = in_cluster(env, "operator")
        api = KubeApi(endpoint.base, None, endpoint.ca_file, "pgquorum-operator", token_file=endpoint.token_file)
    bundled = tuple(e.strip() for e in env.get(BUNDLED_ETCD_ENV, "").split(",") if e.strip())
    return Runtime(api, bundled)


def etcd_endpoints(cs: ClusterSpec, rt: Runtime) -> tuple[str, ...]:
    if cs.etcd.endpoints:
        return tuple(cs.etcd.endpoints)
    if not rt.bundled_etcd:
        raise SpecError(
            "spec.etcd.bundled: this operator has no bundled etcd (install the chart with etcd.enabled=true) "
            "— or list spec.etcd.endpoints"
        )
    return rt.bundled_etcd


def reconcile_cluster(
    rt: Runtime, body: Mapping[str, Any], previous: Mapping[str, Any] | None, now: datetime
) -> tuple[dict[str, Any], list[tuple[str, str, str]]]:
    """One pass: (new status, events as (type, reason, message)). Raises SpecError / ExecutorError."""
    meta = body["metadata"]
    cs = parse_spec(body.get("spec") or {}, meta["name"])
    ident = manifests.Identity(meta["namespace"], meta["name"], meta["uid"], etcd_endpoints(cs, rt))
    io = ClusterIO(rt.api, ident.namespace, ident.name)
    secrets = io.ensure_secret(ident.secret, ident.labels(), ident.owner())
    etcd = EtcdTarget(ident.etcd_endpoints, manifests.ETCD_PREFIX, ident.agents_cluster)
    observed, existing = io.observe(etcd)
    target = manifests.target(cs, ident, tuple(p.name for p in observed.pods))
    steps = plan(target, observed, existing, now)
    disruptive = next((s.reason for s in steps.steps if s.kind is not StepKind.APPLY), None)
    asked = switchover.progress(
        cs.switchover, (previous or {}).get("switchover"), observed, now, steps.refused or steps.waiting or disruptive
    )
    api_urls = {t.name: ident.api_url(t.name) for t in target.members}
    io.execute((*steps.steps, *([asked.step] if asked.step else [])), etcd, api_urls, secrets["api-token"])
    desired = status.Desired(
        members=tuple(t.name for t in target.members if t.pvc is not None),
        witnesses=tuple(t.name for t in target.members if t.pvc is None),
        quorum_mode=cs.synchronous.quorum,
        generation=int(meta.get("generation", 0)),
    )
    new = status.cluster_status(observed, desired, previous, now)
    events: list[tuple[str, str, str]] = []
    if steps.refused is not None:
        new["conditions"] = _with_progressing(new["conditions"], "Refused", steps.refused, now)
        if (previous or {}).get("refused") != steps.refused:
            events.append(("Warning", "Refused", steps.refused))
        new["refused"] = steps.refused
    elif steps.waiting is not None:
        new["conditions"] = _with_progressing(new["conditions"], "Waiting", steps.waiting, now)
    if asked.record is not None:
        new["switchover"] = asked.record
    if asked.event is not None:
        events.append(asked.event)
    failover = status.failover_event(previous, new)
    if failover is not None:
        events.append(("Normal", *failover))
    for step in steps.steps:
        if step.kind.value in ("delete-pod", "retire-voter", "switchover", "delete-pvc"):
            events.append(("Normal", step.kind.value.title().replace("-", ""), f"{step.name}: {step.reason}"))
    return new, events


def _with_progressing(conds: list[dict[str, Any]], reason: str, message: str, now: datetime) -> list[dict[str, Any]]:
    out = []
    for c in conds:
        if c["type"] == status.Cond.PROGRESSING.value:
            c = {**c, "status": "True", "reason": reason, "message": message}
        out.append(c)
    return out


def check_change(old_spec: Mapping[str, Any] | None, new_spec: Mapping[str, Any], name: str) -> None:
    """The immutables again (the CRD's transition rules refuse them at apply time; this holds for a
    CRD installed without them). An old spec that was itself refused is no reference."""
    if not old_spec:
        return
    try:
        before = parse_spec(old_spec, name)
    except SpecError:
        return
    check_update(before, parse_spec(new_spec, name))


def status_patch(previous: Mapping[str, Any] | None, new: Mapping[str, Any]) -> dict[str, Any]:
    """A merge patch from the old status to the new one: keys that went away are set to null."""
    patch: dict[str, Any] = {k: None for k in (previous or {}) if k not in new}
    patch.update({k: v for k, v in new.items() if (previous or {}).get(k) != v})
    return patch


def register(registry: kopf.OperatorRegistry, rt: Runtime) -> None:
    group, version, plural = crd.GROUP, crd.VERSION, crd.PLURAL

    # kopf runs a timer beside the change handlers of the same object: one pass per cluster at a
    # time, or two passes planning from the same observation could each take a disruptive step
    passes: dict[str, threading.Lock] = collections.defaultdict(threading.Lock)

    def handle(
        body: kopf.Body, patch: kopf.Patch, logger: logging.Logger | kopf.Logger, old: Mapping[str, Any] | None = None
    ) -> None:
        with passes[str(body["metadata"]["uid"])]:
            one_pass(body, patch, old)

    def one_pass(body: kopf.Body, patch: kopf.Patch, old: Mapping[str, Any] | None) -> None:
        if body["metadata"].get("deletionTimestamp"):
            # going away (its namespace may be terminating): recreating what garbage collection
            # just removed would fight the deletion; the delete handler has the last word
            return
        previous = dict(body.get("status") or {})
        try:
            if old is not None:
                check_change(old.get("spec"), body.get("spec") or {}, body["metadata"]["name"])
            new, events = reconcile_cluster(rt, body, previous, datetime.now(UTC))
        except SpecError as exc:
            invalid = {"phase": status.Phase.INVALID.value, "invalid": str(exc)}
            for k, v in status_patch(previous, {**previous, **invalid}).items():
                patch.status[k] = v
            if previous.get("invalid") != str(exc):
                kopf.event(body, type="Warning", reason="InvalidSpec", message=str(exc))
            raise kopf.PermanentError(str(exc)) from None
        except (ExecutorError, KubeApiError) as exc:
            raise kopf.TemporaryError(str(exc), delay=RECONCILE_SECONDS) from None
        new.pop("invalid", None)
        for k, v in status_patch(previous, new).items():
            patch.status[k] = v
        for type_, reason, message in events:
            kopf.event(body, type=type_, reason=reason, message=message)

    @kopf.on.resume(group, version, plural, registry=registry)
    @kopf.on.create(group, version, plural, registry=registry)
    @kopf.on.update(group, version, plural, registry=registry)
    def on_change(
        body: kopf.Body, patch: kopf.Patch, logger: kopf.Logger, old: Mapping[str, Any] | None = None, **_: Any
    ) -> None:
        handle(body, patch, logger, old)

    @kopf.on.delete(group, version, plural, registry=registry)
    def on_delete(body: kopf.Body, **_: Any) -> None:
        # the namespaced objects go by garbage collection (ownerReferences); a cluster-scoped one
        # cannot be owned by a namespaced resource, so it is deleted here (the timer below makes
        # kopf keep its finalizer on the resource anyway: this runs before the resource goes)
        meta = body["metadata"]
        try:
            ClusterIO(rt.api, meta["namespace"], meta["name"]).delete_cluster_objects()
        except (ExecutorError, KubeApiError) as exc:
            raise kopf.TemporaryError(str(exc), delay=RECONCILE_SECONDS) from None

    @kopf.timer(group, version, plural, interval=RECONCILE_SECONDS, sharp=False, registry=registry)
    def on_timer(body: kopf.Body, patch: kopf.Patch, logger: kopf.Logger, **_: Any) -> None:
        with contextlib.suppress(kopf.PermanentError):  # said once by the change handler
            handle(body, patch, logger)

    @kopf.on.login(registry=registry)
    def login(logger: kopf.Logger, **kwargs: Any) -> kopf.ConnectionInfo | None:
        # no client library: the pod's service account, else a kubeconfig (development)
        return kopf.login_with_service_account(logger=logger, **kwargs) or kopf.login_with_kubeconfig(
            logger=logger, **kwargs
        )

    @kopf.on.startup(registry=registry)
    def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
        # kopf's own bookkeeping in annotations: our CRD's status schema has no room for it
        settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="pgquorum.io")
        settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix="pgquorum.io")
        settings.posting.level = logging.INFO  # our Normal events (Failover, ...) are posted too
        settings.watching.server_timeout = 60
        settings.execution.max_workers = 8
