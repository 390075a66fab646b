"""Deleting PostgresClusters while the operator still runs: the chart's pre-delete hook.

``helm uninstall`` removes the operator and its RBAC in the same pass as a PostgresCluster the
chart made; the cluster's finalizer (kopf keeps one while a timer runs on it) is then removed by
nobody and the resource, its pods and its namespace hang in Terminating. The hook deletes the
chart's clusters first and waits until the operator has let each go.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from pgquorum.agent.kubeapi import KubeApi
from pgquorum.operator.crd import GROUP, PLURAL, VERSION


class UninstallError(Exception):
    pass


def delete_and_wait(
    api: KubeApi,
    namespace: str,
    names: Sequence[str],
    timeout: float,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> list[str]:
    """Delete each named PostgresCluster in ``namespace`` and wait until all are gone; the names
    that existed. Raises UninstallError naming the clusters still there after ``timeout`` s."""
    base = f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}"
    deadline = clock() + timeout
    existed = []
    for name in names:
        status, _ = api.call("DELETE", f"{base}/{name}", timeout=10)
        if status != 404:
            existed.append(name)
    waiting = list(existed)
    while waiting:
        waiting = [n for n in waiting if api.call("GET", f"{base}/{n}", timeout=10)[0] != 404]
        if not waiting:
            break
        if clock() >= deadline:
            raise UninstallError(
                f"PostgresCluster {', '.join(waiting)} in {namespace} still there after {timeout:g} s: is the "
                "operator running? (kubectl -n <operator namespace> logs deployment/pgquorum-operator)"
            )
        sleep(1.0)
    return existed
