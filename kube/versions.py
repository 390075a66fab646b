"""What the cluster command builds, pinned, and where each build lands in the cache.

Each component is built from its Go module (the only source reachable here) into
``<cache>/kube/<component>-<version>/``; a directory is complete once its ``.complete`` marker
exists, so an interrupted build is redone and a finished one is never rebuilt.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pgquorum.cache import cache_dir

KUBERNETES_VERSION = "1.34.4"
COREDNS_VERSION = "1.12.4"
HELM_VERSION = "4.3.2"
LOCAL_PATH_PROVISIONER_VERSION = "0.0.30"
# prometheus-operator's CRDs (PodMonitor, ServiceMonitor, PrometheusRule, ...), which ship in its Go
# module: the chart renders its monitoring objects only where they exist, and the tests apply them
# to the real apiserver. The newest the module proxy serves here.
PROMETHEUS_OPERATOR_VERSION = "0.89.0"

# The five node and control-plane binaries, and kubectl of the same version.
KUBERNETES_BINARIES = (
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kubelet",
    "kube-proxy",
    "kubectl",
)


@dataclass(frozen=True)
class Component:
    name: str
    version: str

    @property
    def directory(self) -> Path:
        return cache_dir() / "kube" / f"{self.name}-{self.version}"

    @property
    def bin_dir(self) -> Path:
        return self.directory / "bin"

    @property
    def marker(self) -> Path:
        return self.directory / ".complete"

    def binary(self, name: str) -> Path:
        return self.bin_dir / name

    @property
    def complete(self) -> bool:
        return self.marker.is_file()


KUBERNETES = Component("kubernetes", KUBERNETES_VERSION)
COREDNS = Component("coredns", COREDNS_VERSION)
HELM = Component("helm", HELM_VERSION)
LOCAL_PATH_PROVISIONER = Component("local-path-provisioner", LOCAL_PATH_PROVISIONER_VERSION)
MONITORING_CRDS = Component("prometheus-operator-crds", PROMETHEUS_OPERATOR_VERSION)


def kubernetes_minor(version: str = KUBERNETES_VERSION) -> tuple[str, str]:
    """("1", "34") for "1.34.4": the gitMajor/gitMinor the binaries report."""
    major, minor, _patch = version.split(".")
    return major, minor


def staging_version(version: str = KUBERNETES_VERSION) -> str:
    """k8s.io/kubernetes v1.X.Y publishes its staging modules (k8s.io/api, ...) as v0.X.Y."""
    _major, minor, patch = version.split(".")
    return f"v0.{minor}.{patch}"
