"""The local Kubernetes cluster's plan and rendered configs: plain data, no processes."""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path

import pytest
import yaml

from pgquorum.kube import addons, build, dns, kind, render
from pgquorum.kube.pki import certificate_specs
from pgquorum.kube.plan import PlanError, plan_cluster

IMAGES = render.ClusterImages(pause="p:1", coredns="c:1", local_path_provisioner="l:1", busybox="b:1")


def test_nodes_get_distinct_addresses_pod_cidrs_and_cgroup_roots() -> None:
    plan = plan_cluster(3, state_dir=Path("/s"), run_dir=Path("/r"))
    assert [n.addr for n in plan.nodes] == ["10.78.0.11", "10.78.0.12", "10.78.0.13"]
    cidrs = [ipaddress.ip_network(n.pod_cidr) for n in plan.nodes]
    assert len(set(cidrs)) == 3
    assert all(c.subnet_of(ipaddress.ip_network(plan.cluster_cidr)) for c in cidrs)  # type: ignore[arg-type]
    assert len({n.cgroup_root for n in plan.nodes}) == 3
    assert all(len(n.veth_host) <= 15 for n in plan.nodes)
    assert plan.kubernetes_service_ip == "10.96.0.1" and plan.dns_service_ip == "10.96.0.10"
    assert plan.apiserver_addr == "10.78.0.1"


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"nodes": 0}, "--nodes"),
        ({"nodes": 10}, "--nodes"),
        ({"nodes": 2, "name": "Bad_Name"}, "--name"),
        ({"nodes": 2, "subnet": "10.244.5.0/24"}, "overlap"),
        ({"nodes": 2, "subnet": "not-an-address"}, "cluster addresses"),
    ],
)
def test_bad_options_name_the_field(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(PlanError, match=field):
        plan_cluster(**kwargs)  # type: ignore[arg-type]


def test_routes_reach_other_nodes_pods_and_keep_cluster_ips_off_the_host() -> None:
    plan = plan_cluster(3, state_dir=Path("/s"), run_dir=Path("/r"))
    n1 = plan.nodes[0]
    routes = render.node_routes(plan, n1)
    assert ["replace", plan.nodes[1].pod_cidr, "via", plan.nodes[1].addr] in routes
    assert not any(r[1] == n1.pod_cidr for r in routes)
    assert ["replace", "unreachable", plan.service_cidr] in render.host_routes(plan)


def test_node_configs() -> None:
    plan = plan_cluster(2, state_dir=Path("/s"), run_dir=Path("/r"))
    node = plan.nodes[1]
    kubelet = yaml.safe_load(render.kubelet_config(plan, node))
    assert kubelet["cgroupRoot"] == node.cgroup_root and kubelet["address"] == node.addr
    assert kubelet["authentication"]["anonymous"]["enabled"] is False
    assert kubelet["authorization"]["mode"] == "Webhook"
    assert kubelet["clusterDNS"] == [plan.dns_service_ip]
    containerd = render.containerd_config(plan, node, IMAGES)
    assert "restrict_oom_score_adj = true" in containerd and 'sandbox_image = "p:1"' in containerd
    assert str(node.containerd_socket) in containerd
    cni = json.loads(render.cni_conflist(node))
    ipam = cni["plugins"][0]["ipam"]
    assert ipam["ranges"][0][0]["subnet"] == node.pod_cidr and ipam["dataDir"] == str(node.cni_data_dir)
    proxy = yaml.safe_load(render.kube_proxy_config(plan, node))
    assert proxy["clusterCIDR"] == plan.cluster_cidr and proxy["hostnameOverride"] == node.name


def test_apiserver_uses_node_and_rbac_authorization_and_no_anonymous_access() -> None:
    plan = plan_cluster(1, state_dir=Path("/s"), run_dir=Path("/r"))
    argv = render.apiserver_argv(plan, Path("/bin/kube-apiserver"))
    assert "--authorization-mode=Node,RBAC" in argv and "--anonymous-auth=false" in argv
    assert "--enable-admission-plugins=NodeRestriction" in argv
    assert "--kubelet-preferred-address-types=InternalIP" in argv


def test_certificates_identify_each_node_for_the_node_authorizer() -> None:
    plan = plan_cluster(2, state_dir=Path("/s"), run_dir=Path("/r"))
    specs = {s.name: s for s in certificate_specs(plan)}
    k = specs["kubelet-node2"]
    assert k.subject() == "/O=system:nodes/CN=system:node:node2" and k.client and not k.server
    serving = specs["kubelet-node2-serving"]
    assert plan.nodes[1].addr in serving.ips and "serverAuth" in serving.extensions()
    api = specs["apiserver"]
    assert plan.apiserver_addr in api.ips and plan.kubernetes_service_ip in api.ips
    assert "DNS:kubernetes.default.svc.cluster.local" in api.extensions()


def test_kubeconfig_references_or_embeds(tmp_path: Path) -> None:
    plan = plan_cluster(1, state_dir=tmp_path, run_dir=tmp_path / "run")
    plan.pki_dir.mkdir(parents=True)
    for f in ("ca.crt", "a.crt", "a.key"):
        (plan.pki_dir / f).write_text(f"data-{f}")
    ref = yaml.safe_load(render.kubeconfig(plan, "u", plan.pki_dir / "a.crt", plan.pki_dir / "a.key"))
    assert ref["users"][0]["user"]["client-certificate"].endswith("a.crt")
    emb = yaml.safe_load(render.kubeconfig(plan, "u", plan.pki_dir / "a.crt", plan.pki_dir / "a.key", embed=True))
    assert "client-certificate-data" in emb["users"][0]["user"]
    assert emb["clusters"][0]["cluster"]["server"] == "https://10.78.0.1:6443"


def test_addons_default_storage_class_and_dns_service() -> None:
    plan = plan_cluster(3, state_dir=Path("/s"), run_dir=Path("/r"))
    objs = list(yaml.safe_load_all(addons.addon_manifest(plan, IMAGES)))
    sc = next(o for o in objs if o["kind"] == "StorageClass")
    assert sc["metadata"]["annotations"]["storageclass.kubernetes.io/is-default-class"] == "true"
    svc = next(o for o in objs if o["kind"] == "Service")
    assert svc["spec"]["clusterIP"] == plan.dns_service_ip
    cm = next(o for o in objs if o["kind"] == "ConfigMap" and o["metadata"]["name"] == "local-path-config")
    paths = json.loads(cm["data"]["config.json"])["nodePathMap"]
    assert [p["node"] for p in paths] == ["node1", "node2", "node3"]
    corefile = next(o for o in objs if o["kind"] == "ConfigMap" and o["metadata"]["name"] == "coredns")
    assert "forward" not in corefile["data"]["Corefile"]  # nothing leaves the machine


def test_wrapper_go_mod_pins_every_staging_module() -> None:
    upstream = (
        "replace (\n\tk8s.io/api => ./staging/src/k8s.io/api\n\tk8s.io/kubelet => ./staging/src/k8s.io/kubelet\n)\n"
    )
    staging = build.staging_modules(upstream)
    assert staging == ["k8s.io/api", "k8s.io/kubelet"]
    mod = build.kubernetes_wrapper_go_mod("1.34.4", staging)
    assert "require k8s.io/kubernetes v1.34.4" in mod
    assert "\tk8s.io/api => k8s.io/api v0.34.4" in mod and "\tk8s.io/kubelet => k8s.io/kubelet v0.34.4" in mod
    flags = " ".join(build.kubernetes_ldflags("1.34.4"))
    assert "k8s.io/component-base/version.gitVersion=v1.34.4" in flags and "gitMinor=34" in flags


def test_dns_query_round_trip() -> None:
    q = dns.encode_query("kubernetes.default.svc.cluster.local")
    # an answer: the question echoed, one A record by compression pointer
    answer = bytearray(q)
    answer[2:4] = b"\x81\x80"
    answer[6:8] = b"\x00\x01"
    answer += b"\xc0\x0c" + b"\x00\x01\x00\x01" + b"\x00\x00\x00\x1e" + b"\x00\x04" + bytes([10, 96, 0, 1])
    assert dns.decode_a_records(bytes(answer)) == (0, ["10.96.0.1"])


def test_kind_config_has_one_control_plane_and_the_workers() -> None:
    doc = yaml.safe_load(kind.kind_config(3))
    assert [n["role"] for n in doc["nodes"]] == ["control-plane", "worker", "worker", "worker"]
    with pytest.raises(kind.KindError, match="--nodes"):
        kind.kind_config(0)
    assert kind.load_argv("pgquorum", ["localhost/pgquorum:0.1.0"])[:3] == ["kind", "load", "docker-image"]
