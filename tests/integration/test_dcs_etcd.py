"""EtcdDCS against a real etcd (started with EtcdServer): CAS semantics, leases, failures."""

from __future__ import annotations

import base64
import contextlib
import functools
import http.server
import itertools
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from pgquorum.agent.dcs.base import DCS, DCSError
from pgquorum.agent.dcs.etcd import EtcdDCS
from pgquorum.agent.model import HistoryEntry, LeaderStatus, MemberInfo, Role, SyncRecord, VoterEntry
from pgquorum.agent.quorum.votes import Vote
from pgquorum.local.etcd import EtcdServer
from pgquorum.local.ports import free_port

pytestmark = pytest.mark.integration

TTL = 2  # etcd's minimum lease with default election timing
_names = itertools.count()


@pytest.fixture(scope="module")
def etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdServer]:
    server = EtcdServer(tmp_path_factory.mktemp("etcd") / "data", free_port(), free_port())
    server.start()
    yield server
    server.stop()
    assert not server.is_running()


@pytest.fixture
def cluster() -> str:
    """A fresh cluster name per test: tests share one etcd but never each other's keys."""
    return f"c{next(_names)}"


def make(etcd: EtcdServer, cluster: str, member: str = "m1", ttl: int = TTL, timeout: float = 1.0) -> EtcdDCS:
    return EtcdDCS([etcd.client_url], "pgquorum", cluster, member, ttl, timeout)


def info(name: str) -> MemberInfo:
    return MemberInfo(name, Role.REPLICA, "running", f"http://{name}:8008", f"postgresql://{name}:5432")


def raw_put(etcd: EtcdServer, key: str, value: str) -> None:
    body = {"key": base64.b64encode(key.encode()).decode(), "value": base64.b64encode(value.encode()).decode()}
    requests.post(f"{etcd.client_url}/v3/kv/put", json=body, timeout=2).raise_for_status()


def race(*calls: Callable[[], Any]) -> list[Any]:
    """Run the calls in threads released at the same instant; return their results in order."""
    barrier = threading.Barrier(len(calls))
    results: list[Any] = [None] * len(calls)

    def run(i: int) -> None:
        barrier.wait()
        results[i] = calls[i]()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    return results


def test_implements_protocol(etcd: EtcdServer, cluster: str) -> None:
    dcs: DCS = make(etcd, cluster)  # mypy checks the structural match; here: every method is present
    for name in [n for n in DCS.__dict__ if not n.startswith("_")]:
        assert callable(getattr(dcs, name)), name


def test_get_cluster_empty(etcd: EtcdServer, cluster: str) -> None:
    state = make(etcd, cluster).get_cluster()
    assert state.revision > 0
    assert (state.initialize, state.leader, state.term, state.members) == (None, None, 0, ())
    assert (state.status, state.config) == (None, None)


def test_get_cluster_reads_everything_and_only_this_cluster(etcd: EtcdServer, cluster: str) -> None:
    a = make(etcd, cluster, "a")
    other = make(etcd, cluster + "x", "a")  # "<cluster>x" shares the string prefix, not the key prefix
    a.touch_member(info("a"))
    other.touch_member(info("zz"))
    assert a.claim_initialize()
    a.set_initialized("7312345678901234567")
    assert a.acquire_leader("a", 0) == 1
    a.write_status(LeaderStatus(term=1, timeline=3, wal_lsn=123456, leader="a"))
    assert a.set_config({"maximum_lag_on_failover": 1})
    state = a.get_cluster()
    assert state.initialize == "7312345678901234567"
    assert state.leader is not None and state.leader.name == "a"
    assert state.leader.lease_id == a.lease_id and state.leader.mod_revision <= state.revision
    assert state.term == 1
    assert [m.name for m in state.members] == ["a"]
    assert state.member("a") == info("a")
    assert state.status == LeaderStatus(term=1, timeline=3, wal_lsn=123456, leader="a")
    assert state.config == {"maximum_lag_on_failover": 1}


def test_claim_initialize_race_has_one_winner(etcd: EtcdServer, cluster: str) -> None:
    a, b = make(etcd, cluster, "a"), make(etcd, cluster, "b")
    results = race(a.claim_initialize, b.claim_initialize)
    assert sorted(results) == [False, True]
    assert a.get_cluster().initialize == ""
    winner, loser = (a, b) if results[0] else (b, a)
    winner.cancel_initialize()
    assert a.get_cluster().initialize is None
    assert loser.claim_initialize()
    loser.set_initialized("42")
    winner.cancel_initialize()  # no effect once bootstrap completed
    assert a.get_cluster().initialize == "42"
    assert not winner.claim_initialize()


def test_acquire_leader_exactly_one_winner(etcd: EtcdServer) -> None:
    for _ in range(15):
        cluster = f"race{next(_names)}"
        a, b = make(etcd, cluster, "a"), make(etcd, cluster, "b")
        a.ensure_lease()
        b.ensure_lease()
        results = race(functools.partial(a.acquire_leader, "a", 0), functools.partial(b.acquire_leader, "b", 0))
        assert sorted(results, key=str) == [1, None], results
        state = a.get_cluster()
        winner = a if results[0] == 1 else b
        assert state.leader is not None and state.leader.name == winner.member
        assert state.leader.lease_id == winner.lease_id
        assert state.term == 1


def test_acquire_needs_current_term_and_no_leader(etcd: EtcdServer, cluster: str) -> None:
    a, b = make(etcd, cluster, "a"), make(etcd, cluster, "b")
    assert a.acquire_leader("a", 0) == 1
    assert b.acquire_leader("b", 1) is None  # leader key exists
    assert a.release_leader("a")
    assert b.acquire_leader("b", 0) is None  # stale term: someone was leader since
    assert b.acquire_leader("b", 5) is None  # term from the future
    assert a.get_cluster().leader is None
    assert b.acquire_leader("b", 1) == 2
    state = b.get_cluster()
    assert state.leader is not None and (state.leader.name, state.term) == ("b", 2)


def test_advance_term_closes_an_election_only_without_a_leader_and_at_the_expected_term(
    etcd: EtcdServer, cluster: str
) -> None:
    a, b = make(etcd, cluster, "a"), make(etcd, cluster, "b")
    assert a.acquire_leader("a", 0) == 1
    assert not b.advance_term(1), "a leader holds the key"
    assert a.release_leader("a")
    assert not b.advance_term(0), "stale term"
    assert b.advance_term(1)
    assert not a.advance_term(1), "already closed by b: compare-and-swap"
    assert b.get_cluster().term == 2 and b.get_cluster().leader is None
    assert a.acquire_leader("a", 1) is None, "term 2 was closed; the next election is for term 3"
    assert a.acquire_leader("a", 2) == 3


def test_leader_and_member_vanish_after_ttl_without_keepalive(etcd: EtcdServer, cluster: str) -> None:
    a, observer = make(etcd, cluster, "a"), make(etcd, cluster, "obs")
    a.touch_member(info("a"))
    assert a.acquire_leader("a", 0) == 1
    old_lease = a.lease_id
    sent = time.monotonic()
    assert a.keepalive()
    while True:
        state = observer.get_cluster()
        now = time.monotonic()
        if state.leader is None:
            break
        assert now - sent < TTL + 2, "leader key outlived its lease by far"
        time.sleep(0.02)
    # The safety invariant of invariant I1: never gone before last_renew_sent + ttl.
    assert now - sent >= TTL, f"leader key vanished {now - sent:.2f}s after the last renewal"
    assert state.members == ()  # the member key was on the same lease
    assert state.term == 1  # the term survives: it has no lease
    assert a.keepalive() is False and a.lease_id is None
    assert a.ensure_lease() != old_lease


def test_keepalive_keeps_leader_beyond_ttl(etcd: EtcdServer, cluster: str) -> None:
    a, observer = make(etcd, cluster, "a"), make(etcd, cluster, "obs")
    a.touch_member(info("a"))
    assert a.acquire_leader("a", 0) == 1
    lease = a.lease_id
    end = time.monotonic() + 2.5 * TTL
    while time.monotonic() < end:
        assert a.keepalive()
        time.sleep(0.5)
        state = observer.get_cluster()
        assert state.leader is not None and state.leader.lease_id == lease
        assert state.member("a") is not None


def test_touch_member_replaces_a_lost_lease(etcd: EtcdServer, cluster: str) -> None:
    a = make(etcd, cluster, "a")
    a.touch_member(info("a"))
    old = a.lease_id
    requests.post(f"{etcd.client_url}/v3/lease/revoke", json={"ID": str(old)}, timeout=2).raise_for_status()
    assert a.get_cluster().members == ()
    a.touch_member(info("a"))  # etcd says "lease not found": a new lease is granted and the put retried
    assert a.lease_id not in (None, old)
    assert [m.name for m in a.get_cluster().members] == ["a"]


def test_revoke_lease_drops_keys_at_once(etcd: EtcdServer, cluster: str) -> None:
    a = make(etcd, cluster, "a")
    a.touch_member(info("a"))
    assert a.acquire_leader("a", 0) == 1
    a.revoke_lease()
    state = a.get_cluster()
    assert (state.leader, state.members, a.lease_id) == (None, (), None)


def test_release_leader_only_by_owner(etcd: EtcdServer, cluster: str) -> None:
    a, b = make(etcd, cluster, "a"), make(etcd, cluster, "b")
    assert not a.release_leader("a")  # no leader at all
    assert a.acquire_leader("a", 0) == 1
    assert not b.release_leader("b")
    assert a.get_cluster().leader is not None
    assert a.release_leader("a")
    assert a.get_cluster().leader is None
    assert a.get_cluster().term == 1


def test_handover_moves_key_to_new_members_lease(etcd: EtcdServer, cluster: str) -> None:
    a, b = make(etcd, cluster, "a"), make(etcd, cluster, "b")
    a.touch_member(info("a"))
    b.touch_member(info("b"))
    assert a.acquire_leader("a", 0) == 1
    assert a.handover_leader("a", "b", 0) is None  # stale term
    assert a.handover_leader("b", "a", 1) is None  # b is not the leader
    assert a.handover_leader("a", "ghost", 1) is None  # no member key: no lease to put it on
    assert a.handover_leader("a", "b", 1) == 2
    state = a.get_cluster()
    assert state.leader is not None and (state.leader.name, state.term) == ("b", 2)
    assert state.leader.lease_id == b.lease_id != a.lease_id
    assert a.handover_leader("a", "b", 2) is None  # a is no longer the leader
    # the key now lives and dies with b's lease: a's keepalives do not keep it
    sent = time.monotonic()
    while time.monotonic() - sent < TTL + 2 and a.get_cluster().leader is not None:
        assert a.keepalive()
        time.sleep(0.1)
    assert a.get_cluster().leader is None
    assert a.get_cluster().member("a") is not None


def test_history_sorted_by_term(etcd: EtcdServer, cluster: str) -> None:
    a = make(etcd, cluster)
    assert a.get_history() == []
    for term in (10, 2, 100, 1):  # lexical order of unpadded keys would be 1, 10, 100, 2
        a.append_history(HistoryEntry(term, 1, f"m{term}", None, "failover", 1.5, {"detection": 0.25}))
    history = a.get_history()
    assert [h.term for h in history] == [1, 2, 10, 100]
    assert history[0] == HistoryEntry(1, 1, "m1", None, "failover", 1.5, {"detection": 0.25})
    assert a.get_cluster().term == 0  # history keys are not confused with anything else


def test_set_config_compare_and_swap(etcd: EtcdServer, cluster: str) -> None:
    a = make(etcd, cluster)
    before = a.get_cluster().revision
    assert a.set_config({"x": 1}, expected_revision=before)
    assert not a.set_config({"x": 2}, expected_revision=before)  # modified after `before`
    now = a.get_cluster()
    assert now.config == {"x": 1}
    assert a.set_config({"x": 3}, expected_revision=now.revision)
    assert a.set_config({"x": 4})
    assert a.get_cluster().config == {"x": 4}


def test_malformed_values(etcd: EtcdServer, cluster: str) -> None:
    a = make(etcd, cluster)
    a.touch_member(info("good"))
    raw_put(etcd, f"/pgquorum/{cluster}/members/bad", "{not json")
    raw_put(etcd, f"/pgquorum/{cluster}/status", "[]")
    state = a.get_cluster()  # one bad member key must not blind the HA loop
    assert [m.name for m in state.members] == ["good"] and state.status is None
    raw_put(etcd, f"/pgquorum/{cluster}/term", "seven")
    with pytest.raises(DCSError, match="term"):
        a.get_cluster()


def test_sync_record_compare_and_swap_by_the_leader_only(etcd: EtcdServer, cluster: str) -> None:
    a, b = make(etcd, cluster, "a"), make(etcd, cluster, "b")
    record = SyncRecord("a", 1, ("b", "c"))
    assert not a.write_sync(record, 0)  # no leader key yet: nobody may write the quorum
    assert a.acquire_leader("a", 0) == 1
    assert not b.write_sync(SyncRecord("b", 1, ("a",)), 0)  # b does not hold the leader key
    assert a.write_sync(record, 0)
    stored = a.get_cluster().sync
    assert stored is not None and (stored.leader, stored.k, stored.voters) == ("a", 1, ("b", "c"))
    assert not a.write_sync(SyncRecord("a", 1, ("b",)), 0)  # stale: the key exists now
    assert a.write_sync(SyncRecord("a", 1, ("b",)), stored.mod_revision)
    assert a.get_cluster().sync.voters == ("b",)  # type: ignore[union-attr]
    raw_put(etcd, f"/pgquorum/{cluster}/sync", "{broken")
    broken = a.get_cluster().sync  # malformed: promises nothing, and can be overwritten
    assert broken is not None and broken.k == 0 and broken.mod_revision > stored.mod_revision
    assert a.write_sync(record, broken.mod_revision)


# -- failures: always DCSError, always within about `timeout` --------------------------------------


ALL_CALLS: dict[str, Callable[[EtcdDCS], Any]] = {
    "get_cluster": lambda d: d.get_cluster(),
    "ensure_lease": lambda d: d.ensure_lease(),
    "touch_member": lambda d: d.touch_member(info("m1")),
    "delete_member": lambda d: d.delete_member("m1"),
    "claim_initialize": lambda d: d.claim_initialize(),
    "set_initialized": lambda d: d.set_initialized("1"),
    "cancel_initialize": lambda d: d.cancel_initialize(),
    "acquire_leader": lambda d: d.acquire_leader("m1", 0),
    "release_leader": lambda d: d.release_leader("m1"),
    "handover_leader": lambda d: d.handover_leader("m1", "m2", 1),
    "write_status": lambda d: d.write_status(LeaderStatus(1, 1, 1)),
    "append_history": lambda d: d.append_history(HistoryEntry(1, 1, "m1", None, "x", 0.0)),
    "get_history": lambda d: d.get_history(),
    "set_config": lambda d: d.set_config({}, 3),
    "write_sync": lambda d: d.write_sync(SyncRecord("m1", 1, ("m2",)), 0),
}


@pytest.mark.parametrize("call", list(ALL_CALLS))
def test_closed_port_raises_dcserror_fast(call: str) -> None:
    dcs = EtcdDCS([f"http://127.0.0.1:{free_port()}"], "pgquorum", "c", "m1", TTL, 1.0)
    start = time.monotonic()
    with pytest.raises(DCSError, match="unreachable"):
        ALL_CALLS[call](dcs)
    assert time.monotonic() - start < 0.5


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts TCP connections (kernel backlog) and never answers."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        yield sock.getsockname()[1]


@pytest.fixture
def blackhole_port() -> Iterator[int]:
    """A port whose accept queue is full: new SYNs are dropped, so connecting hangs."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(0)
        port = sock.getsockname()[1]
        fillers = []
        for _ in range(3):
            c = socket.socket()
            c.settimeout(0.2)
            with contextlib.suppress(OSError):
                c.connect(("127.0.0.1", port))
            fillers.append(c)
        yield port
        for c in fillers:
            c.close()


def test_silent_endpoint_times_out_within_timeout(silent_port: int) -> None:
    dcs = EtcdDCS([f"http://127.0.0.1:{silent_port}"], "pgquorum", "c", "m1", TTL, 0.5)
    for call in ("get_cluster", "acquire_leader", "ensure_lease"):
        start = time.monotonic()
        with pytest.raises(DCSError):
            ALL_CALLS[call](dcs)
        assert 0.4 <= time.monotonic() - start <= 0.8, call


def test_blackhole_endpoint_times_out_within_timeout(blackhole_port: int) -> None:
    dcs = EtcdDCS([f"http://127.0.0.1:{blackhole_port}"], "pgquorum", "c", "m1", TTL, 0.5)
    start = time.monotonic()
    with pytest.raises(DCSError, match="unreachable"):
        dcs.get_cluster()
    assert 0.4 <= time.monotonic() - start <= 0.8


def test_etcd_stopped_then_back(tmp_path: Path) -> None:
    server = EtcdServer(tmp_path / "data", free_port(), free_port(), log_file=tmp_path / "etcd.log")
    server.start()
    try:
        dcs = EtcdDCS([server.client_url], "pgquorum", "c", "m1", 5, 0.5)
        dcs.touch_member(info("m1"))
        assert dcs.keepalive()
        server.stop()
        assert not server.is_running() and server.pid is None
        for call in ("get_cluster", "touch_member", "acquire_leader"):
            start = time.monotonic()
            with pytest.raises(DCSError):
                ALL_CALLS[call](dcs)
            assert time.monotonic() - start <= 0.8
        with pytest.raises(DCSError):  # unreachable is not "lease gone"
            dcs.keepalive()
        assert dcs.lease_id is not None
        server.start()
        # etcd 3.4 restores leases with a fresh full TTL after a restart: our lease is still there
        assert dcs.keepalive()
        assert dcs.get_cluster().member("m1") is not None
    finally:
        server.stop()


def test_first_endpoint_dead(etcd: EtcdServer, cluster: str) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    dcs = EtcdDCS([dead, etcd.client_url], "pgquorum", cluster, "m1", TTL, 1.0)
    assert dcs.get_cluster().leader is None
    assert dcs.endpoint == etcd.client_url  # remembered
    assert dcs.acquire_leader("m1", 0) == 1


def test_first_endpoint_blackholed_second_answers_in_time(etcd: EtcdServer, cluster: str, blackhole_port: int) -> None:
    dcs = EtcdDCS([f"http://127.0.0.1:{blackhole_port}", etcd.client_url], "pgquorum", cluster, "m1", TTL, 1.0)
    start = time.monotonic()
    assert dcs.get_cluster().term == 0
    assert time.monotonic() - start <= 1.0
    assert dcs.endpoint == etcd.client_url


def test_silent_endpoint_fails_once_then_next_is_used(etcd: EtcdServer, cluster: str, silent_port: int) -> None:
    dcs = EtcdDCS([f"http://127.0.0.1:{silent_port}", etcd.client_url], "pgquorum", cluster, "m1", TTL, 0.5)
    with pytest.raises(DCSError, match="no answer"):  # may have been applied: not retried elsewhere
        dcs.get_cluster()
    assert dcs.endpoint == etcd.client_url
    assert dcs.get_cluster().leader is None


def test_etcd_server_start_failure_is_explained(tmp_path: Path, etcd: EtcdServer) -> None:
    clash = EtcdServer(tmp_path / "data", etcd.client_port, free_port(), log_file=tmp_path / "clash.log")
    with pytest.raises(RuntimeError, match="already in use"):
        clash.start(timeout=5)
    assert not clash.is_running()


@pytest.fixture
def liar() -> Iterator[tuple[str, list[tuple[int, bytes]]]]:
    """An HTTP server that answers every POST with the next canned (status, body)."""
    answers: list[tuple[int, bytes]] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            status, body = answers[0] if len(answers) == 1 else answers.pop(0)
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", answers
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize(
    "answer",
    [
        (200, b"not json"),
        (200, b"[1, 2]"),
        (200, b"{}"),
        (200, b'{"header": {"revision": "x"}, "kvs": [{"key": 5}], "ID": "x", "result": 3, "succeeded": 1}'),
        (404, b"Not Found"),
        (500, b'{"error": "boom", "code": 13}'),
        (200, b'{"error": {"grpc_code": 14, "message": "etcdserver: no leader"}}'),
    ],
)
@pytest.mark.parametrize("call", [*ALL_CALLS, "keepalive"])
def test_nonsense_answers_raise_dcserror(
    liar: tuple[str, list[tuple[int, bytes]]], answer: tuple[int, bytes], call: str
) -> None:
    url, answers = liar
    dcs = EtcdDCS([url], "pgquorum", "c", "m1", TTL, 1.0)
    if call == "keepalive":
        answers.append((200, b'{"header": {"revision": "1"}, "ID": "7", "TTL": "2"}'))  # valid grant
        dcs.ensure_lease()
    answers.append(answer)
    with pytest.raises(DCSError):
        ALL_CALLS.get(call, lambda d: d.keepalive())(dcs)


@pytest.mark.parametrize("call", ["get_cluster", "get_history", "ensure_lease", "keepalive", "handover_leader"])
def test_malformed_fields_in_a_valid_envelope_raise_dcserror(
    liar: tuple[str, list[tuple[int, bytes]]], call: str
) -> None:
    url, answers = liar
    dcs = EtcdDCS([url], "pgquorum", "c", "m1", TTL, 1.0)
    header = b'"header": {"revision": "3"}'
    if call == "keepalive":
        answers.append((200, b"{" + header + b', "ID": "7", "TTL": "2"}'))
        dcs.ensure_lease()
    kvs = b'"kvs": [{"key": 5, "lease": "x", "mod_revision": "x"}]'
    answers.append((200, b"{" + header + b", " + kvs + b', "ID": "x", "result": {' + header + b', "TTL": "x"}}'))
    with pytest.raises(DCSError, match="unexpected answer"):
        ALL_CALLS.get(call, lambda d: d.keepalive())(dcs)


# -- votes and voters (invariant I5) ----------------------------------------------------------------


def _vote(voter: str, candidate: str, term: int, lsn: int | None = 100) -> Vote:
    return Vote(voter, term, candidate, lsn, lsn is None, 0.0, None if lsn is None else 1)


def test_a_vote_key_is_created_once_per_voter_and_term(etcd: EtcdServer, cluster: str) -> None:
    a, w = make(etcd, cluster, "a"), make(etcd, cluster, "w")
    assert a.acquire_leader("a", 0) == 1 and a.release_leader("a")
    assert a.read_term_and_leader() == (1, None)
    assert w.create_vote(_vote("w", "a", 2, None)) == (True, None)
    created, stored = w.create_vote(_vote("w", "b", 2, None))  # a second vote in the same term
    assert not created and stored is not None and stored.candidate == "a"
    assert w.create_vote(_vote("w", "a", 3)) == (False, None)  # term 3 is not the next one (term is 1)
    assert [v.candidate for v, _ in a.get_votes(2)] == ["a"]
    assert [(v.voter, v.term) for v in a.get_cluster().votes] == [("w", 2)]


def test_no_vote_while_a_leader_key_exists(etcd: EtcdServer, cluster: str) -> None:
    a, w = make(etcd, cluster, "a"), make(etcd, cluster, "w")
    assert a.acquire_leader("a", 0) == 1
    assert a.read_term_and_leader() == (1, "a")
    assert w.create_vote(_vote("w", "b", 2)) == (False, None)


def test_leader_txn_checks_every_counted_vote_and_gc_deletes_settled_terms(etcd: EtcdServer, cluster: str) -> None:
    b, w = make(etcd, cluster, "b"), make(etcd, cluster, "w")
    assert b.acquire_leader("b", 0) == 1 and b.release_leader("b")
    assert b.create_vote(_vote("b", "b", 2))[0] and w.create_vote(_vote("w", "b", 2, None))[0]
    revisions = [(v.voter, rev) for v, rev in b.get_votes(2)]
    tampered = [(voter, rev - 1) for voter, rev in revisions]
    assert b.acquire_leader("b", 1, tampered) is None  # a vote key that changed (or vanished) since the tally
    assert b.acquire_leader("b", 1, revisions) == 2
    assert b.delete_votes(1) == 0
    assert b.delete_votes(2) == 2 and b.get_votes(2) == []


def test_voters_are_registered_once_without_a_lease(etcd: EtcdServer, cluster: str) -> None:
    w = make(etcd, cluster, "w")
    assert w.register_voter(VoterEntry("w", witness=True))
    assert not w.register_voter(VoterEntry("w", witness=False))
    w.revoke_lease()
    state = make(etcd, cluster, "a").get_cluster()
    assert state.voters == (VoterEntry("w", witness=True),)
    assert state.voting_members("a") == ("a", "w")


def test_a_vote_is_retired_only_while_its_member_key_is_absent(etcd: EtcdServer, cluster: str) -> None:
    c, op = make(etcd, cluster, "c"), make(etcd, cluster, "operator")
    assert c.register_voter(VoterEntry("c"))
    c.touch_member(MemberInfo("c", Role.REPLICA, "running", "http://c:8008", "postgres://c:5432/postgres"))
    assert not op.retire_voter("c")  # its agent still runs: it would register again
    c.revoke_lease()  # the member key goes with the lease
    assert op.retire_voter("c")
    assert op.get_cluster().voters == ()
    assert not op.retire_voter("c")  # nothing left to delete


def test_the_leader_watch_wakes_on_a_change_and_stops_at_once(etcd: EtcdServer, cluster: str) -> None:
    """stop() must not wait for the stream's next event: a SIGTERMed leader stops postgres right after."""
    from pgquorum.agent.dcs.etcd_watch import LeaderWatch

    key = f"/pgquorum/{cluster}/leader"
    woke = threading.Event()
    watch = LeaderWatch([etcd.client_url], key, woke.set)
    watch.start()
    deadline = time.monotonic() + 10
    while not woke.is_set() and time.monotonic() < deadline:  # until the stream is open and sees a put
        raw_put(etcd, key, "x")
        woke.wait(0.2)
    assert woke.is_set(), "the watch never reported a put of the key"
    started = time.monotonic()
    watch.stop()
    stopped = time.monotonic() - started
    assert watch.join(timeout=5), "the watch thread still reads after stop()"
    ended = time.monotonic() - started
    # before the fix stop() blocked until the next event or the 30 s idle reconnect
    assert stopped < 1.0 and ended < 2.0, (stopped, ended)
