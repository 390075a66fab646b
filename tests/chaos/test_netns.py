"""The namespace test bed (chaos/netns.py) for real: namespaces ping each other over the bridge, a
partition rule (nftables drop inside the namespaces) stops it, healing restores it; one-way loss;
processes run inside a node as an unprivileged user and are reachable from the host; debris of a
crashed run is removed at the next start. Skipped with the reason when not root or when
``ip``/``nft`` are missing."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pgquorum.chaos.netns import NetnsError, TestBed, unavailable_reason

REASON = unavailable_reason()
pytestmark = pytest.mark.skipif(REASON is not None, reason=REASON or "")


@pytest.fixture(scope="module")
def bed() -> Iterator[TestBed]:
    with TestBed(["a", "b", "c"]) as tb:
        yield tb


def pings(bed: TestBed, src: str, dst: str) -> bool:
    target = bed.host_addr if dst == "host" else bed.addr(dst)
    return bed.run(src, ["ping", "-c", "1", "-W", "1", "-q", target], check=False, timeout=10).returncode == 0


def test_nodes_ping_each_other_and_the_host(bed: TestBed) -> None:
    assert [bed.addr(n) for n in "abc"] == ["10.77.0.11", "10.77.0.12", "10.77.0.13"]
    assert pings(bed, "a", "b") and pings(bed, "b", "c") and pings(bed, "c", "a")
    assert pings(bed, "a", "host")
    # each namespace sees only its own address (and loopback)
    addrs = bed.run("a", ["ip", "-4", "-o", "addr", "show"]).stdout
    assert "10.77.0.11/24" in addrs and "10.77.0.12" not in addrs and "127.0.0.1" in addrs


def test_partition_stops_traffic_and_healing_restores_it(bed: TestBed) -> None:
    bed.cut("a", "b")
    try:
        assert bed.blocked("a") == {"out": ["10.77.0.12"], "in": ["10.77.0.12"]}
        assert not pings(bed, "a", "b") and not pings(bed, "b", "a")
        assert pings(bed, "a", "c") and pings(bed, "b", "c")  # only that link
    finally:
        bed.heal()
    assert bed.blocked("a") == {"out": [], "in": []}
    assert pings(bed, "a", "b") and pings(bed, "b", "a")


def test_one_way_loss(bed: TestBed) -> None:
    """a's packets to b are lost, b's to a arrive: a ping needs both ways, so both fail, but a UDP
    datagram from b reaches a while one from a never reaches b."""
    bed.block("a", ["b"], direction="out")
    try:
        assert not pings(bed, "a", "b") and not pings(bed, "b", "a")
        assert udp_arrives(bed, "b", "a") and not udp_arrives(bed, "a", "b")
    finally:
        bed.heal("a")
    assert udp_arrives(bed, "a", "b")


def udp_arrives(bed: TestBed, src: str, dst: str) -> bool:
    listener = subprocess.Popen(
        bed.exec_argv(
            dst,
            [
                sys.executable,
                "-c",
                "import socket,sys; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
                f"s.bind(('{bed.addr(dst)}', 9999)); s.settimeout(2); print('ready', flush=True); "
                "print(s.recv(100).decode())",
            ],
        ),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert listener.stdout is not None
        assert listener.stdout.readline().strip() == "ready"
        # a packet dropped on output fails sendto() with EPERM: lost either way
        send = (
            "import contextlib, socket\nwith contextlib.suppress(PermissionError):\n"
            f"    socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b'hello', ('{bed.addr(dst)}', 9999))"
        )
        bed.run(src, [sys.executable, "-c", send])
        out, _ = listener.communicate(timeout=10)
        return "hello" in out
    finally:
        if listener.poll() is None:
            listener.kill()
            listener.wait()


def test_isolate_and_majority_minority_partition(bed: TestBed) -> None:
    bed.isolate("c")
    try:
        assert pings(bed, "a", "b") and not pings(bed, "a", "c") and not pings(bed, "b", "c")
        assert pings(bed, "c", "host")  # clients still reach an isolated node
    finally:
        bed.heal()
    bed.partition([["a"], ["b", "c"]])
    try:
        assert pings(bed, "b", "c") and not pings(bed, "a", "b") and not pings(bed, "c", "a")
    finally:
        bed.heal()
    bed.isolate("b", from_host=True)
    try:
        assert not pings(bed, "b", "host")
    finally:
        bed.heal()
    assert pings(bed, "b", "host")


def test_process_inside_a_node_runs_unprivileged_and_serves_the_host(bed: TestBed, tmp_path: Path) -> None:
    assert bed.run("b", ["id", "-un"], user="postgres").stdout.strip() == "postgres"
    log = tmp_path / "server.log"
    tmp_path.chmod(0o777)
    code = (
        "import socket; s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); "
        f"s.bind(('{bed.addr('b')}', 7777)); s.listen(); "
        "c, _ = s.accept(); c.sendall(b'hi from b'); c.close()"
    )
    proc = bed.popen("b", [sys.executable, "-c", code], log_path=log, user="postgres")
    try:
        assert proc.pid in wait_for_pids(bed, "b", proc.pid)
        data = b""
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not data:
            try:
                with socket.create_connection((bed.addr("b"), 7777), timeout=1) as s:
                    data = s.recv(100)
            except OSError:
                time.sleep(0.1)
        assert data == b"hi from b"
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def wait_for_pids(bed: TestBed, node: str, pid: int) -> list[int]:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        pids = bed.pids(node)
        if pid in pids:
            return pids
        time.sleep(0.05)
    return bed.pids(node)


def test_unknown_node_and_bad_direction_are_clear(bed: TestBed) -> None:
    with pytest.raises(NetnsError, match="no node 'zz'"):
        bed.addr("zz")
    with pytest.raises(ValueError, match="direction"):
        bed.block("a", ["b"], direction="sideways")


def test_debris_of_a_crashed_run_is_removed(bed: TestBed, tmp_path: Path) -> None:
    """A run that never tore down left a namespace with a process in it and its bridge: the next
    bed with that prefix removes both when it starts, and leaves nothing behind when it stops.
    (Another prefix and lock file, so the module's bed is untouched.)"""
    subprocess.run(["ip", "netns", "add", "pqd-x"], check=True)
    sleeper = subprocess.Popen(["ip", "netns", "exec", "pqd-x", "sleep", "300"])
    other = TestBed(["x"], prefix="pqd", subnet="10.79.0", lock_path=tmp_path / "lock")
    try:
        subprocess.run(["ip", "link", "add", "pqdbr0", "type", "bridge"], check=True)
        with other:
            assert sleeper.wait(10) == -9
            assert other.run("x", ["ip", "-4", "-o", "addr", "show"]).stdout.count("10.79.0.11/24") == 1
            assert other.pids("x") == []  # nothing of the old run lives in the new namespace
            # a second bed on the same lock waits, then gives up with a clear message
            with pytest.raises(NetnsError, match="another chaos test bed holds"):
                TestBed(["y"], prefix="pqe", lock_path=tmp_path / "lock", lock_timeout=0.5).up()
        assert "pqd-x" not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        assert subprocess.run(["ip", "link", "show", "pqdbr0"], capture_output=True).returncode != 0
    finally:
        if sleeper.poll() is None:
            sleeper.kill()
        other.down()
        subprocess.run(["ip", "netns", "del", "pqd-x"], capture_output=True)
        subprocess.run(["ip", "link", "del", "pqdbr0"], capture_output=True)
