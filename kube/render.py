"""Every file and command line of the local cluster, rendered from the plan: pure functions, no I/O.

kubeconfigs, the control-plane flags, and per node: containerd's config, the kubelet's config,
kube-proxy's config and the CNI network (a bridge with host-local addresses from the node's pod
CIDR; other nodes' pod CIDRs are routed via their node addresses).
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from pgquorum.kube.plan import ClusterPlan, NodePlan


@dataclass(frozen=True)
class ClusterImages:
    """The images the cluster itself runs (built locally, loaded into every node)."""

    pause: str
    coredns: str
    local_path_provisioner: str
    busybox: str


def _b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def kubeconfig(plan: ClusterPlan, user: str, cert: Path, key: Path, *, embed: bool = False) -> str:
    """A kubeconfig for ``user`` authenticating with a client certificate. ``embed`` copies the
    certificate data in (the user's file works wherever it is copied to); otherwise it references
    the files (the components' own)."""
    ca = plan.pki_dir / "ca.crt"
    cluster: dict[str, Any] = {"server": plan.server_url}
    creds: dict[str, Any] = {}
    if embed:
        cluster["certificate-authority-data"] = _b64(ca)
        creds = {"client-certificate-data": _b64(cert), "client-key-data": _b64(key)}
    else:
        cluster["certificate-authority"] = str(ca)
        creds = {"client-certificate": str(cert), "client-key": str(key)}
    context = f"pgquorum-{plan.name}"
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": context, "cluster": cluster}],
        "users": [{"name": user, "user": creds}],
        "contexts": [{"name": context, "context": {"cluster": context, "user": user}}],
        "current-context": context,
    }
    return yaml.safe_dump(doc, sort_keys=False)


def component_kubeconfigs(plan: ClusterPlan) -> dict[str, str]:
    """file name under kubeconfig_dir -> content, for each control-plane and node component."""
    pki = plan.pki_dir
    out = {
        "controller-manager.yaml": kubeconfig(
            plan, "system:kube-controller-manager", pki / "controller-manager.crt", pki / "controller-manager.key"
        ),
        "scheduler.yaml": kubeconfig(plan, "system:kube-scheduler", pki / "scheduler.crt", pki / "scheduler.key"),
        "kube-proxy.yaml": kubeconfig(plan, "system:kube-proxy", pki / "kube-proxy.crt", pki / "kube-proxy.key"),
    }
    for node in plan.nodes:
        out[f"kubelet-{node.name}.yaml"] = kubeconfig(
            plan, f"system:node:{node.name}", pki / f"kubelet-{node.name}.crt", pki / f"kubelet-{node.name}.key"
        )
    return out


def etcd_argv(plan: ClusterPlan, etcd: str = "/usr/bin/etcd") -> list[str]:
    # loopback only: nothing but the apiserver on this host talks to it
    return [
        etcd,
        "--name=kube-etcd",
        f"--data-dir={plan.etcd_dir}",
        f"--listen-client-urls={plan.etcd_url}",
        f"--advertise-client-urls={plan.etcd_url}",
        f"--listen-peer-urls=http://127.0.0.1:{plan.etcd_peer_port}",
        f"--initial-advertise-peer-urls=http://127.0.0.1:{plan.etcd_peer_port}",
        f"--initial-cluster=kube-etcd=http://127.0.0.1:{plan.etcd_peer_port}",
        "--listen-metrics-urls=",
        "--quota-backend-bytes=2147483648",
        "--snapshot-count=10000",
        "--log-level=warn",
    ]


def apiserver_argv(plan: ClusterPlan, binary: Path) -> list[str]:
    pki = plan.pki_dir
    return [
        str(binary),
        f"--advertise-address={plan.apiserver_addr}",
        f"--bind-address={plan.apiserver_addr}",
        f"--secure-port={plan.apiserver_port}",
        f"--etcd-servers={plan.etcd_url}",
        f"--service-cluster-ip-range={plan.service_cidr}",
        f"--client-ca-file={pki / 'ca.crt'}",
        f"--tls-cert-file={pki / 'apiserver.crt'}",
        f"--tls-private-key-file={pki / 'apiserver.key'}",
        f"--kubelet-client-certificate={pki / 'apiserver-kubelet-client.crt'}",
        f"--kubelet-client-key={pki / 'apiserver-kubelet-client.key'}",
        f"--kubelet-certificate-authority={pki / 'ca.crt'}",
        # kubelets are reached by address: node names are not in any DNS here
        "--kubelet-preferred-address-types=InternalIP",
        f"--service-account-key-file={pki / 'sa.pub'}",
        f"--service-account-signing-key-file={pki / 'sa.key'}",
        f"--service-account-issuer=https://kubernetes.default.svc.{plan.cluster_domain}",
        "--authorization-mode=Node,RBAC",
        "--enable-admission-plugins=NodeRestriction",
        "--anonymous-auth=false",
        "--allow-privileged=true",
        # webhooks and aggregated APIs by endpoint address: the host has no kube-proxy (and
        # ClusterIPs are unreachable from it on purpose)
        "--enable-aggregator-routing=true",
        "--profiling=false",
        "--v=1",
    ]


def controller_manager_argv(plan: ClusterPlan, binary: Path) -> list[str]:
    pki, kc = plan.pki_dir, plan.kubeconfig_dir / "controller-manager.yaml"
    return [
        str(binary),
        f"--kubeconfig={kc}",
        f"--authentication-kubeconfig={kc}",
        f"--authorization-kubeconfig={kc}",
        "--bind-address=127.0.0.1",
        "--use-service-account-credentials=true",
        f"--service-account-private-key-file={pki / 'sa.key'}",
        f"--root-ca-file={pki / 'ca.crt'}",
        f"--cluster-signing-cert-file={pki / 'ca.crt'}",
        f"--cluster-signing-key-file={pki / 'ca.key'}",
        f"--service-cluster-ip-range={plan.service_cidr}",
        f"--cluster-cidr={plan.cluster_cidr}",
        "--allocate-node-cidrs=false",  # each node's pod CIDR is fixed by the plan (CNI and routes)
        "--controllers=*,bootstrapsigner,tokencleaner",
        "--leader-elect=false",
        "--profiling=false",
        "--v=1",
    ]


def scheduler_argv(plan: ClusterPlan, binary: Path) -> list[str]:
    kc = plan.kubeconfig_dir / "scheduler.yaml"
    return [
        str(binary),
        f"--kubeconfig={kc}",
        f"--authentication-kubeconfig={kc}",
        f"--authorization-kubeconfig={kc}",
        "--bind-address=127.0.0.1",
        "--leader-elect=false",
        "--profiling=false",
        "--v=1",
    ]


# ----------------------------------------------------------------------------- nodes


def containerd_config(plan: ClusterPlan, node: NodePlan, images: ClusterImages) -> str:
    # restrict_oom_score_adj: this machine drops CAP_SYS_RESOURCE, so the sandbox's -998 would fail
    # ("can't get final child's PID from pipe"); it is clamped to containerd's own score instead.
    return f"""version = 2
root = "{node.containerd_root}"
state = "{node.containerd_state}"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", \
"io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.tracing.processor.v1.otlp"]

[grpc]
  address = "{node.containerd_socket}"

[ttrpc]
  address = "{node.run / "containerd.sock.ttrpc"}"

[debug]
  level = "warn"

[plugins."io.containerd.internal.v1.opt"]
  path = "{node.containerd_root / "opt"}"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{images.pause}"
  restrict_oom_score_adj = true
  enable_selinux = false
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    discard_unpacked_layers = false
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{node.cni_conf_dir}"
    max_conf_num = 1
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = ""
"""


def cni_conflist(node: NodePlan) -> str:
    doc = {
        "cniVersion": "1.0.0",
        "name": "pgquorum-kube",
        "plugins": [
            {
                "type": "bridge",
                "bridge": "cni0",
                "isGateway": True,
                "ipMasq": False,  # pods talk to nothing outside the cluster's own networks
                "hairpinMode": True,  # a pod reaching itself through its Service
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": node.pod_cidr, "gateway": node.pod_gateway}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": str(node.cni_data_dir),
                },
            },
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ],
    }
    return json.dumps(doc, indent=2) + "\n"


def kubelet_config(plan: ClusterPlan, node: NodePlan) -> str:
    pki = plan.pki_dir
    doc: dict[str, Any] = {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "address": node.addr,
        "port": 10250,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": 10248,
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": True},
            "x509": {"clientCAFile": str(pki / "ca.crt")},
        },
        "authorization": {"mode": "Webhook"},
        "tlsCertFile": str(pki / f"kubelet-{node.name}-serving.crt"),
        "tlsPrivateKeyFile": str(pki / f"kubelet-{node.name}-serving.key"),
        "containerRuntimeEndpoint": f"unix://{node.containerd_socket}",
        "cgroupDriver": "cgroupfs",
        "cgroupRoot": node.cgroup_root,
        "failCgroupV1": False,  # this machine mounts cgroup v1 hierarchies
        "failSwapOn": False,
        "clusterDNS": [plan.dns_service_ip],
        "clusterDomain": plan.cluster_domain,
        "resolvConf": str(node.config_dir / "resolv.conf"),
        "podLogsDir": str(node.pod_logs_dir),
        "rotateCertificates": False,
        "serverTLSBootstrap": False,
        "staticPodPath": "",
        "maxPods": 110,
        # The nodes share one disk: the defaults (10 % free) would evict everything on all of them
        # at once on a busy machine; a few percent still protects the host.
        "evictionHard": {"memory.available": "200Mi", "nodefs.available": "3%", "imagefs.available": "3%"},
        "imageGCHighThresholdPercent": 97,
        "imageGCLowThresholdPercent": 95,
        "nodeStatusUpdateFrequency": "4s",
        "nodeStatusReportFrequency": "10s",
        "syncFrequency": "10s",
        "shutdownGracePeriod": "0s",
        "enableServer": True,
        "protectKernelDefaults": False,
        "makeIPTablesUtilChains": True,
        "localStorageCapacityIsolation": True,
    }
    return yaml.safe_dump(doc, sort_keys=False)


def kubelet_argv(plan: ClusterPlan, node: NodePlan, binary: Path) -> list[str]:
    return [
        str(binary),
        f"--config={node.config_dir / 'kubelet.yaml'}",
        f"--kubeconfig={plan.kubeconfig_dir / f'kubelet-{node.name}.yaml'}",
        f"--root-dir={node.kubelet_dir}",
        f"--hostname-override={node.name}",
        f"--node-ip={node.addr}",
        f"--node-labels=pgquorum.io/kube-cluster={plan.name}",
        "--v=1",
    ]


def kube_proxy_config(plan: ClusterPlan, node: NodePlan) -> str:
    doc: dict[str, Any] = {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "clientConnection": {"kubeconfig": str(plan.kubeconfig_dir / "kube-proxy.yaml")},
        "mode": "iptables",
        "clusterCIDR": plan.cluster_cidr,
        "hostnameOverride": node.name,
        "bindAddress": node.addr,
        "healthzBindAddress": f"{node.addr}:10256",
        "metricsBindAddress": f"{node.addr}:10249",
        # 0: leave the conntrack sysctls alone (shared with the host where they are not per-namespace)
        "conntrack": {"maxPerCore": 0, "min": 0, "tcpEstablishedTimeout": "0s", "tcpCloseWaitTimeout": "0s"},
        "iptables": {"syncPeriod": "10s", "minSyncPeriod": "0s"},
    }
    return yaml.safe_dump(doc, sort_keys=False)


def kube_proxy_argv(node: NodePlan, binary: Path) -> list[str]:
    return [str(binary), f"--config={node.config_dir / 'kube-proxy.yaml'}", "--v=1"]


def node_routes(plan: ClusterPlan, node: NodePlan) -> list[list[str]]:
    """``ip route`` arguments inside ``node``: other nodes' pods via their nodes; Services through
    the bridge (kube-proxy rewrites them before they leave)."""
    routes = [["replace", other.pod_cidr, "via", other.addr] for other in plan.nodes if other.name != node.name]
    routes.append(["replace", plan.service_cidr, "dev", node.veth])
    return routes


def host_routes(plan: ClusterPlan) -> list[list[str]]:
    """``ip route`` arguments on the host: pods via their nodes; ClusterIPs unreachable from here."""
    routes = [["replace", node.pod_cidr, "via", node.addr] for node in plan.nodes]
    routes.append(["replace", "unreachable", plan.service_cidr])
    return routes


def node_sysctls() -> dict[str, str]:
    return {
        "net.ipv4.ip_forward": "1",
        # pod -> Service -> pod on the same node: the reply crosses the cni0 bridge and must meet
        # conntrack to be un-NATed
        "net.bridge.bridge-nf-call-iptables": "1",
        "net.ipv4.conf.all.rp_filter": "0",
    }
