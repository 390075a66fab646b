"""The shape of a local Kubernetes cluster, as plain data: addresses, CIDRs, names, paths, ports.

Everything else (certificates, configs, the executor, ``down``) derives from one ``ClusterPlan``,
so ``down`` after a crash finds exactly what ``up`` made from the same plan.

Layout (defaults)::

    host (root namespace)  pqkbr0  10.78.0.1/24    etcd (127.0.0.1), kube-apiserver (10.78.0.1:6443),
                                                   controller-manager, scheduler
    node1  namespace pqk-node1     10.78.0.11/24   containerd, kubelet, kube-proxy; pods 10.244.1.0/24
    node2  namespace pqk-node2     10.78.0.12/24   ...                                  10.244.2.0/24

Services get ClusterIPs from 10.96.0.0/16 (the API at 10.96.0.1, DNS at 10.96.0.10); they exist
only as kube-proxy rules inside the node namespaces. The host gets an ``unreachable`` route for that
range, so a ClusterIP used from the host fails at once instead of leaving the machine.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path

DEFAULT_NAME = "pgquorum"
MAX_NODES = 9
_NAME_RE = re.compile(r"^[a-z][a-z0-9]{0,11}$")


class PlanError(ValueError):
    """A cluster option is invalid; the message names the option and the fix."""


@dataclass(frozen=True)
class NodePlan:
    name: str  # also the Kubernetes node name
    index: int  # 1-based
    ns: str  # network namespace
    veth: str  # interface inside the namespace
    veth_host: str  # its peer on the bridge
    addr: str  # the node's InternalIP
    pod_cidr: str
    pod_gateway: str  # the node's cni0 address: the first of its pod CIDR
    root: Path  # persistent files of this node (containerd's images survive ``down``)
    run: Path  # sockets and runtime state (gone with ``down``)
    cgroup_root: str  # the kubelet's cgroupRoot: two kubelets never manage each other's pods

    @property
    def containerd_socket(self) -> Path:
        return self.run / "containerd.sock"

    @property
    def containerd_root(self) -> Path:
        return self.root / "containerd"

    @property
    def containerd_state(self) -> Path:
        return self.run / "containerd"

    @property
    def kubelet_dir(self) -> Path:
        return self.root / "kubelet"

    @property
    def pod_logs_dir(self) -> Path:
        return self.root / "pod-logs"

    @property
    def cni_conf_dir(self) -> Path:
        return self.root / "cni" / "net.d"

    @property
    def cni_data_dir(self) -> Path:
        return self.root / "cni" / "ipam"

    @property
    def local_path_dir(self) -> Path:
        """Where this node's PersistentVolumes live (the local-path provisioner's path for it)."""
        return self.root / "local-path"

    @property
    def config_dir(self) -> Path:
        return self.root / "config"

    @property
    def log_dir(self) -> Path:
        return self.root / "logs"


@dataclass(frozen=True)
class ClusterPlan:
    name: str
    nodes: tuple[NodePlan, ...]
    state_dir: Path  # PKI, etcd data, kubeconfigs, logs, the nodes' roots
    run_dir: Path
    bridge: str
    subnet: str  # /24 of the bridge
    apiserver_addr: str  # the bridge's address in the host namespace
    apiserver_port: int
    etcd_client_port: int
    etcd_peer_port: int
    service_cidr: str
    cluster_cidr: str  # all pod CIDRs
    kubernetes_service_ip: str
    dns_service_ip: str
    cluster_domain: str = "cluster.local"
    prefix: str = "pqk"

    @property
    def server_url(self) -> str:
        return f"https://{self.apiserver_addr}:{self.apiserver_port}"

    @property
    def etcd_url(self) -> str:
        return f"http://127.0.0.1:{self.etcd_client_port}"

    @property
    def pki_dir(self) -> Path:
        return self.state_dir / "pki"

    @property
    def etcd_dir(self) -> Path:
        return self.state_dir / "etcd"

    @property
    def log_dir(self) -> Path:
        return self.state_dir / "logs"

    @property
    def pid_dir(self) -> Path:
        return self.run_dir / "pids"

    @property
    def kubeconfig_dir(self) -> Path:
        return self.state_dir / "kubeconfig"

    @property
    def admin_kubeconfig(self) -> Path:
        """The user's kubeconfig (cluster-admin)."""
        return self.state_dir / "kubeconfig.yaml"

    @property
    def manifests_dir(self) -> Path:
        return self.state_dir / "manifests"

    def node(self, name: str) -> NodePlan:
        for n in self.nodes:
            if n.name == name:
                return n
        raise PlanError(f"no node {name!r} in cluster {self.name} (nodes: {', '.join(n.name for n in self.nodes)})")


def plan_cluster(
    nodes: int = 3,
    *,
    name: str = DEFAULT_NAME,
    state_dir: Path | None = None,
    run_dir: Path | None = None,
    subnet: str = "10.78.0.0/24",
    cluster_cidr: str = "10.244.0.0/16",
    service_cidr: str = "10.96.0.0/16",
    apiserver_port: int = 6443,
    etcd_client_port: int = 32379,
) -> ClusterPlan:
    """The plan for a cluster of ``nodes`` workers; raises PlanError naming the bad option."""
    if not isinstance(nodes, int) or not 1 <= nodes <= MAX_NODES:
        raise PlanError(f"--nodes: expected 1 to {MAX_NODES} worker nodes, got {nodes!r}")
    if not _NAME_RE.match(name):
        raise PlanError(f"--name: expected a lowercase letter then up to 11 letters or digits, got {name!r}")
    try:
        net = ipaddress.IPv4Network(subnet)
        pods = ipaddress.IPv4Network(cluster_cidr)
        services = ipaddress.IPv4Network(service_cidr)
    except ValueError as exc:
        raise PlanError(f"cluster addresses: {exc}") from None
    if net.prefixlen != 24 or pods.prefixlen > 16 or services.prefixlen > 24:
        raise PlanError(
            "cluster addresses: the node subnet must be a /24, pods a /16 or larger, services /24 or larger"
        )
    for a, b, what in ((net, pods, "nodes/pods"), (net, services, "nodes/services"), (pods, services, "pods/services")):
        if a.overlaps(b):
            raise PlanError(f"cluster addresses: the {what} ranges overlap ({a} and {b})")
    state = state_dir or Path("/var/lib/pgquorum-kube") / name
    run = run_dir or Path("/run/pgquorum-kube") / name
    base = net.network_address
    pod_subnets = list(pods.subnets(new_prefix=24))
    node_plans = []
    for i in range(1, nodes + 1):
        node_name = f"node{i}"
        ns = f"pqk-{node_name}" if name == DEFAULT_NAME else f"pqk{name[:4]}-{node_name}"
        pod_net = pod_subnets[i]
        node_plans.append(
            NodePlan(
                name=node_name,
                index=i,
                ns=ns,
                veth="eth0",
                veth_host=f"{ns}"[:13] + ".h",
                addr=str(base + 10 + i),
                pod_cidr=str(pod_net),
                pod_gateway=str(pod_net.network_address + 1),
                root=state / "nodes" / node_name,
                run=run / "nodes" / node_name,
                cgroup_root=f"/pqkube-{name}-{node_name}",
            )
        )
    svc_hosts = services.network_address
    return ClusterPlan(
        name=name,
        nodes=tuple(node_plans),
        state_dir=state,
        run_dir=run,
        bridge=f"pqkbr{name[:8]}" if name != DEFAULT_NAME else "pqkbr0",
        subnet=str(net),
        apiserver_addr=str(base + 1),
        apiserver_port=apiserver_port,
        etcd_client_port=etcd_client_port,
        etcd_peer_port=etcd_client_port + 1,
        service_cidr=str(services),
        cluster_cidr=str(pods),
        kubernetes_service_ip=str(svc_hosts + 1),
        dns_service_ip=str(svc_hosts + 10),
    )
