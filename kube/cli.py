"""``pgquorum kube``: a real multi-node Kubernetes on this machine (or kind where Docker runs).

pgquorum kube up [--nodes 3] [--provider local|kind]   # returns when every node is Ready and DNS answers
pgquorum kube status [--json]
pgquorum kube kubeconfig [--path]
pgquorum kube down [--destroy]
pgquorum kube build                                     # only build binaries and images into the cache
pgquorum kube load [--only pgquorum]                    # rebuild changed images, import into every node
pgquorum kube install [--etcd] [--set KEY=VALUE ...]    # the Helm chart, this checkout's image, onto it
pgquorum kube prometheus [--node node1] [--remove]      # Prometheus in the cluster: agents, etcd, alerts
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from pgquorum.cache import BuildError
from pgquorum.kube.plan import DEFAULT_NAME, MAX_NODES, PlanError, plan_cluster


def configure_parser(kube: argparse.ArgumentParser) -> None:
    sub = kube.add_subparsers(dest="kube_command", required=True, parser_class=type(kube))

    def common(sp: argparse.ArgumentParser) -> argparse.ArgumentParser:
        sp.add_argument("--provider", choices=["local", "kind"], default="local", help="local (default) or kind")
        sp.add_argument("--name", default=DEFAULT_NAME, help=f"cluster name (default {DEFAULT_NAME})")
        return sp

    up = common(sub.add_parser("up", help="create the cluster; returns when every node is Ready and DNS answers"))
    up.add_argument("--nodes", type=int, default=3, help=f"worker nodes, 1 to {MAX_NODES} (default 3)")
    up.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for Ready nodes and DNS")
    up.add_argument("--node-image", default=None, help="kind only: the node image (kind's default otherwise)")
    st = common(sub.add_parser("status", help="control plane, nodes and their readiness"))
    st.add_argument("--json", action="store_true")
    st.add_argument("--nodes", type=int, default=None, help=argparse.SUPPRESS)
    kc = common(sub.add_parser("kubeconfig", help="print the admin kubeconfig (or its path)"))
    kc.add_argument("--path", action="store_true", help="print the file's path instead of its content")
    down = common(sub.add_parser("down", help="remove every process, mount, namespace, veth and route it made"))
    down.add_argument("--destroy", action="store_true", help="also delete the PKI and the nodes' image stores")
    common(sub.add_parser("build", help="build the Kubernetes binaries, Helm and the images into the cache"))
    load = common(sub.add_parser("load", help="rebuild changed images and import them into every running node"))
    load.add_argument("--only", action="append", metavar="IMAGE", help="only this image (e.g. pgquorum); repeatable")
    inst = common(
        sub.add_parser(
            "install",
            help="helm upgrade --install the chart (release pgquorum in pgquorum-system) with this checkout's "
            "image, then restart the operator so it runs it",
        )
    )
    inst.add_argument("--etcd", action="store_true", help="with the bundled 3-member etcd (etcd.enabled=true)")
    inst.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a chart value; repeatable")
    prom = common(
        sub.add_parser(
            "prometheus",
            help="run Prometheus in the cluster (namespace pgquorum-monitoring): it scrapes every agent and the "
            "bundled etcd and evaluates the chart's alerts; prints its URL (reachable from this host)",
        )
    )
    prom.add_argument(
        "--node", default="node1", help="the node it runs on (default node1: keep it off the nodes you cut)"
    )
    prom.add_argument("--remove", action="store_true", help="delete it instead")


def _plan(args: argparse.Namespace, nodes: int | None = None) -> Any:
    from pgquorum.kube.cluster import LocalKube

    count = nodes if nodes is not None else _recorded_nodes(args.name)
    return LocalKube(plan_cluster(count, name=args.name))


def _recorded_nodes(name: str) -> int:
    """How many nodes the last ``up`` of this cluster made (so status/down need no --nodes)."""
    plan = plan_cluster(1, name=name)
    try:
        return max(1, min(MAX_NODES, int((plan.state_dir / "nodes.count").read_text())))
    except (OSError, ValueError):
        return MAX_NODES  # down/status look at every possible node


def run(args: argparse.Namespace) -> int:
    from pgquorum.kube.cluster import ClusterError
    from pgquorum.kube.host import HostError
    from pgquorum.kube.kind import KindError

    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(line_buffering=True)  # progress lines as they happen, also into a log file
    try:
        if args.provider == "kind":
            return _kind(args)
        return _local(args)
    except (PlanError, ClusterError, HostError, KindError, BuildError) as exc:
        print(f"pgquorum kube: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _local(args: argparse.Namespace) -> int:
    cmd = args.kube_command
    if cmd == "build":
        from pgquorum.kube import images
        from pgquorum.kube.build import build_all

        build_all()
        for archive in images.ensure_images(print):
            print(archive)
        return 0
    if cmd == "install":
        return _install(args)
    if cmd == "prometheus":
        return _prometheus(args)
    if cmd == "up":
        kube = _plan(args, args.nodes)
        kube.plan.state_dir.mkdir(parents=True, exist_ok=True)
        (kube.plan.state_dir / "nodes.count").write_text(f"{args.nodes}\n")
        kube.up(timeout=args.timeout)
        _print_status(kube.status(), False)
        return 0
    kube = _plan(args)
    if cmd == "load":
        from pgquorum.kube import images

        known = [i.name for i in images.IMAGES]
        for name in args.only or []:
            if name not in known:
                print(f"pgquorum kube load: --only {name}: no such image (known: {', '.join(known)})", file=sys.stderr)
                return 2
        done = kube.load_images(args.only)
        print("\n".join(done) if done else "every node already has these images")
        return 0
    if cmd == "status":
        status = kube.status()
        _print_status(status, args.json)
        return 0 if status["running"] else 3
    if cmd == "kubeconfig":
        path = kube.plan.admin_kubeconfig
        if not path.exists():
            print(f"pgquorum kube: no kubeconfig at {path}: run 'pgquorum kube up' first", file=sys.stderr)
            return 1
        print(path if args.path else path.read_text(), end="\n" if args.path else "")
        return 0
    if cmd == "down":
        kube.down(destroy=args.destroy)
        return 0
    raise AssertionError(cmd)


def _kind(args: argparse.Namespace) -> int:
    from pgquorum.kube import kind
    from pgquorum.kube.plan import plan_cluster as _p

    cmd = args.kube_command
    if cmd == "up":
        from pgquorum.kube import images

        refs = [img.reference for img in images.IMAGES]
        kind.up(args.name, args.nodes, refs, _p(1, name=args.name).state_dir / "kind", print, args.node_image)
        return 0
    if cmd == "down":
        kind.down(args.name, print)
        return 0
    if cmd == "kubeconfig":
        print(kind.kubeconfig(args.name), end="")
        return 0
    if cmd == "status":
        status = kind.status(args.name)
        print(json.dumps(status, indent=2) if args.json else status)
        return 0 if status["running"] else 3
    print("pgquorum kube build: the kind provider builds images with docker (see README)", file=sys.stderr)
    return 2


def _node_rss(parts: dict[str, float | None]) -> str:
    known = [v for v in parts.values() if v is not None]
    return f"{sum(known):.0f}" if known else "-"


def _print_status(status: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(status, indent=2))
        return
    cp = ", ".join(f"{k} {'up' if v else 'down'}" for k, v in status["control_plane"].items())
    state = "running" if status["running"] else "stopped"
    print(f"cluster {status['name']} (Kubernetes {status['kubernetes_version']}): {state}")
    print(f"server {status['server']}   control plane: {cp}")
    cp_rss = {k: v for k, v in status["control_plane_rss_mib"].items() if v is not None}
    if cp_rss:
        parts = ", ".join(f"{k} {v:.0f}" for k, v in cp_rss.items())
        print(f"control plane RSS {sum(cp_rss.values()):.0f} MiB ({parts})")
    rows = [("NODE", "ADDRESS", "POD CIDR", "READY", "CONTAINERD", "KUBELET", "KUBE-PROXY", "RSS MiB")]
    for n in status["nodes"]:
        if not (n["containerd"] or n["kubelet"] or n["ready"]) and not status["running"]:
            continue
        rows.append(
            (
                n["name"],
                n["address"],
                n["pod_cidr"],
                "yes" if n["ready"] else "no",
                *("up" if n[k] else "down" for k in ("containerd", "kubelet", "kube_proxy")),
                _node_rss(n["rss_mib"]),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    print("\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows))
    print(f"\nexport KUBECONFIG={status['kubeconfig']}   # kubectl: {status['kubectl']}")


def _install(args: argparse.Namespace) -> int:
    from pgquorum.kube.chart_install import NAMESPACE, install_chart

    for value in args.set:
        if "=" not in value or not value.split("=", 1)[0]:
            print(
                f"pgquorum kube install: --set {value!r}: expected KEY=VALUE, e.g. operator.replicas=3", file=sys.stderr
            )
            return 2
    kube = _plan(args)
    values = [v for item in args.set for v in ("--set", item)]
    if args.etcd:
        values += ["--set", "etcd.enabled=true"]
    kube.load_images(["pgquorum"])
    print(install_chart(kube.kubectl, values).strip())
    k = kube.kubectl
    k.run(["-n", NAMESPACE, "rollout", "restart", "deployment/pgquorum-operator"])
    k.run(["-n", NAMESPACE, "rollout", "status", "deployment/pgquorum-operator", "--timeout=180s"], timeout=190)
    return 0


def _prometheus(args: argparse.Namespace) -> int:
    from pgquorum.kube.prometheus import install_prometheus, uninstall_prometheus

    kube = _plan(args)
    if args.remove:
        uninstall_prometheus(kube.kubectl)
        return 0
    nodes = [n.name for n in kube.plan.nodes]
    if args.node not in nodes:
        print(
            f"pgquorum kube prometheus: --node {args.node!r}: not a node of this cluster ({', '.join(nodes)})",
            file=sys.stderr,
        )
        return 2
    kube.load_images(["prometheus", "pgquorum"])
    url = install_prometheus(kube.kubectl, node=args.node)
    print(f"{url}   # e.g. curl '{url}/api/v1/query?query=pgquorum_is_leader'")
    return 0
