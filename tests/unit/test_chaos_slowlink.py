"""The delay proxy's pure parts (port plan, nftables rules, route parsing) and the delay itself on
loopback: an echo round trip through a proxy with ``delay`` d takes >= 2 d more than without."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest

from pgquorum.chaos.slowlink import Route, main, parse_route, plan, ruleset
from pgquorum.chaos.tcpproxy import ProxyHub


def test_plan_numbers_ports_and_drops_duplicates() -> None:
    routes = plan([("10.77.0.12", 5432), ("10.77.0.12", 8008), ("10.77.0.13", 5432), ("10.77.0.12", 5432)], 7100)
    assert routes == [
        Route("10.77.0.12", 5432, 7100),
        Route("10.77.0.12", 8008, 7101),
        Route("10.77.0.13", 5432, 7102),
    ]


@pytest.mark.parametrize(("target", "needle"), [(("10.77.0.x", 1), "10.77.0.x"), (("10.77.0.1", 70000), "port")])
def test_plan_refuses_bad_targets(target: tuple[str, int], needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        plan([target])


def test_ruleset_redirects_non_root_connections_to_the_local_proxy() -> None:
    text = ruleset("10.77.0.11", [Route("10.77.0.14", 2379, 7100), Route("10.77.0.15", 2379, 7101)])
    assert text.startswith("table ip pqslow {")
    assert "type nat hook output priority -100" in text
    assert "meta skuid != 0 ip daddr 10.77.0.14 tcp dport 2379 dnat to 10.77.0.11:7100" in text
    assert "meta skuid != 0 ip daddr 10.77.0.15 tcp dport 2379 dnat to 10.77.0.11:7101" in text


def test_parse_route_round_trips_and_names_bad_input() -> None:
    r = Route("10.77.0.12", 5432, 7100)
    assert parse_route(r.spec()) == r
    for bad in ("7100", "7100=host:5432", "x=10.0.0.1:1", "7100=10.0.0.1"):
        with pytest.raises(ValueError, match="LISTEN_PORT=IPV4:PORT"):
            parse_route(bad)


def test_proxy_main_refuses_bad_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--listen", "127.0.0.1", "--delay", "0.1", "nonsense"]) == 2
    assert "route 'nonsense'" in capsys.readouterr().err
    assert main(["--listen", "127.0.0.1", "--delay", "-1", "7100=127.0.0.1:1"]) == 2
    assert "--delay" in capsys.readouterr().err


@pytest.fixture
def echo() -> Iterator[int]:
    srv = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except TimeoutError:
                continue
            with conn:
                while data := conn.recv(4096):
                    conn.sendall(data)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    yield int(srv.getsockname()[1])
    stop.set()
    t.join(2)
    srv.close()


def round_trips(port: int, n: int = 5) -> list[float]:
    out = []
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        for i in range(n):
            t0 = time.monotonic()
            s.sendall(b"ping%d" % i)
            assert s.recv(100) == b"ping%d" % i
            out.append(time.monotonic() - t0)
    return out


@pytest.mark.parametrize("delay", [0.0, 0.15])
def test_delay_proxy_adds_the_delay_each_way(echo: int, delay: float) -> None:
    hub = ProxyHub()
    try:
        port = hub.add("e", "127.0.0.1", echo)
        hub.set_mode("e", "pass", delay)
        rtts = round_trips(port)
    finally:
        hub.close()
    assert min(rtts) >= 2 * delay
    assert max(rtts) < 2 * delay + 0.1
