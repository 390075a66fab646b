"""Free TCP ports on loopback for local clusters and tests.

Ports are drawn *below* the kernel's ephemeral range (``ip_local_port_range``): a local cluster
keeps its ports for its whole life, and a postgres restarted after a kill must find its port
free. A port from the ephemeral range can meanwhile be taken as the source port of any outgoing
connection (agents to etcd, to each other, clients), and postgres then fails with "Address
already in use"; below that range, only another listener can take it.
"""

from __future__ import annotations

import random
import socket
from pathlib import Path

_LOW = 10000
_handed: set[int] = set()  # never hand the same port twice in one process, even if still unbound


def _ephemeral_start() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port(host: str = "127.0.0.1") -> int:
    """A port nobody listens on right now, outside the ephemeral range (a small race remains until
    it is bound); falls back to one the OS picks when none is found there."""
    high = _ephemeral_start() - 1
    rng = random.SystemRandom()
    for _ in range(200 if high > _LOW else 0):
        port = rng.randint(_LOW, high)
        if port in _handed:
            continue
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                sock.bind((host, port))
        except OSError:
            continue
        _handed.add(port)
        return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port = int(sock.getsockname()[1])
    _handed.add(port)
    return port
