"""The one Kubernetes test cluster (``pgquorum kube up``): shared by every module under tests/kube.

Uses a running cluster when one is up with every node Ready, else brings one up for the session and
takes it down after. Each test works in its own namespace. Missing host requirements fail the tests
(they do not skip): ``scripts/test`` runs the kube marker only as root, where they must hold."""

from __future__ import annotations

import sys
import uuid
from collections.abc import Iterator

import pytest
from kube_support import NODES, OPERATOR_NAMESPACE, explain, install_chart

from pgquorum.kube import host
from pgquorum.kube.cluster import LocalKube
from pgquorum.kube.plan import plan_cluster
from pgquorum.operator.install import NAME as OPERATOR


@pytest.fixture(scope="session")
def kube(request: pytest.FixtureRequest) -> Iterator[LocalKube]:
    problems = host.missing_requirements()
    if problems:
        pytest.fail("; ".join(problems), pytrace=False)
    capture = request.config.pluginmanager.getplugin("capturemanager")

    def progress(line: str) -> None:
        # bringing a cluster up takes a while: say what it is doing on the terminal, not in a capture
        with capture.global_and_fixture_disabled():
            print(f"\n[kube] {line}", file=sys.stderr, flush=True)

    cluster = LocalKube(plan_cluster(NODES), progress=progress)
    status = cluster.status()
    started_here = not (
        status["running"] and len(status["nodes"]) == NODES and all(n["ready"] for n in status["nodes"])
    )
    if started_here:
        cluster.up()
    yield cluster
    if started_here:
        cluster.down()


@pytest.fixture
def ns(kube: LocalKube) -> Iterator[str]:
    name = f"t-{uuid.uuid4().hex[:8]}"
    kube.kubectl.run(["create", "namespace", name])
    yield name
    kube.kubectl.run(["delete", "namespace", name, "--wait=false"], check=False)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    report = yield
    if report.when == "call":
        item.stash[_FAILED] = report.failed
    return report


_FAILED = pytest.StashKey[bool]()


@pytest.fixture(autouse=True)
def explain_failure(request: pytest.FixtureRequest) -> Iterator[None]:
    """After a failed kube test: what every PostgresCluster says it waits for, its pods, recent
    events and the operator's last log lines — a failure in CI has to explain itself."""
    yield
    if not request.node.stash.get(_FAILED, False) or "kube" not in request.fixturenames:
        return
    explain(request.getfixturevalue("kube").kubectl)


@pytest.fixture(scope="session")
def operator(kube: LocalKube) -> str:
    """The operator, installed as a user would: the chart (two replicas, kopf peering: one active;
    the bundled etcd) as release ``pgquorum`` in ``pgquorum-system`` with this checkout's image;
    its namespace. Installed once per cluster and left installed (cluster-wide RBAC: one install
    per cluster, as in real life); each session restarts it so it runs this checkout's code."""
    k = kube.kubectl
    kube.load_images(["pgquorum"])  # this checkout's code in the image
    install_chart(kube)
    ns = OPERATOR_NAMESPACE
    # new pods: the image tag is fixed, and IfNotPresent keeps a running pod on the old code
    k.run(["-n", ns, "rollout", "restart", f"deployment/{OPERATOR}"])
    k.run(["-n", ns, "rollout", "status", f"deployment/{OPERATOR}", "--timeout=180s"], timeout=190)
    return ns
