"""A minimal DNS A query (pure encode/decode) to prove cluster DNS answers, without dig in the image.

``python3 -m pgquorum.kube.dns SERVER NAME`` prints the A records, for running inside a node's
namespace (``nsenter --net=...``), where ClusterIPs exist.
"""

from __future__ import annotations

import socket
import struct
import sys


def encode_query(name: str, query_id: int = 0x5051) -> bytes:
    header = struct.pack(">HHHHHH", query_id, 0x0100, 1, 0, 0, 0)  # recursion desired, one question
    labels = b"".join(bytes([len(p)]) + p.encode() for p in name.rstrip(".").split(".")) + b"\0"
    return header + labels + struct.pack(">HH", 1, 1)  # A, IN


def _skip_name(data: bytes, pos: int) -> int:
    while True:
        n = data[pos]
        if n == 0:
            return pos + 1
        if n & 0xC0 == 0xC0:
            return pos + 2
        pos += n + 1


def decode_a_records(data: bytes) -> tuple[int, list[str]]:
    """(rcode, IPv4 addresses of the A answers)."""
    _qid, flags, qd, an, _ns, _ar = struct.unpack(">HHHHHH", data[:12])
    pos = 12
    for _ in range(qd):
        pos = _skip_name(data, pos) + 4
    out = []
    for _ in range(an):
        pos = _skip_name(data, pos)
        rtype, _cls, _ttl, rdlen = struct.unpack(">HHIH", data[pos : pos + 10])
        pos += 10
        if rtype == 1 and rdlen == 4:
            out.append(socket.inet_ntoa(data[pos : pos + 4]))
        pos += rdlen
    return flags & 0x000F, out


def query(server: str, name: str, timeout: float = 2.0) -> list[str]:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        s.sendto(encode_query(name), (server, 53))
        data, _ = s.recvfrom(4096)
    rcode, addrs = decode_a_records(data)
    if rcode != 0:
        raise OSError(f"DNS rcode {rcode} for {name}")
    return addrs


if __name__ == "__main__":
    try:
        print(" ".join(query(sys.argv[1], sys.argv[2])))
    except OSError as exc:
        print(f"dns: {exc}", file=sys.stderr)
        sys.exit(1)
