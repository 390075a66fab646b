"""The agent's bounded name resolution (agent/resolver.py) against a stand-in system resolver:
plain functions that answer, fail or hang on an Event."""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

import pytest

from pgquorum.agent.resolver import BoundedResolver

ANSWER = [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("10.96.0.10", 2379))]
NEWER = [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("10.96.0.11", 2379))]


class Dns:
    """Answers from ``answers`` in turn; ``stall`` makes lookups hang until released."""

    def __init__(self, *answers: Any) -> None:
        self.answers = list(answers)
        self.calls = 0
        self.stall = threading.Event()
        self.stall.set()

    def __call__(self, host: str, port: int, *rest: int) -> list[tuple[Any, ...]]:
        self.calls += 1
        self.stall.wait(10)
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, BaseException):
            raise answer
        return list(answer)


def test_a_stalled_lookup_answers_with_the_last_good_address_within_the_deadline() -> None:
    dns = Dns(ANSWER, NEWER)
    r = BoundedResolver(dns, deadline=0.2)
    assert r.getaddrinfo("etcd.ns.svc", 2379) == ANSWER
    dns.stall.clear()
    started = time.monotonic()
    assert r.getaddrinfo("etcd.ns.svc", 2379) == ANSWER  # the stalled one is not waited for
    assert time.monotonic() - started < 1.0
    assert r.getaddrinfo("etcd.ns.svc", 2379) == ANSWER  # joined, not asked again
    assert dns.calls == 2
    dns.stall.set()  # the stalled lookup ends: its answer replaces the old one
    deadline = time.monotonic() + 5
    while r.getaddrinfo("etcd.ns.svc", 2379) != NEWER:
        assert time.monotonic() < deadline
        time.sleep(0.01)


def test_a_failing_lookup_answers_with_the_last_good_address_and_a_first_one_fails() -> None:
    r = BoundedResolver(Dns(ANSWER, socket.gaierror(socket.EAI_AGAIN, "Temporary failure")), deadline=0.2)
    assert r.getaddrinfo("etcd.ns.svc", 2379) == ANSWER
    assert r.getaddrinfo("etcd.ns.svc", 2379) == ANSWER
    never = BoundedResolver(Dns(socket.gaierror(socket.EAI_NONAME, "Name or service not known")), deadline=0.2)
    with pytest.raises(socket.gaierror):
        never.getaddrinfo("nowhere.invalid", 80)


def test_addresses_are_not_looked_up() -> None:
    dns = Dns(ANSWER)
    r = BoundedResolver(dns, deadline=0.2)
    for host in ("10.244.1.7", "fd00::7", "localhost"):
        r.getaddrinfo(host, 8008)
    assert dns.calls == 3  # handed straight to the system resolver, never cached or threaded
    dns.stall.clear()
    # a first lookup of a name has nothing to fall back on: it waits for the system resolver
    t = threading.Thread(target=r.getaddrinfo, args=("db-1.db.ns.svc", 8008), daemon=True)
    t.start()
    t.join(0.5)
    assert t.is_alive()
    dns.stall.set()
    t.join(5)
    assert not t.is_alive()
