"""Host-side executors for the local cluster: what must exist, processes with pid files, cgroup
roots, mounts and namespaces to clean up. Thin wrappers; what to do comes from the plan."""

from __future__ import annotations

import contextlib
import ipaddress
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from pgquorum.kube.plan import ClusterPlan

# cgroup v1 hierarchies the kubelet uses; a cgroupRoot must exist in each of them
CGROUP_V1 = Path("/sys/fs/cgroup")
KERNEL_TUNABLES = ("vm/overcommit_memory", "kernel/panic", "kernel/panic_on_oops")


class HostError(RuntimeError):
    """Something the host must provide is missing or failed; the message names the fix."""


_TOOLS = {
    "ip": "iproute2",
    "nft": "nftables",
    "iptables": "iptables",
    "nsenter": "util-linux",
    "containerd": "containerd",
    "containerd-shim-runc-v2": "containerd",
    "ctr": "containerd",
    "runc": "runc",
    "conntrack": "conntrack",
    "openssl": "openssl",
    "etcd": "etcd-server",
}


def missing_requirements() -> list[str]:
    """One line per thing the host lacks, each naming the fix; empty when the cluster can run."""
    problems: list[str] = []
    if os.geteuid() != 0:
        return ["pgquorum kube needs root (network namespaces, containerd, kubelets): run it with sudo"]
    for tool, package in _TOOLS.items():
        if shutil.which(tool) is None and not Path("/usr/sbin", tool).exists():
            problems.append(f"'{tool}' is missing: apt-get install {package}")
    for plugin in ("bridge", "host-local", "portmap", "loopback"):
        if not Path("/usr/lib/cni", plugin).exists():
            problems.append(f"CNI plugin {plugin} missing in /usr/lib/cni: apt-get install containernetworking-plugins")
    if not Path("/proc/sys/net/bridge").exists():
        problems.append("br_netfilter is not loaded (no /proc/sys/net/bridge): modprobe br_netfilter")
    if "overlay" not in Path("/proc/filesystems").read_text():
        problems.append("the overlay filesystem is unavailable: modprobe overlay")
    if not (CGROUP_V1 / "cpu").is_dir() and not (CGROUP_V1 / "cgroup.controllers").exists():
        problems.append("no cgroup hierarchy mounted under /sys/fs/cgroup")
    return problems


# ----------------------------------------------------------------------------- processes


def start(name: str, argv: Sequence[str], plan: ClusterPlan, log: Path, netns: str | None = None) -> int:
    """Start a long-running process detached from us (own session), record its pid."""
    full = list(argv)
    if netns is not None:
        # nsenter, not `ip netns exec`: that remounts /sys, and the kubelet then finds no cgroups
        full = ["nsenter", f"--net=/run/netns/{netns}", "--", *full]
    log.parent.mkdir(parents=True, exist_ok=True)
    plan.pid_dir.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            full, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, close_fds=True
        )
    (plan.pid_dir / f"{name}.pid").write_text(f"{proc.pid} {process_identity(proc.pid)}\n")
    return proc.pid


def process_identity(pid: int) -> str:
    """The boot and start time of a process: with its pid, names it across pid reuse and reboots."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        with open(f"/proc/{pid}/stat") as f:
            start = f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""
    return f"{boot}:{start}"


def recorded_pid(plan: ClusterPlan, name: str) -> int | None:
    """The recorded process's pid while that very process runs. A pid file outlives its process (a
    crash, a reboot, a copied disk): its pid may then belong to anything, which must never be killed."""
    try:
        fields = (plan.pid_dir / f"{name}.pid").read_text().split()
        pid = int(fields[0])
    except (OSError, ValueError, IndexError):
        return None
    if len(fields) != 2 or fields[1] != process_identity(pid):
        return None
    return pid


def alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def rss_mib(pid: int | None) -> float | None:
    """Resident memory of a live process in MiB (VmRSS), None when it is not running."""
    if not alive(pid):
        return None
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def stop_recorded(plan: ClusterPlan, names: Sequence[str], grace: float = 5.0) -> None:
    """SIGTERM the recorded processes (in the given order), SIGKILL what outlives ``grace``."""
    pids = [p for p in (recorded_pid(plan, n) for n in names) if p is not None and alive(p)]
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while any(alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    for pid in pids:
        if alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    for n in names:
        with contextlib.suppress(FileNotFoundError):
            (plan.pid_dir / f"{n}.pid").unlink()


# ----------------------------------------------------------------------------- cgroups


def _v1_hierarchies() -> list[Path]:
    if not CGROUP_V1.is_dir():
        return []
    return [p for p in CGROUP_V1.iterdir() if p.is_dir() and not p.is_symlink() and (p / "cgroup.procs").exists()]


def create_cgroup_root(cgroup_root: str) -> None:
    """The kubelet's cgroupRoot in every hierarchy; cpuset needs cpus/mems before anything joins."""
    rel = cgroup_root.strip("/")
    for h in _v1_hierarchies():
        target = h / rel
        target.mkdir(parents=True, exist_ok=True)
        if h.name == "cpuset":
            for f in ("cpuset.cpus", "cpuset.mems"):
                if not (target / f).read_text().strip():
                    (target / f).write_text((h / f).read_text())


def _cgroup_dirs(cgroup_root: str) -> list[Path]:
    rel = cgroup_root.strip("/")
    found: list[Path] = []
    for h in _v1_hierarchies():
        top = h / rel
        if top.is_dir():
            found += [Path(d) for d, _dirs, _files in os.walk(top)]
    return found


def kill_cgroup(cgroup_root: str, timeout: float = 10.0) -> None:
    """SIGKILL every process under the cgroup root (the node's pods), then remove the cgroups."""
    deadline = time.monotonic() + timeout
    while True:
        pids: set[int] = set()
        for d in _cgroup_dirs(cgroup_root):
            with contextlib.suppress(OSError):
                pids |= {int(p) for p in (d / "cgroup.procs").read_text().split()}
        pids.discard(os.getpid())
        if not pids or time.monotonic() > deadline:
            break
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGCONT)
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.2)
    for d in sorted(_cgroup_dirs(cgroup_root), key=lambda p: len(p.parts), reverse=True):
        with contextlib.suppress(OSError):
            d.rmdir()


# ----------------------------------------------------------------------------- mounts, namespaces


def unmount_under(*roots: Path) -> int:
    """Lazily unmount every mount point below ``roots`` (deepest first); returns how many."""
    prefixes = [str(r).rstrip("/") + "/" for r in roots]
    points = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            point = line.split()[4].replace("\\040", " ")
            if any(point.startswith(p) or point + "/" == p for p in prefixes):
                points.append(point)
    for point in sorted(set(points), key=len, reverse=True):
        subprocess.run(["umount", "-l", point], capture_output=True, timeout=30, check=False)
    return len(set(points))


def pod_namespaces(cluster_cidr: str) -> list[str]:
    """CNI-made pod namespaces (/run/netns/cni-*) holding an address of our pod range."""
    net = ipaddress.ip_network(cluster_cidr)
    found = []
    netns_dir = Path("/run/netns")
    if not netns_dir.is_dir():
        return []
    for entry in netns_dir.iterdir():
        if not entry.name.startswith("cni-"):
            continue
        out = subprocess.run(
            ["ip", "-n", entry.name, "-o", "-4", "addr", "show"], capture_output=True, text=True, timeout=10
        ).stdout
        for word in out.split():
            if "/" in word and word[0].isdigit():
                with contextlib.suppress(ValueError):
                    if ipaddress.ip_interface(word).ip in net:
                        found.append(entry.name)
                        break
    return found


# ----------------------------------------------------------------------------- kernel tunables


def save_kernel_tunables(path: Path) -> None:
    """The kubelet sets vm.overcommit_memory, kernel.panic and kernel.panic_on_oops (host-wide, as on
    every kubeadm or kind node); remember the host's values once so ``down`` puts them back."""
    if path.exists():
        return
    lines = [
        f"{t} {Path('/proc/sys', t).read_text().strip()}" for t in KERNEL_TUNABLES if Path("/proc/sys", t).exists()
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


def restore_kernel_tunables(path: Path) -> None:
    if not path.exists():
        return
    for line in path.read_text().splitlines():
        name, _, value = line.partition(" ")
        if name in KERNEL_TUNABLES and value:
            with contextlib.suppress(OSError):
                Path("/proc/sys", name).write_text(value)
    path.unlink()
