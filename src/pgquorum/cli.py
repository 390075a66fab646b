"""The ``pgquorum`` command: ``agent`` runs one agent, ``local`` drives the embedded local cluster,
``ctl`` operates a running cluster through its REST API (the same as ``pgquorumctl``), ``kube`` runs a real
multi-node Kubernetes on this machine.

Failures print one line naming what is wrong and how to fix it, and exit non-zero; never a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from pgquorum.agent.config import ConfigError
from pgquorum.chaos.cli import configure_parser as configure_chaos_parser
from pgquorum.ctl.main import configure_parser as configure_ctl_parser
from pgquorum.kube.cli import configure_parser as configure_kube_parser


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        raise SystemExit(2)


def _members_table(status: dict[str, Any]) -> str:
    rows = [("MEMBER", "ROLE", "TERM", "TIMELINE", "LAG(bytes)", "PG PORT", "API", "AGENT PID", "POSTGRES PID")]
    for m in status["members"]:
        rows.append(
            (
                m["name"],
                m["role"],
                str(m["term"] if m["term"] is not None else "-"),
                str(m["timeline"] or "-"),
                str(m["lag_bytes"] if m["lag_bytes"] is not None else "-"),
                str(m["pg_port"] or "-"),
                m["api_url"],
                str(m["agent_pid"] or "-"),
                str(m["postgres_pid"] or "-"),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows)


def _print_status(status: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(status, indent=2))
        return
    print(f"leader: {status['leader'] or '-'}   term: {status['term'] if status['term'] is not None else '-'}")
    print(_members_table(status))
    print(f'\nconnect: psql "{status["dsn"]}"')


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="pgquorum", description="PostgreSQL high availability with etcd leases and terms")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    agent = sub.add_parser("agent", help="run the agent beside one PostgreSQL instance")
    agent.add_argument("--config", required=True, type=Path, help="agent YAML configuration file")

    local = sub.add_parser("local", help="the local cluster: etcd + members on loopback")
    lsub = local.add_subparsers(dest="local_command", required=True, parser_class=_Parser)

    def with_dir(sp: argparse.ArgumentParser) -> argparse.ArgumentParser:
        sp.add_argument("--data-dir", type=Path, default=None, help="cluster directory (default: per user)")
        return sp

    up = with_dir(lsub.add_parser("up", help="start etcd and the members; return when healthy"))
    up.add_argument("--members", type=int, default=3, help="data members (default 3)")
    up.add_argument(
        "--witnesses", type=int, default=0, help="voting members without PostgreSQL (e.g. 2 members + 1 witness)"
    )
    up.add_argument("--timeout", type=float, default=180.0, help="seconds to wait for a healthy cluster")
    up.add_argument("--json", action="store_true", help="print the status as JSON")
    up.add_argument("--prometheus", action="store_true", help="also run Prometheus scraping the agents and etcd")
    up.add_argument(
        "--stonith-local-kill",
        action="store_true",
        help="before promoting, a new leader SIGKILLs the old leader's agent and postgres (a STONITH hook)",
    )
    up.add_argument("--sync", choices=["off", "quorum"], default=None, help="quorum commit (synchronous.mode)")
    up.add_argument("--k", type=int, default=None, help="with --sync quorum: standbys that confirm each commit")
    up.add_argument(
        "--durability", choices=["required", "preferred"], default=None, help="with --sync quorum (default required)"
    )
    st = with_dir(lsub.add_parser("status", help="leader, term and every member"))
    st.add_argument("--json", action="store_true", help="machine-readable output (stable keys)")
    start = with_dir(lsub.add_parser("start", help="start a stopped or killed member again"))
    start.add_argument("--member", required=True)
    kill = with_dir(lsub.add_parser("kill", help="crash a member (SIGKILL) to watch a failover"))
    kill.add_argument("--member", required=True, help="member name, or 'leader'")
    kill.add_argument("--what", choices=["node", "agent", "postgres"], default="node")
    down = with_dir(lsub.add_parser("down", help="stop everything this cluster started"))
    down.add_argument("--destroy", action="store_true", help="also delete the cluster directory")
    demo = with_dir(lsub.add_parser("demo", help="bring the cluster up, kill the leader, watch the failover"))
    demo.add_argument("--members", type=int, default=2, help="data members (default 2)")
    demo.add_argument("--witnesses", type=int, default=1, help="voting members without PostgreSQL (default 1)")

    ctl = sub.add_parser("ctl", help="operate a running cluster through its REST API (same as pgquorumctl)")
    configure_ctl_parser(ctl)
    configure_chaos_parser(sub.add_parser("chaos", help="fault injection in network namespaces, history checker"))
    configure_kube_parser(sub.add_parser("kube", help="a real multi-node Kubernetes on this machine (or kind)"))
    from pgquorum.operator.cli import configure_parser as configure_operator_parser

    configure_operator_parser(sub.add_parser("operator", help="the Kubernetes operator (PostgresCluster resources)"))
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "ctl":
        from pgquorum.ctl.main import run as run_ctl

        return run_ctl(args)
    if args.command == "chaos":
        from pgquorum.chaos.cli import run as run_chaos

        return run_chaos(args)
    if args.command == "kube":
        from pgquorum.kube.cli import run as run_kube

        return run_kube(args)
    if args.command == "operator":
        from pgquorum.operator.cli import run as run_operator

        return run_operator(args)
    try:
        if args.command == "agent":
            from pgquorum.agent.main import run_agent

            return run_agent(args.config)
        return _local(args)
    except ConfigError as exc:
        print(f"pgquorum: configuration error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        from pgquorum.local.runner import LocalError

        if isinstance(exc, LocalError):
            print(f"pgquorum: {exc}", file=sys.stderr)
            return 1
        raise


def _sync_args(args: argparse.Namespace) -> dict[str, object] | None:
    """``--sync/--k/--durability`` as the agents' ``synchronous`` setting (validated like the YAML)."""
    from pgquorum.agent.config import sync_settings

    given = {"mode": args.sync, "k": args.k, "durability": args.durability}
    if all(v is None for v in given.values()):
        return None
    if args.sync != "quorum" and (args.k is not None or args.durability is not None):
        raise ConfigError("--k/--durability: only with --sync quorum")
    raw = {key: value for key, value in given.items() if value is not None}
    return sync_settings(raw, where="--sync").as_dict()


def _local(args: argparse.Namespace) -> int:
    from pgquorum.local.runner import LocalCluster

    cluster = LocalCluster(args.data_dir)
    cmd = args.local_command
    if cmd == "up":
        synchronous = _sync_args(args)
        cluster.up(
            members=args.members,
            timeout=args.timeout,
            prometheus=args.prometheus,
            synchronous=synchronous,
            witnesses=args.witnesses,
            stonith=[{"type": "local-kill", "data_dir": str(cluster.data_dir)}] if args.stonith_local_kill else None,
        )
        status = cluster.status()
        if args.json:
            print(json.dumps(status, indent=2))
        else:
            print(f"local cluster is healthy ({cluster.data_dir})")
            _print_status(status, False)
            if status.get("prometheus"):
                print(f"prometheus: {status['prometheus']}  (graphs: {status['prometheus']}/graph)")
        return 0
    if cmd == "status":
        _print_status(cluster.status(), args.json)
        return 0
    if cmd == "start":
        cluster.start_member(args.member)
        print(f"started {args.member}")
        return 0
    if cmd == "kill":
        name = args.member
        if name == "leader":
            name = cluster.status()["leader"]
            if not name:
                print("pgquorum: --member leader: the cluster has no leader right now", file=sys.stderr)
                return 1
        killed = cluster.kill_member(name, args.what)
        print(f"killed {args.what} of {name}: {killed}")
        return 0
    if cmd == "down":
        stopped = cluster.down(destroy=args.destroy)
        print("stopped: " + (", ".join(stopped) or "nothing was running"))
        return 0
    if cmd == "demo":
        from pgquorum.local.demo import run_demo

        return run_demo(cluster, members=args.members, witnesses=args.witnesses)
    raise AssertionError(cmd)
