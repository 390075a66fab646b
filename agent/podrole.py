"""The role label on the agent's own pod, which the ``-rw``/``-ro`` Services select on.

The agent sets it itself, so a switch of ``-rw`` never waits for the operator (which may be down or
on the dead node). A deposed primary cut off from the apiserver can neither relabel itself nor have
its kubelet report it: the new leader, which reaches the apiserver, takes the old pod out of ``-rw``
before it promotes — guarded by a JSON-patch ``test``, so it only changes a label that still says
``primary`` (an old pod already recreated as a replica is left alone).

The labeler is a thread with a queue: the HA loop never waits for the apiserver. Requests for the
same pod coalesce (the latest wins) and are applied in the order made (old leader out, then us in);
a failed patch is retried with backoff until it succeeds or a newer request replaces it. Our own
label is re-asserted now and then, so a label changed by hand or by another agent's guarded
demotion comes back.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from pgquorum.agent.config import ConfigError
from pgquorum.agent.kubeapi import (
    MERGE_PATCH,
    KubeApi,
    KubeApiError,
    in_cluster,
    pod_path,
    service_account_namespace,
)

log = logging.getLogger("pgquorum.podrole")

ROLE_LABEL = "pgquorum.io/role"
TERM_ANNOTATION = "pgquorum.io/term"
JSON_PATCH = "application/json-patch+json"
REASSERT_SECONDS = 30.0
CALL_TIMEOUT = 2.0
BACKOFF = (0.1, 0.25, 0.5, 1.0, 2.0)
_ACCEPT = frozenset({404, 409, 422})


_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_LABEL_KEY = re.compile(r"^([a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")


@dataclass(frozen=True)
class KubernetesSettings:
    """``kubernetes:`` in the agent's config: the pod it runs in, whose role label it keeps. Pods of
    a cluster are named after their members (the operator does so), which is how the new leader
    finds the old leader's pod."""

    pod: str
    namespace: str | None = None  # None: the service account's namespace
    role_label: str = ROLE_LABEL
    api_url: str | None = None  # None: in-cluster
    token_file: Path | None = None
    ca_file: Path | None = None


def parse_kubernetes(raw: Any, member: str) -> KubernetesSettings | None:
    """Validate the ``kubernetes`` section (None when absent); ConfigError names the field."""
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise ConfigError("kubernetes: expected a mapping like {pod: pg-0, namespace: db}")
    known = {"pod", "namespace", "role_label", "api_url", "token_file", "ca_file"}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(f"kubernetes.{unknown[0]}: unknown setting (known: {', '.join(sorted(known))})")
    values: dict[str, Any] = {k: v for k, v in raw.items() if v not in (None, "")}
    for key in known:
        if key in values and not isinstance(values[key], str):
            raise ConfigError(f"kubernetes.{key}: expected a string, got {values[key]!r}")
    pod = values.get("pod", member)
    if not _DNS_LABEL.match(pod):
        raise ConfigError(f"kubernetes.pod: {pod!r} is not a pod name (lowercase letters, digits and '-')")
    namespace = values.get("namespace")
    if namespace is not None and not _DNS_LABEL.match(namespace):
        raise ConfigError(f"kubernetes.namespace: {namespace!r} is not a namespace name")
    label = values.get("role_label", ROLE_LABEL)
    if not _LABEL_KEY.match(label):
        raise ConfigError(f"kubernetes.role_label: {label!r} is not a label key (like {ROLE_LABEL})")
    api_url = values.get("api_url")
    if api_url is not None and not api_url.startswith(("http://", "https://")):
        raise ConfigError(f"kubernetes.api_url: {api_url!r} must be an http(s):// URL")
    paths = {k: Path(values[k]) for k in ("token_file", "ca_file") if k in values}
    return KubernetesSettings(pod, namespace, label, api_url, paths.get("token_file"), paths.get("ca_file"))


def labeler_for(settings: KubernetesSettings, environ: Mapping[str, str] | None = None) -> PodLabeler:
    """The labeler the agent runs (reads the token: at start-up, so a bad setup fails loudly)."""
    env = os.environ if environ is None else environ
    try:
        if settings.api_url is not None:
            base, token_file, ca_file = settings.api_url, settings.token_file, settings.ca_file
        else:
            found = in_cluster(env, "kubernetes")
            base = found.base
            token_file = settings.token_file or found.token_file
            ca_file = settings.ca_file or found.ca_file
        namespace = settings.namespace or service_account_namespace("kubernetes")
    except KubeApiError as exc:
        raise ConfigError(str(exc)) from None
    if token_file is not None and not os.access(token_file, os.R_OK):
        raise ConfigError(f"kubernetes.token_file: cannot read {token_file}")
    api = KubeApi(base, None, ca_file, "pgquorum-agent", token_file=token_file)
    return PodLabeler(api, namespace, settings.pod, label=settings.role_label)


class PodRole(StrEnum):
    PRIMARY = "primary"  # the leader, writable: the only one `-rw` selects
    REPLICA = "replica"  # streaming from the leader: `-ro`
    WITNESS = "witness"
    NONE = "none"  # starting, stopped, fenced, demoted: in no role Service


def pod_role(published: str) -> PodRole:
    """The label for a member's published role (the word in its etcd member key and /cluster)."""
    return {"leader": PodRole.PRIMARY, "replica": PodRole.REPLICA, "witness": PodRole.WITNESS}.get(
        published, PodRole.NONE
    )


def _escape(key: str) -> str:
    # RFC 6901: a label key with '/' is one path segment
    return key.replace("~", "~0").replace("/", "~1")


@dataclass(frozen=True)
class LabelChange:
    """A role label to apply to one pod. ``only_if`` guards it: applied only while the label still
    says that (a JSON-patch test), None applies it as a merge patch whatever the label says."""

    pod: str
    role: PodRole
    term: int | None
    only_if: PodRole | None = None

    def request(self, label: str = ROLE_LABEL) -> tuple[str, Any]:
        """(content type, body) of the PATCH."""
        annotations = {} if self.term is None else {TERM_ANNOTATION: str(self.term)}
        if self.only_if is None:
            return MERGE_PATCH, {"metadata": {"labels": {label: self.role.value}, "annotations": annotations}}
        ops: list[dict[str, Any]] = [
            {"op": "test", "path": f"/metadata/labels/{_escape(label)}", "value": self.only_if.value},
            {"op": "replace", "path": f"/metadata/labels/{_escape(label)}", "value": self.role.value},
        ]
        return JSON_PATCH, ops


def demotion(old_pod: str, term: int) -> LabelChange:
    """Take a deposed leader's pod out of ``-rw`` (only if it still says primary)."""
    return LabelChange(old_pod, PodRole.NONE, term, only_if=PodRole.PRIMARY)


class PodLabeler:
    def __init__(
        self,
        api: KubeApi,
        namespace: str,
        own_pod: str,
        monotonic: Callable[[], float] = time.monotonic,
        label: str = ROLE_LABEL,
    ) -> None:
        self.api = api
        self.namespace = namespace
        self.own_pod = own_pod
        self.label = label
        self._monotonic = monotonic
        self._pending: OrderedDict[str, LabelChange] = OrderedDict()
        self._cond = threading.Condition()
        self._applied: LabelChange | None = None  # our own pod's label as last applied
        self._applied_at = 0.0
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name="pod-role", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify()

    # -- called by the HA loop: never blocks on the apiserver ---------------------------

    def publish(self, role: PodRole, term: int | None) -> None:
        change = LabelChange(self.own_pod, role, term)
        with self._cond:
            due = self._monotonic() - self._applied_at >= REASSERT_SECONDS
            if change == self._applied and not due and self.own_pod not in self._pending:
                return
            if self._pending.get(self.own_pod) == change:
                return
            self._enqueue(change)

    def demote(self, old_pod: str, term: int) -> None:
        if old_pod == self.own_pod:
            return
        with self._cond:
            self._enqueue(demotion(old_pod, term))

    def _enqueue(self, change: LabelChange) -> None:
        self._pending.pop(change.pod, None)  # latest wins, at the back of the order
        self._pending[change.pod] = change
        self._cond.notify()

    # -- the thread ----------------------------------------------------------------------

    def _run(self) -> None:
        attempt = 0
        while True:
            with self._cond:
                while not self._pending and not self._stopped:
                    self._cond.wait()
                if self._stopped:
                    return
                change = next(iter(self._pending.values()))
            ok = self._apply(change)
            with self._cond:
                if self._pending.get(change.pod) == change:
                    if ok:
                        del self._pending[change.pod]
                    else:
                        self._pending.move_to_end(change.pod)  # others first; retried after a pause
                if ok and change.pod == self.own_pod:
                    self._applied, self._applied_at = change, self._monotonic()
                attempt = 0 if ok else attempt + 1
                if not ok:
                    self._cond.wait(BACKOFF[min(attempt, len(BACKOFF)) - 1])

    def _apply(self, change: LabelChange) -> bool:
        """True when done (applied, the pod is gone, or its guard no longer holds)."""
        content_type, body = change.request(self.label)
        path = pod_path(self.namespace, change.pod)
        try:
            status, _ = self.api.call(
                "PATCH", path, body, timeout=CALL_TIMEOUT, content_type=content_type, accept=_ACCEPT
            )
        except KubeApiError as exc:
            log.warning(
                "cannot set pod role label",
                extra={"event": "pod_role_failed", "pod": change.pod, "role": change.role.value, "error": str(exc)},
            )
            return False
        if status == 404:
            log.info("pod gone: no role label to set", extra={"event": "pod_role_gone", "pod": change.pod})
            return True
        if status == 409:
            return False
        if status == 422:
            # only a guarded change gets here: its test failed, the label no longer says primary
            log.info("pod role unchanged", extra={"event": "pod_role_skipped", "pod": change.pod})
            return True
        level = logging.DEBUG if change == self._applied else logging.WARNING
        log.log(
            level,
            "pod role label set",
            extra={"event": "pod_role", "pod": change.pod, "role": change.role.value, "term": change.term},
        )
        return True
