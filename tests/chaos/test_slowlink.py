"""The delay proxy inside a namespace for real (chaos/slowlink.py): a process of an unprivileged user
in node a sees its round trip to node b grow by 2 x delay once the link is slowed, a connection
open before is cut (it would keep the fast path), and after ``stop`` the rules are gone and the
round trip is fast again. Skipped with the reason when not root or ``ip``/``nft`` are missing."""

from __future__ import annotations

import pwd
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pgquorum.chaos.netns import TestBed, unavailable_reason
from pgquorum.chaos.slowlink import TABLE, SlowLink

REASON = unavailable_reason()
pytestmark = pytest.mark.skipif(REASON is not None, reason=REASON or "")
USER = "postgres"
PORT = 9000

ECHO = f"""
import socket, threading
srv = socket.create_server(("{{addr}}", {PORT}))
print("ready", flush=True)
def serve(c):
    with c:
        while d := c.recv(4096):
            c.sendall(d)
while True:
    threading.Thread(target=serve, args=(srv.accept()[0],), daemon=True).start()
"""

# n pings on one connection, one every `gap` s; prints the minimum round trip, or the error
PING = f"""
import socket, sys, time
n, gap = int(sys.argv[1]), float(sys.argv[2])
s = socket.create_connection(("{{addr}}", {PORT}), timeout=5)
best = 9.0
try:
    for i in range(n):
        t0 = time.monotonic(); s.sendall(b"x"); assert s.recv(10) == b"x"
        best = min(best, time.monotonic() - t0); time.sleep(gap)
    print("min", best)
except (OSError, AssertionError) as e:
    print("error", type(e).__name__)
"""


@pytest.fixture(scope="module")
def bed() -> Iterator[TestBed]:
    try:
        pwd.getpwnam(USER)
    except KeyError:
        pytest.skip(f"no {USER!r} OS user to run the client as")
    with TestBed(["a", "b"]) as tb:
        echo = subprocess.Popen(
            tb.exec_argv("b", [sys.executable, "-c", ECHO.format(addr=tb.addr("b"))]),
            stdout=subprocess.PIPE,
            text=True,
        )
        assert echo.stdout is not None and echo.stdout.readline().strip() == "ready"
        try:
            yield tb
        finally:
            echo.kill()
            echo.wait(5)


def ping(bed: TestBed, n: int = 5, gap: float = 0.0) -> subprocess.Popen[str]:
    argv = bed.exec_argv("a", [sys.executable, "-c", PING.format(addr=bed.addr("b")), str(n), str(gap)], user=USER)
    return subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, cwd="/")


def result(proc: subprocess.Popen[str]) -> tuple[str, float]:
    out, _ = proc.communicate(timeout=30)
    kind, value = out.split()
    return kind, float(value) if kind == "min" else 0.0


def test_slowed_link_adds_the_delay_and_cuts_open_connections(bed: TestBed, tmp_path: Path) -> None:
    kind, fast = result(ping(bed))
    assert kind == "min" and fast < 0.05
    before = ping(bed, n=40, gap=0.1)  # open across the start: must be cut, not left fast
    time.sleep(0.5)
    link = SlowLink(bed, "a", [(bed.addr("b"), PORT)], 0.2, python=sys.executable, log_path=tmp_path / "p.log")
    link.start()
    try:
        assert link.cut == 1
        assert result(before)[0] == "error"
        kind, slow = result(ping(bed))
        assert kind == "min" and 0.4 <= slow < 0.5, slow
        assert "dnat to" in bed.run("a", ["nft", "list", "table", "ip", TABLE]).stdout
    finally:
        link.stop()
    assert bed.run("a", ["nft", "list", "table", "ip", TABLE], check=False).returncode != 0
    kind, again = result(ping(bed))
    assert kind == "min" and again < 0.05
