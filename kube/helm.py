"""Running the Helm this project builds (``pgquorum kube build``): one place for the chart install,
the manifests bundle and the tests."""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from pathlib import Path

from pgquorum.cache import BuildError
from pgquorum.kube.versions import HELM


def run_helm(
    args: Sequence[str], kubeconfig: Path | None = None, timeout: float = 60.0
) -> subprocess.CompletedProcess[str]:
    """``helm ARGS`` (against ``kubeconfig``'s cluster when given); raises BuildError when Helm is not built."""
    binary = HELM.binary("helm")
    if not binary.exists():
        raise BuildError(f"{binary} missing: `pgquorum kube build` builds it")
    config = [f"--kubeconfig={kubeconfig}"] if kubeconfig is not None else []
    return subprocess.run([str(binary), *config, *args], capture_output=True, text=True, timeout=timeout)
