"""The images, as built here with podman and loaded into every node: the agent image is small,
non-root, complete (every module imports, every command answers), has no compilers and no trace of
the CA bundle it was built with; the pause image reaps the zombies of a pod's processes; every node
holds every image; the etcd image runs."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from kube_support import apply, busybox_pod, wait_for

from pgquorum.kube.cluster import LocalKube
from pgquorum.kube.images import (
    ETCD_IMAGE,
    ETCD_VERSION,
    IMAGES,
    PGQUORUM_IMAGE,
    ImageArchive,
    ensure_images,
    host_limits,
    load_images,
    ulimit_args,
)

pytestmark = pytest.mark.kube

MAX_BYTES = 350_000_000
HOST_CA = Path("/etc/ssl/certs/ca-certificates.crt")


def podman_run(
    image: str, *argv: str, entrypoint: str | None = None, user: str | None = None
) -> subprocess.CompletedProcess[str]:
    cmd = ["podman", "run", "--rm", "--network=none", *ulimit_args(*host_limits())]
    if entrypoint is not None:
        cmd += ["--entrypoint", entrypoint]
    if user is not None:
        cmd += ["--user", user]
    return subprocess.run([*cmd, image, *argv], capture_output=True, text=True, timeout=180)


@pytest.fixture(scope="module")
def agent(kube: LocalKube) -> ImageArchive:
    """This checkout's agent image (rebuilt if the code changed) and loaded into every node. Tests run
    it by its id: another engineer's rebuild may move the tag meanwhile."""
    (arc,) = ensure_images(lambda line: print(line, file=sys.stderr), ["pgquorum"])
    for node in kube.plan.nodes:
        load_images([arc], node.containerd_socket)
    return arc


@pytest.fixture(scope="module")
def inspect(agent: ImageArchive) -> dict[str, Any]:
    out = subprocess.run(["podman", "image", "inspect", agent.image_id], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, f"{agent.reference} ({agent.image_id}) is not in podman's store: {out.stderr}"
    data: dict[str, Any] = json.loads(out.stdout)[0]
    return data


def test_the_agent_image_is_small_and_runs_as_a_numeric_non_root_user(inspect: dict[str, Any]) -> None:
    assert inspect["Size"] <= MAX_BYTES, f"{inspect['Size'] / 1e6:.0f} MB"
    user = inspect["Config"]["User"]
    uid = user.split(":")[0]
    assert uid.isdigit() and int(uid) != 0, user  # runAsNonRoot can only check a numeric user
    print(f"{PGQUORUM_IMAGE}: {inspect['Size'] / 1e6:.0f} MB, user {user}")


# Inside the image: every module from /opt/pgquorum, every command answers --help (the script's docstring)
IN_IMAGE = (Path(__file__).resolve().parents[1] / "package_check.py").read_text()


def test_every_module_imports_and_every_command_answers_in_the_image(agent: ImageArchive) -> None:
    assert podman_run(agent.image_id, "--help").returncode == 0  # through the image's own ENTRYPOINT
    out = podman_run(agent.image_id, "-c", IN_IMAGE, "/opt/pgquorum", entrypoint="/opt/pgquorum/bin/python")
    assert out.returncode == 0, out.stderr[-2000:]
    modules, commands = map(int, out.stdout.split()[-2:])
    assert modules > 100 and commands > 10, out.stdout


def test_postgres_15_runs_as_the_image_user(agent: ImageArchive) -> None:
    out = podman_run(agent.image_id, "-c", "id -u; postgres --version", entrypoint="/bin/sh")
    assert out.returncode == 0, out.stderr
    uid, version = out.stdout.split("\n", 1)
    assert uid.strip() == "999" and version.startswith("postgres (PostgreSQL) 15."), out.stdout


def test_no_compilers_and_no_trace_of_the_build_secret(agent: ImageArchive) -> None:
    compilers = "gcc cc g++ c++ clang go make ld as cc1"
    probe = (
        f"for c in {compilers}; do command -v $c && echo FOUND $c; [ -e /usr/bin/$c ] && echo FOUND /usr/bin/$c; done; "
        "ls -d /usr/bin/*-gcc* /usr/lib/gcc/*/*/cc1 2>/dev/null | sed 's/^/FOUND /'; "
        "[ -e /run/secrets/cacert ] && echo FOUND /run/secrets/cacert; true"
    )
    out = podman_run(agent.image_id, "-c", probe, entrypoint="/bin/sh")
    assert out.returncode == 0, out.stderr
    assert "FOUND" not in out.stdout, out.stdout
    # The host's bundle (with this machine's TLS-intercepting CA) was mounted for pip only: no file in
    # the image, whatever its name, has its bytes (same size, then same hash).
    if not HOST_CA.is_file():
        return
    data = HOST_CA.read_bytes()
    same_size = f"find / -xdev -type f -size {len(data)}c -exec sha256sum {{}} +"
    out = podman_run(agent.image_id, "-c", same_size, entrypoint="/bin/sh", user="0")  # root: every dir
    assert out.returncode == 0, out.stderr
    host_hash = hashlib.sha256(data).hexdigest()
    assert [line for line in out.stdout.splitlines() if line.startswith(host_hash)] == []


def test_every_node_holds_every_image_as_built(kube: LocalKube, agent: ImageArchive) -> None:
    # The cluster's own images come from `kube up`; the agent's was loaded just now (the fixture).
    # Each node's copy has the config digest of the archive built here: it is the image tested here.
    others = ensure_images(lambda line: print(line, file=sys.stderr), [i.name for i in IMAGES if i.name != "pgquorum"])
    built = {arc.reference: f"sha256:{arc.image_id}" for arc in [agent, *others]}
    assert set(built) == {img.reference for img in IMAGES}
    for node in kube.plan.nodes:
        ctr = ["ctr", "--address", str(node.containerd_socket), "-n", "k8s.io"]
        listing = subprocess.run([*ctr, "images", "ls"], capture_output=True, text=True, timeout=60)
        assert listing.returncode == 0, listing.stderr
        manifests = {c[0]: c[2] for c in (line.split() for line in listing.stdout.splitlines()[1:]) if len(c) >= 3}
        missing = [ref for ref in built if ref not in manifests]
        assert not missing, f"{node.name} lacks {missing}"
        for ref, image_id in built.items():
            got = subprocess.run([*ctr, "content", "get", manifests[ref]], capture_output=True, text=True, timeout=60)
            assert json.loads(got.stdout)["config"]["digest"] == image_id, f"{node.name}: {ref} is not the one built"


def test_the_pause_image_reaps_orphans_of_the_pod(kube: LocalKube, ns: str) -> None:
    k = kube.kubectl
    # The subshell exits at once, so its sleep is an orphan reparented to PID 1 of the shared PID
    # namespace (pause), which must reap it when it exits 0.5 s later. Without reaping: ~15 zombies.
    spawn = "while true; do (sleep 0.5 &); sleep 0.2; done"
    apply(k, ns, busybox_pod("zombies", spawn, shareProcessNamespace=True))
    k.run(["-n", ns, "wait", "--for=condition=Ready", "pod/zombies", "--timeout=120s"], timeout=130)
    time.sleep(4)
    init = k.run(["-n", ns, "exec", "zombies", "--", "cat", "/proc/1/cmdline"]).stdout
    assert init.split("\0")[0] == "/pause", init
    stats = k.run(["-n", ns, "exec", "zombies", "--", "sh", "-c", "cat /proc/[0-9]*/stat"], check=False).stdout
    # /proc/<pid>/stat: "pid (comm) state ppid ..."; comm may hold spaces, so split after the last ")"
    rows = [
        (line.split(" (", 1)[1].rsplit(")", 1)[0], *line.rsplit(")", 1)[1].split()[:2]) for line in stats.splitlines()
    ]
    orphans = [r for r in rows if r[0] == "sleep" and r[2] == "1"]
    zombies = [r for r in rows if r[1] == "Z"]
    assert orphans, rows  # the test makes orphans of pause, else it proves nothing
    assert len(zombies) <= 1, zombies  # one may be between its exit and the reap


def test_the_etcd_image_serves(kube: LocalKube, ns: str) -> None:
    out = podman_run(ETCD_IMAGE, "--version")
    assert out.returncode == 0 and f"etcd Version: {ETCD_VERSION}" in out.stdout, out.stdout + out.stderr
    k = kube.kubectl
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "etcd", "labels": {"app": "etcd"}},
        "spec": {
            "terminationGracePeriodSeconds": 1,
            "containers": [
                {
                    "name": "etcd",
                    "image": ETCD_IMAGE,
                    "args": ["--listen-client-urls=http://0.0.0.0:2379", "--advertise-client-urls=http://etcd:2379"],
                }
            ],
        },
    }
    apply(k, ns, pod)
    k.run(["-n", ns, "wait", "--for=condition=Ready", "pod/etcd", "--timeout=120s"], timeout=130)
    ip = k.json(["-n", ns, "get", "pod", "etcd"])["status"]["podIP"]
    apply(k, ns, busybox_pod("client", "sleep 3600"))
    k.run(["-n", ns, "wait", "--for=condition=Ready", "pod/client", "--timeout=120s"], timeout=130)

    def health() -> bool:
        script = f"printf 'GET /health HTTP/1.0\\r\\n\\r\\n' | nc -w 2 {ip} 2379"
        return '"health":"true"' in k.run(["-n", ns, "exec", "client", "--", "sh", "-c", script], check=False).stdout

    wait_for("etcd /health", health, timeout=30)
