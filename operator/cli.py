"""``pgquorum operator``: run the kopf operator, or print the CRDs it needs.

pgquorum operator crd            # the PostgresCluster CRD (and kopf's peering CRDs) as YAML
pgquorum operator manifests [--namespace NS] [--image IMAGE] [--replicas N]   # the operator's install objects
pgquorum operator run [--namespace NS] [--peering NAME] [--priority N]
pgquorum operator delete-clusters --namespace NS NAME...   # delete, and wait for the operator to let go
"""

from __future__ import annotations

import argparse
import random
import sys
from typing import Any

import yaml


def configure_parser(op: argparse.ArgumentParser) -> None:
    sub = op.add_subparsers(dest="operator_command", required=True, parser_class=type(op))
    sub.add_parser("crd", help="print the CustomResourceDefinitions as YAML (kubectl apply -f -)")
    man = sub.add_parser(
        "manifests", help="print the operator's install objects as YAML (ServiceAccount, RBAC, Deployment, peering)"
    )
    man.add_argument("--namespace", default="pgquorum-system", help="where the operator runs (pgquorum-system)")
    man.add_argument("--image", default=None, help="operator image (default: this version's agent image)")
    man.add_argument("--replicas", type=int, default=2, help="operator replicas, one active (kopf peering; 2)")
    run = sub.add_parser("run", help="run the operator (in a pod: the service account's apiserver)")
    run.add_argument("--namespace", action="append", default=None, help="watch only these namespaces (repeatable)")
    run.add_argument("--peering", default="pgquorum", help="kopf peering object: one active operator per name")
    run.add_argument(
        "--priority",
        type=int,
        default=None,
        help="the highest-priority live replica is the active one (default: random, so two replicas never tie)",
    )
    run.add_argument("--liveness", default="http://0.0.0.0:8080/healthz", help="liveness endpoint for the probe")
    dc = sub.add_parser(
        "delete-clusters",
        help="delete PostgresClusters and wait until the operator has removed them (Helm's pre-delete hook)",
    )
    dc.add_argument("--namespace", required=True, help="the clusters' namespace")
    dc.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for them to go (120)")
    dc.add_argument("names", nargs="+", metavar="NAME", help="PostgresCluster names")


def peering_crds() -> list[dict[str, Any]]:
    """kopf's peering resources: the replicas of the operator see each other and one stays active."""
    out = []
    for scope, kind, plural in (
        ("Cluster", "ClusterKopfPeering", "clusterkopfpeerings"),
        ("Namespaced", "KopfPeering", "kopfpeerings"),
    ):
        out.append(
            {
                "apiVersion": "apiextensions.k8s.io/v1",
                "kind": "CustomResourceDefinition",
                "metadata": {"name": f"{plural}.kopf.dev"},
                "spec": {
                    "scope": scope,
                    "group": "kopf.dev",
                    "names": {"kind": kind, "plural": plural, "singular": kind.lower()},
                    "versions": [
                        {
                            "name": "v1",
                            "served": True,
                            "storage": True,
                            "schema": {
                                "openAPIV3Schema": {
                                    "type": "object",
                                    "properties": {
                                        "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
                                    },
                                }
                            },
                        }
                    ],
                },
            }
        )
    return out


def run(args: argparse.Namespace) -> int:
    if args.operator_command == "crd":
        from pgquorum.operator.crd import postgrescluster_crd

        print(yaml.safe_dump_all([postgrescluster_crd(), *peering_crds()], sort_keys=False), end="")
        return 0
    if args.operator_command == "manifests":
        return _manifests(args)
    if args.operator_command == "delete-clusters":
        return _delete_clusters(args)
    import kopf

    from pgquorum.agent.kubeapi import KubeApiError
    from pgquorum.agent.logs import setup_logging
    from pgquorum.operator.handlers import register, runtime_from_env

    setup_logging("operator", "INFO")
    import logging

    # kopf logs every timer run and aiohttp every probe at INFO: keep ours readable at 3 a.m.
    for noisy in ("kopf.objects", "aiohttp.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        rt = runtime_from_env()
    except KubeApiError as exc:
        print(f"pgquorum operator: {exc}", file=sys.stderr)
        return 2
    registry = kopf.OperatorRegistry()
    register(registry, rt)
    namespaces = args.namespace or []
    kopf.run(
        registry=registry,
        clusterwide=not namespaces,
        namespaces=namespaces,
        peering_name=args.peering,
        priority=args.priority if args.priority is not None else random.randint(1, 1_000_000),
        liveness_endpoint=args.liveness,
    )
    return 0


def _manifests(args: argparse.Namespace) -> int:
    from pgquorum.kube.images import PGQUORUM_IMAGE
    from pgquorum.operator.install import operator_objects
    from pgquorum.operator.spec import DNS_LABEL

    if not DNS_LABEL.match(args.namespace):
        print(f"pgquorum operator manifests: --namespace: {args.namespace!r} is not a DNS label", file=sys.stderr)
        return 2
    if not 1 <= args.replicas <= 5:
        print(f"pgquorum operator manifests: --replicas: expected 1 to 5, got {args.replicas}", file=sys.stderr)
        return 2
    objects = [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": args.namespace}},
        *operator_objects(args.namespace, args.image or PGQUORUM_IMAGE, replicas=args.replicas),
    ]
    print(yaml.safe_dump_all(objects, sort_keys=False), end="")
    return 0


def _delete_clusters(args: argparse.Namespace) -> int:
    from pgquorum.agent.kubeapi import KubeApiError
    from pgquorum.operator.handlers import runtime_from_env
    from pgquorum.operator.uninstall import UninstallError, delete_and_wait

    if args.timeout <= 0:
        print(
            f"pgquorum operator delete-clusters: --timeout: expected seconds > 0, got {args.timeout:g}", file=sys.stderr
        )
        return 2
    try:
        gone = delete_and_wait(runtime_from_env().api, args.namespace, args.names, args.timeout)
    except (KubeApiError, UninstallError) as exc:
        print(f"pgquorum operator delete-clusters: {exc}", file=sys.stderr)
        return 1
    print(f"deleted: {', '.join(gone) or '(none existed)'}")
    return 0
