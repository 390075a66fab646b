"""Building the cluster's Go binaries into the cache: Kubernetes (five binaries + kubectl) and Helm;
and prometheus-operator's CRDs, copied out of its Go module.

``k8s.io/kubernetes`` cannot be required as a plain module: its go.mod replaces 31 staging modules
(k8s.io/api, k8s.io/apimachinery, ...) with ``./staging/...`` directories that a module download
does not have. A wrapper module requires it and replaces each of those with the published
``v0.X.Y`` of the same release (kubernetes #79384). The version ldflags are set too: without them
the binaries report ``v0.0.0-master+$Format:%H$`` and kubectl refuses to talk to the server.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from pgquorum.cache import BuildError, find_go, go_build, go_env, locked, write_module
from pgquorum.kube.versions import (
    HELM,
    KUBERNETES,
    KUBERNETES_BINARIES,
    MONITORING_CRDS,
    Component,
    kubernetes_minor,
    staging_version,
)

Progress = Callable[[str], None]

_STAGING_RE = re.compile(r"^\s*(k8s\.io/[A-Za-z0-9._/-]+)\s+=>\s+\./staging/", re.MULTILINE)


def staging_modules(kubernetes_go_mod: str) -> list[str]:
    """The module paths k8s.io/kubernetes's go.mod replaces with ``./staging/...`` directories."""
    return sorted(set(_STAGING_RE.findall(kubernetes_go_mod)))


def kubernetes_wrapper_go_mod(version: str, staging: Sequence[str]) -> str:
    """The wrapper module's go.mod: require k8s.io/kubernetes, each staging module pinned to v0.X.Y."""
    if not staging:
        raise BuildError(f"k8s.io/kubernetes v{version}: its go.mod lists no staging modules (unexpected layout)")
    pin = staging_version(version)
    lines = ["module pgquorum.invalid/kubebuild", "", "go 1.24.0", "", f"require k8s.io/kubernetes v{version}", ""]
    lines.append("replace (")
    lines += [f"\t{m} => {m} {pin}" for m in staging]
    lines.append(")")
    return "\n".join(lines) + "\n"


def kubernetes_ldflags(version: str) -> list[str]:
    major, minor = kubernetes_minor(version)
    values = {
        "gitVersion": f"v{version}",
        "gitMajor": major,
        "gitMinor": minor,
        "gitTreeState": "clean",
        "buildDate": "1970-01-01T00:00:00Z",
    }
    flags = ["-s", "-w"]
    for pkg in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
        flags += [f"-X {pkg}.{k}={v}" for k, v in values.items()]
    return flags


def helm_wrapper_go_mod(version: str) -> str:
    return f"module pgquorum.invalid/helmbuild\n\ngo 1.24.0\n\nrequire helm.sh/helm/v4 v{version}\n"


def helm_ldflags(version: str) -> list[str]:
    return ["-s", "-w", f"-X helm.sh/helm/v4/internal/version.version=v{version}"]


# ----------------------------------------------------------------------------- executors


def _download_go_mod(module: str, version: str, cwd: Path) -> str:
    return Path(_go_mod_download(module, version, cwd, "GoMod")).read_text()


def _go_mod_download(module: str, version: str, cwd: Path, field: str) -> str:
    """``go mod download -json module@vVERSION``: the path its answer gives in ``field`` (GoMod, Dir)."""
    go = find_go()
    if go is None:
        raise BuildError("go is not installed: apt-get install golang-go (or put Go >= 1.24 on PATH)")
    proc = subprocess.run(
        [go, "mod", "download", "-json", f"{module}@v{version}"],
        cwd=cwd,
        env=go_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    match = re.search(rf'"{field}":\s*"([^"]+)"', proc.stdout)
    if proc.returncode != 0 or not match:
        err = re.search(r'"Error":\s*"([^"]+)"', proc.stdout)
        why = err.group(1) if err else (proc.stderr.strip() or "?").splitlines()[-1]
        raise BuildError(f"go mod download {module}@v{version} failed: {why}")
    return match.group(1)


def _once(component: Component, progress: Progress, build: Callable[[Path], None]) -> Component:
    """Run ``build(work_dir)`` unless ``component`` is complete, under its lock; then mark it complete."""
    with locked(component.directory.parent / f".{component.directory.name}.lock"):
        if component.complete:
            return component
        started = time.monotonic()
        work = component.directory / "src"
        work.mkdir(parents=True, exist_ok=True)
        build(work)
        component.marker.write_text(f"built in {time.monotonic() - started:.0f} s\n")
        os.chmod(component.directory, 0o755)
        progress(f"{component.name} {component.version}: built in {time.monotonic() - started:.0f} s")
        return component


def build_kubernetes(progress: Progress = print, component: Component = KUBERNETES) -> Component:
    """The five Kubernetes binaries and kubectl into ``component.bin_dir`` (once per version)."""

    def build(work: Path) -> None:
        progress(f"kubernetes {component.version}: resolving modules (cold: several minutes)")
        staging = staging_modules(_download_go_mod("k8s.io/kubernetes", component.version, work))
        write_module(work, kubernetes_wrapper_go_mod(component.version, staging))
        for name in KUBERNETES_BINARIES:
            t0 = time.monotonic()
            go_build(
                f"k8s.io/kubernetes/cmd/{name}",
                component.binary(name),
                cwd=work,
                ldflags=kubernetes_ldflags(component.version),
            )
            progress(f"kubernetes {component.version}: {name} built in {time.monotonic() - t0:.0f} s")

    return _once(component, progress, build)


def build_helm(progress: Progress = print, component: Component = HELM) -> Component:
    def build(work: Path) -> None:
        write_module(work, helm_wrapper_go_mod(component.version))
        progress(f"helm {component.version}: building")
        go_build(
            "helm.sh/helm/v4/cmd/helm", component.binary("helm"), cwd=work, ldflags=helm_ldflags(component.version)
        )

    return _once(component, progress, build)


MONITORING_CRD_FILES = ("podmonitors", "servicemonitors", "prometheusrules", "probes")


def monitoring_crd_paths(component: Component = MONITORING_CRDS) -> list[Path]:
    return [component.directory / "crds" / f"monitoring.coreos.com_{name}.yaml" for name in MONITORING_CRD_FILES]


def fetch_monitoring_crds(progress: Progress = print, component: Component = MONITORING_CRDS) -> Component:
    """prometheus-operator's monitoring CRDs out of its module into ``<component>/crds`` (once)."""

    def build(work: Path) -> None:
        progress(f"prometheus-operator {component.version}: fetching its CRDs")
        module = Path(
            _go_mod_download("github.com/prometheus-operator/prometheus-operator", component.version, work, "Dir")
        )
        for target in monitoring_crd_paths(component):
            source = module / "example" / "prometheus-operator-crd" / target.name
            if not source.is_file():
                raise BuildError(f"prometheus-operator v{component.version}: no {source.name} in its module")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(source.read_bytes())

    return _once(component, progress, build)


def build_all(progress: Progress = print) -> None:
    build_kubernetes(progress)
    build_helm(progress)
    fetch_monitoring_crds(progress)
