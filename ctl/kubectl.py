"""``kubectl pgquorum`` (the executable ``kubectl-pgquorum``): a PostgresCluster's status, history,
an audited switchover and an unplanned failover.

All cluster access runs ``kubectl`` (``$KUBECTL`` or on PATH) with ``-n``/``--kubeconfig``/``--context``:
no Kubernetes client library. ``status`` and ``switchover`` use only the resource (a switchover is
asked for in ``spec.switchover`` and followed in ``status.switchover``: audited like any change);
``history`` and ``failover`` run ``pgquorumctl`` in a member's pod with that member's API address and
credentials (its agent configuration). Output and errors are pgquorumctl's: its tables, ``--json``,
one line on stderr, exit 1 on a failure, 2 on a wrong command line.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import yaml

from pgquorum.ctl import format as fmt
from pgquorum.ctl.client import ClusterView, CtlError, HistoryItem, UsageError
from pgquorum.ctl.main import CtlParser, _positive, can_confirm, confirm, describe_member, failover_notes, guarded

PROG = "kubectl pgquorum"
ENV_KUBECTL = "KUBECTL"
# What the operator names (operator/crd.py, operator/manifests.py; the unit tests check they agree).
RESOURCE = "postgresclusters.pgquorum.io"
CONTAINER = "agent"
REQUEST_TIMEOUT = 60.0  # seconds for one kubectl call
FAILOVER_TIMEOUT = 180.0  # kubectl exec of a failover that waits (pgquorumctl waits up to 120 s)
PAST_SLACK = timedelta(seconds=60)  # an --at this far behind the clock is a mistake, not skew
Json = dict[str, Any]

_RFC3339 = re.compile(r"^\d{4}-\d\d-\d\d[Tt]\d\d:\d\d:\d\d(\.\d+)?([Zz]|[+-]\d\d:\d\d)$")
_LOCAL = {"", "0.0.0.0", "::", "[::]", "*"}


def config_map(cluster: str) -> str:
    return f"{cluster}-config"


# -- decisions (pure) ----------------------------------------------------------------------------


def rfc3339(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_at(text: str, now: datetime) -> str:
    """``--at``: an RFC 3339 time (seconds and an offset) not in the past; as UTC ``...Z``."""
    example = "e.g. 2026-12-04T06:30:00Z or 2026-12-04T08:30:00+02:00"
    value = text.strip()
    if not _RFC3339.match(value):
        raise UsageError(f"--at {text!r}: expected an RFC 3339 time with seconds and an offset ({example})")
    try:
        when = datetime.fromisoformat(value.upper().replace("Z", "+00:00"))
    except ValueError:
        raise UsageError(f"--at {text!r}: not a valid date or time ({example})") from None
    if when.microsecond:
        raise UsageError(f"--at {text!r}: whole seconds only ({example})")
    if when < now - PAST_SLACK:
        raise UsageError(f"--at {text!r}: that is in the past (now is {rfc3339(now)}); leave out --at for now")
    return rfc3339(when)


def switchover_patch(target: str, at: str) -> Json:
    """The merge patch asking for a switchover; ``at`` makes every request a new one."""
    return {"spec": {"switchover": {"target": target, "at": at}}}


def members(status: Mapping[str, Any]) -> list[Json]:
    got = status.get("members")
    return [m for m in got if isinstance(m, dict) and "name" in m] if isinstance(got, list) else []


def data_members(obj: Mapping[str, Any]) -> list[str]:
    """The data members the spec asks for: ``<name>-0`` .. ``<name>-(instances - 1)``."""
    name = obj["metadata"]["name"]
    instances = (obj.get("spec") or {}).get("instances", 3)
    return [f"{name}-{i}" for i in range(instances if isinstance(instances, int) else 0)]


def check_data_member(obj: Mapping[str, Any], member: str) -> str:
    names = data_members(obj)
    if member not in names:
        raise UsageError(
            f"--to {member}: not a data member of {obj['metadata']['name']}; use one of {', '.join(names) or 'none'}"
        )
    return member


def best_replica(status: Mapping[str, Any]) -> str:
    """The ready replica with the least lag (then by name): the default switchover target."""
    leader = status.get("leader")
    ready = [m for m in members(status) if m.get("role") == "replica" and m.get("ready") and m["name"] != leader]
    if not ready:
        said = [f"{m['name']} {m.get('role', '?')}{'' if m.get('ready') else ' (not ready)'}" for m in members(status)]
        roles = ", ".join(said) or "none"
        raise CtlError(f"no ready replica to hand over to (members: {roles}); wait, or pass --to MEMBER")
    lag = [(m.get("lagBytes") is None, m.get("lagBytes") or 0, m["name"]) for m in ready]
    return str(min(lag)[2])


def switchover_outcome(status: Mapping[str, Any], target: str, at: str) -> tuple[str, str] | None:
    """("Done" | "Refused", the line to print) once ``status.switchover`` has ended this request."""
    record = status.get("switchover") or {}
    if record.get("target") != target or record.get("at") != at:
        return None
    if record.get("state") == "Done":
        return "Done", f"switchover to {target} done, leader {status.get('leader', '-')} term {status.get('term', '-')}"
    if record.get("state") == "Refused":
        return "Refused", f"switchover to {target} refused: {record.get('message') or 'no reason given'}"
    return None


def exec_pod(status: Mapping[str, Any]) -> str:
    """A ready pod to run pgquorumctl in: the leader's, else a data member's, else a witness's."""
    leader = status.get("leader")
    ready = [m for m in members(status) if m.get("ready") and m.get("pod")]
    if not ready:
        raise CtlError("no ready pod in the cluster (status.members); see 'kubectl pgquorum status'")
    best = min(ready, key=lambda m: (m["name"] != leader, m.get("role") == "witness", m["name"]))
    return str(best["pod"])


def member_pod(status: Mapping[str, Any], member: str) -> str:
    m = next((m for m in members(status) if m["name"] == member), None)
    if m is None or not m.get("pod"):
        raise CtlError(f"{member}: has no pod right now (status.members); it cannot be promoted")
    return str(m["pod"])


def ctl_args(agent_config: Mapping[str, Any], pod: str) -> list[str]:
    """pgquorumctl's ``--api`` and credentials inside ``pod``, from its agent configuration."""
    listen = agent_config.get("api_listen")
    host, sep, port = str(listen or "").rpartition(":")
    if not sep or not port.isdigit():
        raise CtlError(f"{pod}: its agent configuration has no api_listen host:port (got {listen!r})")
    host = "127.0.0.1" if host in _LOCAL else host
    args = ["--api", f"http://{host}:{port}"]
    api = agent_config.get("api") or {}
    if api.get("auth_token_file"):
        args += ["--token-file", str(api["auth_token_file"])]
    elif api.get("username") and api.get("password_file"):
        args += ["--user", str(api["username"]), "--password-file", str(api["password_file"])]
    return args


def cluster_view(status: Mapping[str, Any]) -> ClusterView:
    """``status`` as pgquorumctl's view of a cluster, for its confirmation wording."""
    state = {True: "ready", False: "not ready"}
    ms = [
        dict(name=m["name"], role=m.get("role"), state=state[bool(m.get("ready"))], lag_bytes=m.get("lagBytes"))
        for m in members(status)
    ]
    return ClusterView.from_json({"leader": status.get("leader"), "term": status.get("term"), "members": ms})


def status_text(cluster: str, namespace: str, status: Mapping[str, Any]) -> str:
    """``status``: a header (phase, leader, quorum, conditions that are not True), then the members."""
    if not status:
        return f"cluster {cluster} (namespace {namespace}): no status yet (is the pgquorum operator running?)"
    head = f"cluster {cluster} (namespace {namespace}): {status.get('phase', '?')}"
    head += f", leader {status.get('leader') or '- (none)'}, term {status.get('term', '-')}"
    head += f", timeline {status.get('timeline', '-')}"
    lines = [head]
    quorum = status.get("quorum") or {}
    if quorum:
        lines.append(f"quorum: {'provable' if quorum.get('provable') else 'NOT provable'}: {quorum.get('reason', '')}")
    for c in status.get("conditions") or []:
        if c.get("status") != "True":
            lines.append(
                f"{c.get('type')}={c.get('status')}: {c.get('reason', '')} ({fmt.one_line(c.get('message', ''))})"
            )
    so = status.get("switchover")
    if so:
        lines.append(
            f"switchover to {so.get('target')} (at {so.get('at', '-')}): {so.get('state')}: {so.get('message')}"
        )
    rows = []
    for m in members(status):
        is_leader = m["name"] == status.get("leader") or m.get("role") == "leader"
        lag = "" if is_leader else fmt.human_bytes(m.get("lagBytes"))
        row = [m["name"], m.get("role"), m.get("pod"), m.get("node"), m.get("lsn"), lag]
        rows.append(["-" if v is None else str(v) for v in row] + ["yes" if m.get("ready") else "no"])
    lines.append(fmt.render_table(["MEMBER", "ROLE", "POD", "NODE", "LSN", "LAG", "READY"], rows))
    return "\n".join(lines)


def kubectl_error(stderr: str) -> str:
    """kubectl's error line (without ``kubectl exec``'s ``command terminated`` note)."""
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    lines = [ln for ln in lines if not ln.startswith("command terminated with exit code")]
    errors = [ln for ln in lines if ln.lower().startswith(("error", "the ")) or "pgquorumctl:" in ln]
    return (errors or lines or ["failed (no message)"])[-1]


def find_kubectl(env: Mapping[str, str]) -> str:
    given = env.get(ENV_KUBECTL, "").strip()
    if given:
        found = shutil.which(given, path=env.get("PATH"))
        if found is None:
            raise UsageError(f"${ENV_KUBECTL} {given!r}: not an executable; point it at kubectl, or unset it")
        return found
    found = shutil.which("kubectl", path=env.get("PATH"))
    if found is None:
        raise UsageError(f"kubectl: not found on PATH; install kubectl or set ${ENV_KUBECTL}=/path/to/kubectl")
    return found


# -- kubectl ------------------------------------------------------------------------------------


@dataclass
class Kube:
    binary: str
    options: list[str]  # --kubeconfig, --context
    namespace: str = "default"

    def run(self, args: Sequence[str], timeout: float = REQUEST_TIMEOUT) -> subprocess.CompletedProcess[str]:
        argv = [self.binary, *self.options, "-n", self.namespace, *args]
        try:
            return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise CtlError(f"kubectl {' '.join(args[:3])}: no answer within {timeout:g} s") from None
        except OSError as exc:
            raise UsageError(f"kubectl {self.binary}: cannot run it ({exc.strerror or exc})") from None

    def check(self, args: Sequence[str], timeout: float = REQUEST_TIMEOUT) -> str:
        proc = self.run(args, timeout)
        if proc.returncode != 0:
            raise CtlError(f"kubectl {' '.join(args[:3])}: {kubectl_error(proc.stderr)}")
        return proc.stdout

    def cluster(self, name: str) -> Json:
        proc = self.run(["get", RESOURCE, name, "-o", "json"])
        if proc.returncode != 0 and "(NotFound)" in proc.stderr:
            raise UsageError(
                f"CLUSTER {name}: no PostgresCluster {name!r} in namespace {self.namespace} "
                f"('kubectl get pgq -n {self.namespace}' lists them; -n NAMESPACE picks another namespace)"
            )
        if proc.returncode != 0:
            raise CtlError(f"kubectl get pgq {name}: {kubectl_error(proc.stderr)}")
        obj: Json = json.loads(proc.stdout)
        return obj

    def context_namespace(self) -> str:
        proc = self.run(["config", "view", "--minify", "-o", "jsonpath={..namespace}"])
        return (proc.stdout.split() or ["default"])[0] if proc.returncode == 0 else "default"


# -- commands -----------------------------------------------------------------------------------


class Plugin:
    def __init__(self, args: argparse.Namespace, env: Mapping[str, str]) -> None:
        self.args = args
        options = [f"--kubeconfig={args.kubeconfig}"] if args.kubeconfig else []
        options += [f"--context={args.context}"] if args.context else []
        self.kube = Kube(find_kubectl(env), options)
        self.kube.namespace = args.namespace or self.kube.context_namespace()

    def run(self) -> int:
        cmd = {"status": self.status, "history": self.history, "switchover": self.switchover}
        return cmd.get(self.args.command, self.failover)()

    def out(self, text: str) -> None:
        print(text, flush=True)

    def status(self) -> int:
        st = self.kube.cluster(self.args.cluster).get("status") or {}
        self.out(fmt.json_text(st) if self.args.json else status_text(self.args.cluster, self.kube.namespace, st))
        return 0

    def pgquorumctl(self, pod: str, args: Sequence[str], timeout: float = REQUEST_TIMEOUT) -> str:
        """``pgquorumctl`` in the pod's agent container, with that member's API and credentials."""
        raw = self.kube.check(["get", "configmap", config_map(self.args.cluster), "-o", "json"]) or "{}"
        text = (json.loads(raw).get("data") or {}).get(f"{pod}.yaml")
        if not text:
            raise CtlError(f"configmap {config_map(self.args.cluster)}: no agent configuration for {pod}")
        argv = ["exec", pod, "-c", CONTAINER, "--", "pgquorumctl", *ctl_args(yaml.safe_load(text), pod), *args]
        proc = self.kube.run(argv, timeout)
        lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
        if proc.returncode != 0:
            for ln in lines[:-1]:
                if ln.startswith("WARNING"):
                    print(ln, file=sys.stderr)
            raise CtlError(f"in pod {pod}: {kubectl_error(proc.stderr)}")
        for ln in lines:
            print(ln, file=sys.stderr)
        return proc.stdout

    def history(self) -> int:
        st = self.kube.cluster(self.args.cluster).get("status") or {}
        raw = json.loads(self.pgquorumctl(exec_pod(st), ["--json", "history"]))
        if self.args.json:
            self.out(fmt.json_text(raw))
        else:
            self.out(fmt.history_table([HistoryItem.from_json(i) for i in raw.get("history") or []]))
        return 0

    def failover(self) -> int:
        a = self.args
        can_confirm("failover", a.force)
        obj = self.kube.cluster(a.cluster)
        st = obj.get("status") or {}
        pod = member_pod(st, check_data_member(obj, a.to))
        if not a.force:
            view = cluster_view(st)
            for note in failover_notes(view, a.to):
                print(note, file=sys.stderr)
            confirm(f"Fail over to {describe_member(view, a.to)}?", "failover", a.force)
        args = ["--json"] if a.json else []
        self.out(self.pgquorumctl(pod, [*args, "failover", "--candidate", a.to, "--force"], FAILOVER_TIMEOUT).rstrip())
        return 0

    def switchover(self) -> int:
        a = self.args
        now = datetime.now(UTC)
        at = parse_at(a.at, now) if a.at else rfc3339(now)
        obj = self.kube.cluster(a.cluster)
        st = obj.get("status") or {}
        target = check_data_member(obj, a.to) if a.to else best_replica(st)
        asked = switchover_patch(target, at)
        self.kube.check(["patch", RESOURCE, a.cluster, "--type=merge", "-p", json.dumps(asked)])
        if a.no_wait:
            self.out(fmt.json_text(asked["spec"]["switchover"]) if a.json else f"asked: switchover to {target} at {at}")
            return 0
        start = max(now, datetime.fromisoformat(at.replace("Z", "+00:00")))
        deadline = time.monotonic() + (start - now).total_seconds() + a.timeout
        said = ""
        while True:
            obj = self.kube.cluster(a.cluster)
            st = obj.get("status") or {}
            ended = switchover_outcome(st, target, at)
            if ended is not None:
                self.out(fmt.json_text(st["switchover"]) if a.json else ended[1])
                return 0 if ended[0] == "Done" else 1
            if (obj.get("spec") or {}).get("switchover") != asked["spec"]["switchover"]:
                raise CtlError(f"switchover to {target} at {at}: replaced by another request in spec.switchover")
            record = st.get("switchover") or {}
            mine = record.get("target") == target and record.get("at") == at
            now_says = f"{record.get('state')}: {record.get('message')}" if mine else "waiting for the operator"
            if now_says != said and not a.json:
                print(f"switchover to {target}: {now_says}", file=sys.stderr, flush=True)
                said = now_says
            if time.monotonic() > deadline:
                raise CtlError(
                    f"switchover to {target} at {at}: not done within {a.timeout:g} s ({now_says}); the request "
                    f"stands: 'kubectl pgquorum status {a.cluster}' shows how it goes"
                )
            time.sleep(1.0)


# -- command line -------------------------------------------------------------------------------


def _add_global(p: argparse.ArgumentParser, suppress: bool) -> None:
    """kubectl's own options, accepted before and after the command."""

    def d(value: Any) -> Any:
        return argparse.SUPPRESS if suppress else value

    g = p.add_argument_group("kubectl options")
    g.add_argument("-n", "--namespace", default=d(None), help="the cluster's namespace (default: the context's)")
    g.add_argument("--kubeconfig", default=d(None), metavar="PATH", help="kubeconfig file (default: kubectl's)")
    g.add_argument("--context", default=d(None), metavar="NAME", help="kubeconfig context (default: the current)")
    p.add_argument("--json", action="store_true", default=d(False), help="machine-readable output")


def build_parser() -> argparse.ArgumentParser:
    p = CtlParser(prog=PROG, description="Operate a pgquorum PostgresCluster through kubectl.")
    _add_global(p, suppress=False)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=CtlParser)

    def command(name: str, help: str) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help, description=help)
        sp.add_argument("cluster", metavar="CLUSTER", help="the PostgresCluster's name")
        _add_global(sp, suppress=True)
        return sp

    command("status", "phase, leader, term, quorum, conditions and members (from .status)")
    command("history", "leadership changes (pgquorumctl history in a member's pod)")
    sw = command("switchover", "planned handover, asked for and audited in spec.switchover")
    sw.add_argument("--to", metavar="MEMBER", help="the new leader (default: the ready replica with the least lag)")
    sw.add_argument("--at", metavar="RFC3339", help="when, e.g. 2026-12-04T06:30:00Z (default: now)")
    sw.add_argument("--no-wait", action="store_true", help="return once the request is in the spec")
    sw.add_argument("--timeout", type=_positive, default=180.0, metavar="S", help="how long to wait (180)")
    fo = command("failover", "make MEMBER the leader even without a healthy leader (may lose data)")
    fo.add_argument("--to", metavar="MEMBER", required=True, help="the new leader")
    fo.add_argument("--force", action="store_true", help="do not ask for confirmation")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return guarded(PROG, lambda: Plugin(args, os.environ).run())
