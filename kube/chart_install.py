"""Installing the Helm chart onto the local cluster: ``pgquorum kube install``, the kube tests and
``scripts/kube-demo`` all go through ``install_chart``.

Helm installs ``crds/`` only when they are absent and never upgrades them, so this checkout's CRDs
are applied first (server-side). Objects an earlier ``pgquorum operator manifests | kubectl apply``
made are adopted (Helm's ownership annotations and label: it refuses objects it does not own, and
a user switching to the chart does the same). Then ``helm upgrade --install --wait``.
"""

from __future__ import annotations

from collections.abc import Sequence

import yaml

from pgquorum.kube.cluster import ClusterError, Kubectl
from pgquorum.kube.helm import run_helm
from pgquorum.kube.images import PGQUORUM_IMAGE, source_root

RELEASE = "pgquorum"
NAMESPACE = "pgquorum-system"


def image_values(image: str) -> list[str]:
    repository, tag = image.rsplit(":", 1)
    return ["--set", f"image.repository={repository}", "--set-string", f"image.tag={tag}"]


def _adopt(k: Kubectl, image: str) -> list[str]:
    from pgquorum.operator.install import operator_objects

    adopted = []
    for obj in operator_objects(NAMESPACE, image):
        kind, name = obj["kind"].lower(), obj["metadata"]["name"]
        if kind == "namespace":
            continue
        where = ["-n", NAMESPACE] if "namespace" in obj["metadata"] else []
        got = k.run([*where, "get", f"{kind}/{name}", "-o", "json"], check=False)
        if got.returncode != 0 or "meta.helm.sh/release-name" in got.stdout:
            continue
        k.run(
            [
                *where,
                "annotate",
                "--overwrite",
                f"{kind}/{name}",
                f"meta.helm.sh/release-name={RELEASE}",
                f"meta.helm.sh/release-namespace={NAMESPACE}",
            ]
        )
        k.run([*where, "label", "--overwrite", f"{kind}/{name}", "app.kubernetes.io/managed-by=Helm"])
        adopted.append(f"{kind}/{name}")
    return adopted


def install_chart(k: Kubectl, values: Sequence[str] = (), image: str = PGQUORUM_IMAGE, timeout: float = 300) -> str:
    """``helm upgrade --install`` of the chart as release ``pgquorum`` in ``pgquorum-system`` with
    ``image`` and ``values`` (more ``--set`` arguments); returns Helm's output. Raises ClusterError
    (BuildError when Helm is not built)."""
    from pgquorum.operator.cli import peering_crds
    from pgquorum.operator.crd import NAME, postgrescluster_crd

    k.run(
        ["apply", "--server-side", "--force-conflicts", "-f", "-"],
        stdin=yaml.safe_dump_all([postgrescluster_crd(), *peering_crds()]),
    )
    k.run(["wait", "--for=condition=Established", f"crd/{NAME}", "--timeout=60s"], timeout=70)
    _adopt(k, image)
    argv = [
        "upgrade",
        "--install",
        RELEASE,
        str(source_root() / "charts" / "pgquorum"),
        "--namespace",
        NAMESPACE,
        "--create-namespace",
        *image_values(image),
        *values,
        "--wait",
        f"--timeout={int(timeout)}s",
    ]
    proc = run_helm(argv, k.plan.admin_kubeconfig, timeout=timeout + 30)
    if proc.returncode != 0:
        raise ClusterError(f"helm {' '.join(argv[:3])} failed: {(proc.stderr or proc.stdout).strip()}")
    return proc.stdout
