"""The plain-YAML install bundles in ``manifests/``, rendered from the Helm chart: one source.

``helm template`` of the chart with the defaults (and once with the bundled etcd) into namespace
``pgquorum-system``, preceded by that Namespace and the chart's CRDs, without Helm's hooks (its
test pod and uninstall job only make sense under Helm). ``scripts/render-manifests`` writes them;
the chart tests render them again and compare.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from pgquorum.cache import BuildError
from pgquorum.kube.helm import run_helm
from pgquorum.kube.images import source_root

NAMESPACE = "pgquorum-system"
RELEASE = "pgquorum"
BUNDLES: dict[str, tuple[str, ...]] = {
    "pgquorum.yaml": (),
    "pgquorum-with-etcd.yaml": ("--set", "etcd.enabled=true"),
}
HEADER = (
    "# Generated from charts/pgquorum by scripts/render-manifests (helm template {values}); do not edit.\n"
    "# kubectl apply --server-side -f {name}\n"
)


def render_bundle(values: tuple[str, ...], chart: Path | None = None) -> str:
    chart = chart or source_root() / "charts" / "pgquorum"
    proc = run_helm(["template", RELEASE, str(chart), "--namespace", NAMESPACE, "--include-crds", *values])
    if proc.returncode != 0:
        raise BuildError(f"helm template failed: {proc.stderr.strip()}")
    docs = [d for d in yaml.safe_load_all(proc.stdout) if d]
    kept = [d for d in docs if "helm.sh/hook" not in (d["metadata"].get("annotations") or {})]
    # CRDs first, then the namespace, then the rest in Helm's order
    crds = [d for d in kept if d["kind"] == "CustomResourceDefinition"]
    rest = [d for d in kept if d["kind"] != "CustomResourceDefinition"]
    namespace = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}
    name = next((n for n, v in BUNDLES.items() if v == values), "bundle.yaml")
    header = HEADER.format(values=" ".join(values) or "defaults", name=name)
    return header + yaml.safe_dump_all([*crds, namespace, *rest], sort_keys=False)
