"""``pgquorum kube up|status|down`` on this machine: the executor of a ClusterPlan.

``up`` builds what is missing (cache), brings up etcd and the control plane on the host, then each
node in its namespace (containerd, kubelet, kube-proxy), loads the images, applies CoreDNS and the
local-path provisioner, and returns once every node is Ready and cluster DNS answers. Each ``up``
starts a fresh cluster (etcd, kubelets and volumes wiped); the nodes' image stores and the PKI stay
until ``down --destroy``. ``down`` also cleans up after a crashed run: it works from the plan, not
from what this process remembers.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pgquorum.chaos import netns
from pgquorum.kube import addons, host, render
from pgquorum.kube import images as kimages
from pgquorum.kube.build import build_helm, build_kubernetes
from pgquorum.kube.pki import ensure_pki
from pgquorum.kube.plan import ClusterPlan, NodePlan
from pgquorum.kube.versions import HELM, KUBERNETES

Progress = Callable[[str], None]
CONTROL_PLANE = ("kube-scheduler", "kube-controller-manager", "kube-apiserver", "etcd")


class ClusterError(RuntimeError):
    """The cluster could not be brought up or queried; the message says what and where to look."""


def chaos_node(node: NodePlan) -> netns.Node:
    """The node as the chaos bed's Node (its namespace, address and veths), for faults."""
    return netns.Node(node.name, node.ns, node.addr, node.veth, node.veth_host)


def cluster_images() -> render.ClusterImages:
    return render.ClusterImages(
        pause=kimages.PAUSE_IMAGE,
        coredns=kimages.COREDNS_IMAGE,
        local_path_provisioner=kimages.LOCAL_PATH_PROVISIONER_IMAGE,
        busybox=kimages.BUSYBOX_IMAGE,
    )


@dataclass
class Kubectl:
    """kubectl of the cluster's version with the admin kubeconfig."""

    plan: ClusterPlan

    @property
    def binary(self) -> Path:
        return KUBERNETES.binary("kubectl")

    def argv(self, args: Sequence[str]) -> list[str]:
        return [str(self.binary), f"--kubeconfig={self.plan.admin_kubeconfig}", *args]

    def run(
        self, args: Sequence[str], *, stdin: str | None = None, timeout: float = 60.0, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        try:
            proc = subprocess.run(self.argv(args), input=stdin, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise ClusterError(f"kubectl {' '.join(args)}: no answer within {timeout:g} s") from None
        if check and proc.returncode != 0:
            raise ClusterError(f"kubectl {' '.join(args)} failed: {proc.stderr.strip() or proc.stdout.strip()}")
        return proc

    def json(self, args: Sequence[str], timeout: float = 30.0) -> Any:
        return json.loads(self.run([*args, "-o", "json"], timeout=timeout).stdout)


class LocalKube:
    def __init__(self, plan: ClusterPlan, progress: Progress = print) -> None:
        self.plan = plan
        self.progress = progress
        self.kubectl = Kubectl(plan)

    # ------------------------------------------------------------------ up

    def up(self, timeout: float = 300.0) -> float:
        problems = host.missing_requirements()
        if problems:
            raise ClusterError("; ".join(problems))
        build_kubernetes(self.progress)
        build_helm(self.progress)
        archives = kimages.ensure_images(self.progress)
        started = time.monotonic()
        self.down(quiet=True)
        plan = self.plan
        try:
            self._prepare_files()
            self._network()
            self.progress(f"network up: bridge {plan.bridge}, {len(plan.nodes)} node namespaces")
            self._control_plane(deadline=started + timeout)
            self.progress(f"control plane ready at https://{plan.apiserver_addr}:6443")
            for node in plan.nodes:
                self._start_containerd(node)
            for node in plan.nodes:
                # the kubelet exits at once when the runtime's socket is not there yet
                self._wait_containerd(node, deadline=started + timeout)
                self._start_kubelet(node)
            self.progress("containerd and kubelets started")
            for node in plan.nodes:
                kimages.load_images(archives, node.containerd_socket)
                self.progress(f"{node.name}: images present")
            self.kubectl.run(["apply", "--server-side", "--force-conflicts", "-f", "-"], stdin=self._addons())
            self._wait_ready(deadline=started + timeout)
        except BaseException:
            self.progress(f"kube up failed; logs under {plan.log_dir} and {plan.state_dir}/nodes/*/logs")
            raise
        elapsed = time.monotonic() - started
        self.progress(f"cluster {plan.name} up in {elapsed:.1f} s: {len(plan.nodes)} nodes Ready, DNS answers")
        self.progress(f"export KUBECONFIG={plan.admin_kubeconfig}")
        return elapsed

    def load_images(self, only: Sequence[str] | None = None) -> list[str]:
        """(Re)build what changed and import it into every running node: after an edit to the code,
        the next pod gets the new image (pods use ``imagePullPolicy: IfNotPresent`` on a fixed tag,
        so delete or roll them to pick it up)."""
        archives = kimages.ensure_images(self.progress, only)
        done: list[str] = []
        for node in self.plan.nodes:
            if not host.alive(host.recorded_pid(self.plan, f"{node.name}-containerd")):
                raise ClusterError(f"node {node.name}: containerd is not running (pgquorum kube up first)")
            done += [f"{node.name}: {ref}" for ref in kimages.load_images(archives, node.containerd_socket)]
        return done

    def _addons(self) -> str:
        return addons.addon_manifest(self.plan, cluster_images())

    def _prepare_files(self) -> None:
        plan = self.plan
        # a fresh cluster every time: state of the previous one would resurrect its pods
        for stale in [plan.etcd_dir, plan.log_dir, *(d for n in plan.nodes for d in self._node_volatile(n))]:
            shutil.rmtree(stale, ignore_errors=True)
        for d in (plan.state_dir, plan.run_dir, plan.kubeconfig_dir, plan.log_dir, plan.manifests_dir):
            d.mkdir(parents=True, exist_ok=True)
        plan.state_dir.chmod(0o700)
        ensure_pki(plan)
        for name, text in render.component_kubeconfigs(plan).items():
            _write(plan.kubeconfig_dir / name, text, 0o600)
        pki = plan.pki_dir
        _write(
            plan.admin_kubeconfig,
            render.kubeconfig(plan, "kubernetes-admin", pki / "admin.crt", pki / "admin.key", embed=True),
            0o600,
        )
        _write(plan.manifests_dir / "addons.yaml", self._addons())
        images = cluster_images()
        for node in plan.nodes:
            for d in (node.root, node.run, node.config_dir, node.log_dir, node.cni_conf_dir, node.local_path_dir):
                d.mkdir(parents=True, exist_ok=True)
            _write(node.config_dir / "containerd.toml", render.containerd_config(plan, node, images))
            _write(node.config_dir / "kubelet.yaml", render.kubelet_config(plan, node))
            _write(node.config_dir / "kube-proxy.yaml", render.kube_proxy_config(plan, node))
            _write(node.config_dir / "resolv.conf", "# cluster DNS only: nothing resolves off this machine\n")
            _write(node.cni_conf_dir / "10-pgquorum.conflist", render.cni_conflist(node))

    @staticmethod
    def _node_volatile(node: NodePlan) -> list[Path]:
        return [node.kubelet_dir, node.pod_logs_dir, node.cni_data_dir, node.local_path_dir, node.log_dir, node.run]

    def _network(self) -> None:
        plan = self.plan
        prefixlen = int(plan.subnet.split("/")[1])
        netns.add_bridge(plan.bridge, f"{plan.apiserver_addr}/{prefixlen}")
        for node in plan.nodes:
            netns.add_node(chaos_node(node), plan.bridge, prefixlen)
            for key, value in render.node_sysctls().items():
                _run(["ip", "netns", "exec", node.ns, "sysctl", "-q", "-w", f"{key}={value}"])
            for route in render.node_routes(plan, node):
                _run(["ip", "-n", node.ns, "route", *route])
            host.create_cgroup_root(node.cgroup_root)
        for route in render.host_routes(plan):
            _run(["ip", "route", *route])

    def _control_plane(self, deadline: float) -> None:
        plan = self.plan
        host.save_kernel_tunables(plan.state_dir / "kernel-tunables")
        etcd = shutil.which("etcd") or "/usr/bin/etcd"
        host.start("etcd", render.etcd_argv(plan, etcd), plan, plan.log_dir / "etcd.log")
        host.start(
            "kube-apiserver",
            render.apiserver_argv(plan, KUBERNETES.binary("kube-apiserver")),
            plan,
            plan.log_dir / "kube-apiserver.log",
        )
        self._wait(
            lambda: self.kubectl.run(["get", "--raw", "/readyz"], check=False, timeout=5).stdout.strip() == "ok",
            deadline,
            "the apiserver to be ready",
            [plan.log_dir / "kube-apiserver.log", plan.log_dir / "etcd.log"],
        )
        host.start(
            "kube-controller-manager",
            render.controller_manager_argv(plan, KUBERNETES.binary("kube-controller-manager")),
            plan,
            plan.log_dir / "kube-controller-manager.log",
        )
        host.start(
            "kube-scheduler",
            render.scheduler_argv(plan, KUBERNETES.binary("kube-scheduler")),
            plan,
            plan.log_dir / "kube-scheduler.log",
        )

    def _start_containerd(self, node: NodePlan) -> None:
        host.start(
            f"{node.name}-containerd",
            ["containerd", "--config", str(node.config_dir / "containerd.toml")],
            self.plan,
            node.log_dir / "containerd.log",
            netns=node.ns,
        )

    def _start_kubelet(self, node: NodePlan) -> None:
        plan = self.plan
        host.start(
            f"{node.name}-kubelet",
            render.kubelet_argv(plan, node, KUBERNETES.binary("kubelet")),
            plan,
            node.log_dir / "kubelet.log",
            netns=node.ns,
        )
        host.start(
            f"{node.name}-kube-proxy",
            render.kube_proxy_argv(node, KUBERNETES.binary("kube-proxy")),
            plan,
            node.log_dir / "kube-proxy.log",
            netns=node.ns,
        )

    def _wait_containerd(self, node: NodePlan, deadline: float) -> None:
        def ready() -> bool:
            proc = subprocess.run(
                ["ctr", "--address", str(node.containerd_socket), "version"], capture_output=True, timeout=10
            )
            return proc.returncode == 0

        self._wait(ready, deadline, f"containerd on {node.name}", [node.log_dir / "containerd.log"])

    def _wait_ready(self, deadline: float) -> None:
        plan = self.plan

        def nodes_ready() -> bool:
            items = self.kubectl.json(["get", "nodes"])["items"]
            ready = {
                i["metadata"]["name"]
                for i in items
                if any(c["type"] == "Ready" and c["status"] == "True" for c in i["status"].get("conditions", []))
            }
            return ready >= {n.name for n in plan.nodes}

        logs = [n.log_dir / "kubelet.log" for n in plan.nodes]
        self._wait(nodes_ready, deadline, "every node to be Ready", logs)
        self.progress(f"nodes Ready: {', '.join(n.name for n in plan.nodes)}")
        want = plan.kubernetes_service_ip
        self._wait(
            lambda: want in self.resolve(plan.nodes[0], f"kubernetes.default.svc.{plan.cluster_domain}"),
            deadline,
            "cluster DNS to answer",
            [plan.log_dir / "kube-scheduler.log", *logs],
        )

    def _wait(self, check: Callable[[], bool], deadline: float, what: str, logs: Sequence[Path]) -> None:
        last = ""
        while time.monotonic() < deadline:
            try:
                if check():
                    return
            except (ClusterError, OSError, subprocess.SubprocessError, ValueError, KeyError) as exc:
                last = str(exc)
            time.sleep(0.5)
        tails = []
        for log in logs:
            with contextlib.suppress(OSError):
                tails.append(f"--- {log} (last lines)\n" + "\n".join(log.read_text(errors="replace").splitlines()[-8:]))
        raise ClusterError(
            f"timed out waiting for {what}" + (f" (last error: {last})" if last else "") + "\n" + "\n".join(tails)
        )

    def resolve(self, node: NodePlan, name: str) -> list[str]:
        """A records for ``name`` from cluster DNS, asked from inside ``node``'s namespace."""
        proc = subprocess.run(
            [
                "nsenter",
                f"--net=/run/netns/{node.ns}",
                "--",
                sys.executable,
                "-m",
                "pgquorum.kube.dns",
                self.plan.dns_service_ip,
                name,
            ],
            capture_output=True,
            text=True,
            timeout=10,
        )
        return proc.stdout.split() if proc.returncode == 0 else []

    # ------------------------------------------------------------------ down

    def down(self, *, destroy: bool = False, quiet: bool = False) -> None:
        """Stop and remove everything ``up`` made from this plan, whatever state it was left in."""
        plan = self.plan
        node_procs = [f"{n.name}-{c}" for n in plan.nodes for c in ("kube-proxy", "kubelet")]
        host.stop_recorded(plan, node_procs, grace=3)
        for node in plan.nodes:
            netns.kill_ns_pids(node.ns)  # containerd, its shims
            host.kill_cgroup(node.cgroup_root)  # the pods' processes
        host.stop_recorded(plan, [f"{n.name}-containerd" for n in plan.nodes], grace=1)
        host.stop_recorded(plan, CONTROL_PLANE)
        unmounted = host.unmount_under(plan.run_dir, plan.state_dir)
        for pod_ns in host.pod_namespaces(plan.cluster_cidr):
            _run(["ip", "netns", "del", pod_ns], check=False)
        for node in plan.nodes:
            _run(["ip", "netns", "del", node.ns], check=False)
            _run(["ip", "link", "del", node.veth_host], check=False)
        _run(["ip", "route", "del", "unreachable", plan.service_cidr], check=False)
        _run(["ip", "link", "del", plan.bridge], check=False)
        host.restore_kernel_tunables(plan.state_dir / "kernel-tunables")
        shutil.rmtree(plan.run_dir, ignore_errors=True)
        if destroy:
            host.unmount_under(plan.state_dir)
            shutil.rmtree(plan.state_dir, ignore_errors=True)
        if not quiet:
            self.progress(
                f"cluster {plan.name} down"
                + (" and destroyed" if destroy else "")
                + (f" ({unmounted} mounts)" if unmounted else "")
            )

    # ------------------------------------------------------------------ status

    def status(self) -> dict[str, Any]:
        plan = self.plan
        pids = {n: host.recorded_pid(plan, n) for n in CONTROL_PLANE}
        procs = {n: host.alive(pid) for n, pid in pids.items()}
        rss = {n: host.rss_mib(pid) for n, pid in pids.items()}
        nodes: list[dict[str, Any]] = []
        api: dict[str, Any] = {}
        if procs["kube-apiserver"] and plan.admin_kubeconfig.exists():
            with contextlib.suppress(ClusterError, ValueError):
                for item in self.kubectl.json(["get", "nodes"], timeout=10)["items"]:
                    conds = {c["type"]: c["status"] for c in item["status"].get("conditions", [])}
                    api[item["metadata"]["name"]] = conds.get("Ready") == "True"
        for node in plan.nodes:
            nodes.append(
                {
                    "name": node.name,
                    "address": node.addr,
                    "pod_cidr": node.pod_cidr,
                    "namespace": node.ns,
                    "ready": api.get(node.name, False),
                    "containerd": host.alive(host.recorded_pid(plan, f"{node.name}-containerd")),
                    "kubelet": host.alive(host.recorded_pid(plan, f"{node.name}-kubelet")),
                    "kube_proxy": host.alive(host.recorded_pid(plan, f"{node.name}-kube-proxy")),
                    # what a node costs beside its pods: containerd + kubelet + kube-proxy
                    "rss_mib": {
                        part: host.rss_mib(host.recorded_pid(plan, f"{node.name}-{part}"))
                        for part in ("containerd", "kubelet", "kube-proxy")
                    },
                }
            )
        running = any(procs.values()) or any(n["kubelet"] for n in nodes)
        return {
            "name": plan.name,
            "provider": "local",
            "running": running,
            "server": plan.server_url,
            "kubeconfig": str(plan.admin_kubeconfig),
            "kubernetes_version": KUBERNETES.version,
            "helm": str(HELM.binary("helm")),
            "kubectl": str(KUBERNETES.binary("kubectl")),
            "control_plane": procs,
            "control_plane_rss_mib": rss,
            "nodes": nodes,
        }


def _write(path: Path, text: str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)


def _run(argv: Sequence[str], check: bool = True) -> None:
    proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=30)
    if check and proc.returncode != 0:
        raise ClusterError(f"{' '.join(argv)} failed: {proc.stderr.strip() or proc.stdout.strip()}")
