"""Pod discovery for Debian's Prometheus, which is built without Kubernetes service discovery: a
sidecar lists pods through the apiserver every ``interval`` and writes Prometheus ``file_sd``
target files, which Prometheus re-reads as soon as they change (inotify).

``targets`` is pure (the pod list in, the target groups out): a job keeps the Running pods whose
label matches and that have a container port of the job's name; each target carries the labels
``namespace``, ``pod`` and ``node``, as the relabelling of a PodMonitor would give them. ``run`` is
the executor: ``python3 -m pgquorum.kube.pod_targets --out DIR`` in the pod, with the service
account (``pods: list``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from pgquorum.agent.kubeapi import KubeApi, KubeApiError, in_cluster

log = logging.getLogger("pgquorum.pod_targets")
LIST_LIMIT = 32 << 20  # bytes: ~5000 pods of ~6 KiB


@dataclass(frozen=True)
class Job:
    name: str
    label: str  # a pod label key
    value: str  # a regex its value must match in full
    port: str  # the container port's name


# What the chart's PodMonitors select (templates/monitoring.yaml).
JOBS = (
    Job("pgquorum-agents", "pgquorum.io/cluster", ".+", "api"),
    Job("pgquorum-etcd", "app.kubernetes.io/name", "pgquorum-etcd", "metrics"),
)


def targets(pods: Sequence[Mapping[str, Any]], job: Job) -> list[dict[str, Any]]:
    """The ``file_sd`` target groups of ``job`` (one per pod), sorted by namespace and pod."""
    out: list[tuple[tuple[str, str], dict[str, Any]]] = []
    for pod in pods:
        meta, spec, status = pod.get("metadata") or {}, pod.get("spec") or {}, pod.get("status") or {}
        value = (meta.get("labels") or {}).get(job.label)
        ip = status.get("podIP")
        if value is None or not re.fullmatch(job.value, value) or status.get("phase") != "Running" or not ip:
            continue
        if meta.get("deletionTimestamp"):
            continue
        ports = [
            p["containerPort"]
            for c in spec.get("containers") or []
            for p in c.get("ports") or []
            if p.get("name") == job.port
        ]
        if not ports:
            continue
        host = f"[{ip}]" if ":" in ip else ip
        ns, name = str(meta.get("namespace", "")), str(meta.get("name", ""))
        labels = {"namespace": ns, "pod": name, "node": str(spec.get("nodeName", ""))}
        out.append(((ns, name), {"targets": [f"{host}:{ports[0]}"], "labels": labels}))
    return [group for _, group in sorted(out, key=lambda item: item[0])]


def write_if_changed(path: Path, groups: list[dict[str, Any]]) -> bool:
    """Atomically (rename), and only on a change: every write makes Prometheus re-read the file."""
    text = json.dumps(groups, indent=1, sort_keys=True) + "\n"
    try:
        if path.read_text() == text:
            return False
    except OSError:
        pass
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    return True


def run(out: Path, interval: float, jobs: Sequence[Job] = JOBS) -> None:
    endpoint = in_cluster(os.environ, "pod_targets")
    api = KubeApi(endpoint.base, None, endpoint.ca_file, "pgquorum-pod-targets", endpoint.token_file)
    out.mkdir(parents=True, exist_ok=True)
    while True:
        try:
            for job in jobs:
                # only the pods with the job's label key (a list of every pod outgrows any limit)
                path = f"/api/v1/pods?labelSelector={quote(job.label, safe='')}"
                _, body = api.call("GET", path, timeout=max(1.0, interval * 2), body_limit=LIST_LIMIT)
                if write_if_changed(out / f"{job.name}.json", targets(body.get("items") or [], job)):
                    log.info("targets changed", extra={"event": "targets", "job": job.name})
        except KubeApiError as exc:  # keep the last files: Prometheus scrapes on what it has
            log.warning(f"listing pods failed: {exc}", extra={"event": "targets_error"})
        time.sleep(interval)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m pgquorum.kube.pod_targets", description=__doc__)
    parser.add_argument("--out", type=Path, required=True, help="folder for <job>.json target files")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between two pod listings (1)")
    args = parser.parse_args(argv)
    if not args.interval > 0:
        parser.error(f"--interval: must be a positive number of seconds, got {args.interval}")
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(message)s")
    try:
        run(args.out, args.interval)
    except KubeApiError as exc:
        print(f"pod_targets: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
