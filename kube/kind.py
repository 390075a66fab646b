"""The kind provider: the same cluster command on machines with Docker (or podman) and kind.

``pgquorum kube up --provider kind --nodes 3`` runs ``kind create cluster`` with one control plane
and N workers, then ``kind load docker-image`` for our images (built with ``docker build`` from the
repo's Dockerfile and images/). kind picks its container engine itself (Docker, or podman with
KIND_EXPERIMENTAL_PROVIDER=podman). The configuration is rendered here; everything else is kind's.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml

Progress = Callable[[str], None]


class KindError(RuntimeError):
    pass


def kind_config(workers: int) -> str:
    """kind's Cluster config: one control-plane node and ``workers`` workers."""
    if workers < 1:
        raise KindError(f"--nodes: expected at least 1 worker, got {workers}")
    nodes: list[dict[str, Any]] = [{"role": "control-plane"}] + [{"role": "worker"} for _ in range(workers)]
    doc = {"kind": "Cluster", "apiVersion": "kind.x-k8s.io/v1alpha4", "nodes": nodes}
    return yaml.safe_dump(doc, sort_keys=False)


def create_argv(name: str, config: Path, image: str | None, kind: str = "kind") -> list[str]:
    argv = [kind, "create", "cluster", "--name", name, "--config", str(config), "--wait", "300s"]
    if image:
        argv += ["--image", image]
    return argv


def load_argv(name: str, images: Sequence[str], kind: str = "kind") -> list[str]:
    return [kind, "load", "docker-image", "--name", name, *images]


def _kind() -> str:
    found = shutil.which("kind")
    if found is None:
        raise KindError("kind is not installed: go install sigs.k8s.io/kind@v0.33.0 (and Docker, or podman)")
    return found


def _run(argv: Sequence[str], timeout: float, progress: Progress) -> str:
    progress("$ " + " ".join(argv))
    try:
        proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise KindError(f"{argv[0]} {argv[1]}: no answer within {timeout:g} s") from None
    if proc.returncode != 0:
        raise KindError(f"{' '.join(argv[:3])} failed: {(proc.stderr.strip() or proc.stdout.strip())[-800:]}")
    return proc.stdout


def up(
    name: str, workers: int, images: Sequence[str], work_dir: Path, progress: Progress, node_image: str | None = None
) -> None:
    kind = _kind()
    work_dir.mkdir(parents=True, exist_ok=True)
    config = work_dir / f"kind-{name}.yaml"
    config.write_text(kind_config(workers))
    _run(create_argv(name, config, node_image, kind), 600, progress)
    if images:
        _run(load_argv(name, images, kind), 900, progress)


def down(name: str, progress: Progress) -> None:
    _run([_kind(), "delete", "cluster", "--name", name], 300, progress)


def kubeconfig(name: str) -> str:
    return _run([_kind(), "get", "kubeconfig", "--name", name], 60, lambda _m: None)


def status(name: str) -> dict[str, Any]:
    kind = _kind()
    clusters = subprocess.run([kind, "get", "clusters"], capture_output=True, text=True, timeout=60).stdout.split()
    nodes = []
    if name in clusters:
        out = subprocess.run(
            ["kubectl", "--context", f"kind-{name}", "get", "nodes", "-o", "json"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        if out.returncode == 0:
            for item in json.loads(out.stdout)["items"]:
                conds = {c["type"]: c["status"] for c in item["status"].get("conditions", [])}
                nodes.append({"name": item["metadata"]["name"], "ready": conds.get("Ready") == "True"})
    return {"name": name, "provider": "kind", "running": name in clusters, "nodes": nodes}
