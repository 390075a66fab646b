"""The voter as the API runs it (``VoterService``), ``POST /vote`` and ``POST /promise`` through the
routes, and the witness's configuration. etcd is a small in-memory stand-in with the same
create-once rule (the real one is exercised in tests/integration/test_dcs_etcd.py)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from api_fakes import TOKEN, FakeClock, FakeLoop

from pgquorum.agent.api.auth import Authenticator
from pgquorum.agent.api.routes import Api, Request
from pgquorum.agent.config import WITNESS_POSTGRES, ApiSettings, ConfigError, config_from_dict
from pgquorum.agent.dcs.base import DCSError
from pgquorum.agent.quorum.failsafe import PromiseRequest
from pgquorum.agent.quorum.voter import LocalView, VoterService
from pgquorum.agent.quorum.votes import Vote, VoteRequest

TTL = 3.0


class MemoryEtcd:
    """Term, leader key and vote keys with etcd's transaction rules; ``down`` makes every call fail."""

    def __init__(self, term: int = 7, leader: str | None = None):
        self.term = term
        self.leader = leader
        self.votes: dict[tuple[int, str], Vote] = {}
        self.calls = 0
        self.down = False
        self.fail_create = False

    def read_term_and_leader(self) -> tuple[int, str | None]:
        self._call()
        return self.term, self.leader

    def create_vote(self, vote: Vote) -> tuple[bool, Vote | None]:
        self._call()
        if self.fail_create:
            raise DCSError("etcd: no answer within 1s")
        key = (vote.term, vote.voter)
        if key in self.votes:
            return False, self.votes[key]
        if self.term != vote.term - 1 or self.leader is not None:
            return False, None
        self.votes[key] = vote
        return True, None

    def _call(self) -> None:
        self.calls += 1
        if self.down:
            raise DCSError("etcd unreachable")


def service(etcd: MemoryEtcd, clock: FakeClock, witness: bool = False, name: str = "c") -> VoterService:
    voter = VoterService(name, witness, TTL, etcd, clock)
    clock.now += TTL + 0.1  # past the start-up quiet period
    local = LocalView(etcd_ok=True, term=etcd.term, leader=etcd.leader, timeline=3, wal_lsn=5000)
    voter.observe(etcd.term, [], local)
    return voter


REQ = VoteRequest("b", 8, 3, 5000)


def test_grant_creates_the_key_then_answers() -> None:
    etcd, clock = MemoryEtcd(), FakeClock()
    voter = service(etcd, clock)
    status, body = voter.vote(REQ)
    assert status == 200 and body["granted"] is True and body["vote"]["candidate"] == "b"
    assert etcd.votes[(8, "c")].candidate == "b"
    assert voter.memory.vote_in(8) == "b"
    assert voter.vote(REQ)[0] == 200, "asking again is idempotent"
    status, body = voter.vote(replace(REQ, candidate="a"))
    assert (status, body["code"]) == (409, "already_voted")


def test_a_fresh_read_decides_not_the_loops_view() -> None:
    """The loop last saw the leader key; it expired since: the vote must not wait for the next loop."""
    etcd, clock = MemoryEtcd(leader="a"), FakeClock()
    voter = service(etcd, clock)
    etcd.leader = None
    assert voter.vote(REQ)[0] == 200
    # The reverse: the loop saw no leader, but one took the key meanwhile.
    etcd2 = MemoryEtcd()
    voter2 = service(etcd2, clock)
    etcd2.leader = "a"
    status, body = voter2.vote(REQ)
    assert (status, body["code"]) == (409, "leader_key_held")


def test_a_promise_refuses_votes_without_asking_etcd() -> None:
    etcd, clock = MemoryEtcd(), FakeClock()
    voter = service(etcd, clock)
    assert voter.promise(PromiseRequest("a", 7))[0] == 200
    calls = etcd.calls
    status, body = voter.vote(REQ)
    assert (status, body["code"]) == (409, "promised") and etcd.calls == calls
    assert voter.vote(replace(REQ, candidate="a"))[0] == 200, "the promised primary itself may be voted for"
    clock.now += TTL
    assert voter.vote(REQ)[1]["code"] == "already_voted"  # a voted for in term 8


def test_a_vote_whose_key_may_not_exist_is_kept_and_answered_503() -> None:
    etcd, clock = MemoryEtcd(), FakeClock()
    voter = service(etcd, clock)
    etcd.fail_create = True
    status, body = voter.vote(REQ)
    assert (status, body["code"]) == (503, "etcd_unreachable")
    assert voter.memory.vote_in(8) == "b", "the vote may have been written: it is never forgotten"
    etcd.fail_create = False
    assert voter.vote(replace(REQ, candidate="a"))[1]["code"] == "already_voted"


def test_a_key_from_before_a_restart_wins_over_memory() -> None:
    etcd, clock = MemoryEtcd(), FakeClock()
    etcd.votes[(8, "c")] = Vote("c", 8, "a", 5000, False, 0.0, 3)
    voter = service(etcd, clock)  # its memory lost the vote (it did not read its keys yet)
    status, body = voter.vote(REQ)
    assert (status, body["code"]) == (409, "already_voted")


def test_no_vote_and_no_etcd_call_while_the_loop_cannot_reach_etcd() -> None:
    etcd, clock = MemoryEtcd(), FakeClock()
    voter = service(etcd, clock)
    voter.etcd_lost(LocalView(timeline=3, wal_lsn=5000))
    calls = etcd.calls
    assert voter.vote(REQ)[1]["code"] == "etcd_unreachable" and etcd.calls == calls
    assert voter.promise(PromiseRequest("a", 7))[0] == 200, "promises go on without etcd (the failsafe)"


def test_witness_votes_without_a_position_and_counts_its_answers() -> None:
    etcd, clock = MemoryEtcd(), FakeClock()
    seen: list[tuple[str, bool, str | None]] = []
    voter = service(etcd, clock, witness=True, name="w")
    voter.on_answer = lambda kind, granted, code: seen.append((kind, granted, code))
    status, body = voter.vote(replace(REQ, wal_lsn=0))
    assert status == 200 and body["vote"]["witness"] is True and body["vote"]["wal_lsn"] is None
    voter.promise(PromiseRequest("a", 6))  # older than etcd's term 7
    assert seen == [("vote", True, None), ("promise", False, "newer_term")]
    assert voter.status()["granted"] == {"vote": 1, "promise": 0}


# -- through the REST API ---------------------------------------------------------------------------


def api_with_voter(tmp_path: Path, voter: VoterService | None) -> Api:
    token = tmp_path / "token"
    token.write_text(TOKEN)
    token.chmod(0o600)
    loop = FakeLoop(api=ApiSettings(auth_token_file=token))
    if voter is not None:
        loop.voter = voter  # type: ignore[attr-defined]
    return Api(loop, Authenticator.from_settings(loop.cfg.api))


def post(api: Api, path: str, body: Any, auth: bool = True) -> tuple[int, dict[str, Any]]:
    resp = api.handle(
        Request("POST", path, f"Bearer {TOKEN}" if auth else None, json.dumps(body).encode(), "127.0.0.1")
    )
    return resp.status, resp.body or {}


def test_vote_and_promise_routes(tmp_path: Path) -> None:
    etcd, clock = MemoryEtcd(), FakeClock()
    api = api_with_voter(tmp_path, service(etcd, clock))
    body = {"candidate": "b", "term": 8, "timeline": 3, "wal_lsn": 5000}
    assert post(api, "/vote", body, auth=False)[0] == 401
    status, answer = post(api, "/vote", {**body, "wal_lsn": "0/1"})
    assert status == 400 and answer["field"] == "wal_lsn"
    assert post(api, "/vote", {**body, "extra": 1})[1]["field"] == "extra"
    assert post(api, "/vote", body)[0] == 200
    assert post(api, "/promise", {"primary": "a"})[1]["field"] == "term"
    status, answer = post(api, "/promise", {"primary": "a", "term": 7})
    assert status == 409 and answer["code"] == "voted_newer"  # it just voted in term 8


def test_an_agent_that_does_not_vote_answers_501(tmp_path: Path) -> None:
    api = api_with_voter(tmp_path, None)
    assert post(api, "/vote", {"candidate": "b", "term": 8, "timeline": 3, "wal_lsn": 1})[0] == 501


# -- witness configuration --------------------------------------------------------------------------


def witness(**over: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "name": "w1",
        "cluster": "main",
        "witness": True,
        "etcd_endpoints": ["http://127.0.0.1:2379"],
        "api_listen": "127.0.0.1:8010",
    }
    data.update(over)
    return data


def test_a_witness_needs_no_postgres_section() -> None:
    cfg = config_from_dict(witness())
    assert cfg.witness and cfg.quorum_votes and cfg.postgres == WITNESS_POSTGRES


@pytest.mark.parametrize(
    ("over", "needle"),
    [
        ({"postgres": {"data_dir": "/x"}}, "postgres: a witness runs no PostgreSQL"),
        ({"nofailover": True}, "nofailover: a witness is never promoted"),
        ({"synchronous": {"mode": "quorum"}}, "synchronous: quorum commit is a data member's setting"),
        ({"quorum_votes": False}, "quorum_votes: a witness only exists to vote"),
        ({"witness": "yes"}, "witness: expected true or false"),
        ({"quorum_votes": "no"}, "quorum_votes: expected true or false"),
    ],
)
def test_witness_config_errors_name_the_field(over: dict[str, Any], needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        config_from_dict(witness(**over))
