"""The DCS on etcd v3, through etcd's JSON gRPC gateway (``/v3/`` on etcd >= 3.4).

Why etcd3gw: it is maintained, ships type hints, and speaks plain HTTP through ``requests`` -- no
grpcio and no ``protobuf<4`` pin (python-etcd3 0.12), and about 20 MB less RSS per agent. We use it
for endpoint/URL handling and its HTTP session, and build the few JSON bodies (base64 keys and
values, int64 as strings) ourselves, so that every public call has ONE deadline (``timeout``,
connect + read, across all endpoints) and raises ONE exception type (``DCSError``).

Endpoints: a call tries the endpoint that last worked first; on a connection error it moves on to
the next one within the same deadline. A read timeout (or 5xx) is not retried -- the request may
have been applied -- but the next call starts on the next endpoint.

Not thread-safe by design: one instance belongs to the HA loop's thread.
"""

from __future__ import annotations

import base64
import functools
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any, ParamSpec, TypeVar, cast
from urllib.parse import urlsplit

import requests
from etcd3gw.client import Etcd3Client
from urllib3.util import Timeout

from pgquorum.agent.dcs.base import DCSError
from pgquorum.agent.model import (
    ClusterState,
    HistoryEntry,
    LeaderInfo,
    LeaderStatus,
    MemberInfo,
    SwitchoverRequest,
    SyncRecord,
    VoterEntry,
)
from pgquorum.agent.quorum.votes import Vote

log = logging.getLogger(__name__)

_API_PATH = "/v3/"  # etcd 3.4+; passed explicitly so etcd3gw never spends a round trip discovering it
_GRPC_NOT_FOUND = 5
_P = ParamSpec("_P")
_R = TypeVar("_R")
Json = dict[str, Any]


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode("ascii")


def _unb64(text: str | None) -> str:
    return base64.b64decode(text or "").decode(errors="replace")


def _range_end_b64(prefix: str) -> str:
    """etcd's ``range_end`` for "every key under prefix": the prefix with its last byte + 1.

    UTF-8 never produces a 0xFF byte, so the increment cannot overflow.
    """
    raw = bytearray(prefix.encode()) or bytearray(b"\0")
    if prefix:
        raw[-1] += 1
    return base64.b64encode(bytes(raw)).decode("ascii")


def _put(key: str, value: str, lease: int = 0) -> Json:
    return {"request_put": {"key": _b64(key), "value": _b64(value), "lease": str(lease)}}


def _delete(key: str) -> Json:
    return {"request_delete_range": {"key": _b64(key)}}


def _range_op(key: str, prefix: bool = False) -> Json:
    body: Json = {"key": _b64(key)}
    if prefix:
        body["range_end"] = _range_end_b64(key)
    return {"request_range": body}


def _compare(key: str, target: str, value: str | int, result: str = "EQUAL") -> Json:
    """One txn compare; ``target`` is VALUE, CREATE or MOD (create_revision / mod_revision)."""
    field = {"VALUE": "value", "CREATE": "create_revision", "MOD": "mod_revision"}[target]
    operand = _b64(str(value)) if target == "VALUE" else str(value)
    return {"key": _b64(key), "target": target, "result": result, field: operand}


class _EtcdError(DCSError):
    """etcd answered with an error (as opposed to being unreachable)."""

    def __init__(self, message: str, code: int | None) -> None:
        super().__init__(message)
        self.code = code

    @property
    def lease_not_found(self) -> bool:
        return self.code == _GRPC_NOT_FOUND and "lease not found" in str(self)


def _guarded(fn: Callable[_P, _R]) -> Callable[_P, _R]:
    """Enforce the DCS contract: whatever goes wrong (including a malformed answer) is a DCSError."""

    @functools.wraps(fn)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        try:
            return fn(*args, **kwargs)
        except DCSError:
            raise
        except Exception as exc:
            raise DCSError(f"etcd {fn.__name__}: unexpected answer ({type(exc).__name__}: {exc})") from exc

    return wrapper


class EtcdDCS:
    """``DCS`` on etcd. Keys live under ``/<prefix>/<cluster>/`` (see ``pgquorum.agent.dcs.base``)."""

    def __init__(
        self, endpoints: Sequence[str], prefix: str, cluster: str, member: str, ttl: int, timeout: float
    ) -> None:
        if not endpoints:
            raise DCSError("etcd: no endpoints configured")
        if timeout <= 0 or ttl < 1:
            raise DCSError(f"etcd: ttl must be >= 1 s and timeout > 0 s (got ttl={ttl}, timeout={timeout})")
        self.member = member
        self.ttl = int(ttl)
        self.timeout = float(timeout)
        self.base = f"/{prefix.strip('/')}/{cluster}/" if prefix.strip("/") else f"/{cluster}/"
        # History sits beside the cluster's range, not in it: get_cluster runs every loop and must not
        # grow with every failover. '.' is not allowed in cluster names, so this cannot collide.
        self.history_base = self.base.rstrip("/") + ".history/"
        self._session = requests.Session()
        self._clients = [self._make_client(url) for url in endpoints]
        self._current = 0  # index of the endpoint that answered last
        self._lease_id: int | None = None
        self._lease_ttl: int | None = None

    def _make_client(self, url: str) -> Etcd3Client:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise DCSError(f"etcd endpoint {url!r}: expected http(s)://host:port")
        port = parts.port or 2379
        return Etcd3Client(parts.hostname, port, parts.scheme, api_path=_API_PATH, session=self._session)

    # -- transport ---------------------------------------------------------------------------------

    @property
    def endpoint(self) -> str:
        """The endpoint the next call tries first (the one that answered last)."""
        return str(self._clients[self._current].base_url)

    def _deadline(self) -> float:
        return time.monotonic() + self.timeout

    def _post(self, path: str, body: Json, deadline: float) -> Json:
        errors: list[str] = []
        count = len(self._clients)
        for attempt in range(count):
            index = (self._current + attempt) % count
            client = self._clients[index]
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            # connect gets a fair share per endpoint still to try; connect + read together <= remaining.
            # requests hands a urllib3 Timeout through unchanged (its type stubs only list float/tuple).
            limit = Timeout(connect=remaining / (count - attempt), total=remaining)
            url = client.get_url(path)
            try:
                resp = self._session.post(url, json=body, timeout=cast(Any, limit))
            except requests.ConnectionError as exc:  # refused, reset, unresolvable, connect timeout
                errors.append(f"{client.base_url}: {_reason(exc)}")
                continue
            except requests.RequestException as exc:  # read timeout & co: the request may have applied
                self._current = (index + 1) % count
                raise DCSError(f"etcd {url}: no answer within {self.timeout:g}s ({_reason(exc)})") from exc
            self._current = index
            if resp.status_code >= 500:
                self._current = (index + 1) % count
            return _decode(url, resp)
        if not errors:
            errors.append("no time left")
        raise DCSError(f"etcd unreachable (timeout {self.timeout:g}s): {'; '.join(errors)}")

    def _range(self, key: str, deadline: float, prefix: bool = False) -> Json:
        body: Json = {"key": _b64(key)}
        if prefix:
            body["range_end"] = _range_end_b64(key)
        return self._post("kv/range", body, deadline)

    def _txn(self, compare: list[Json], success: list[Json], deadline: float) -> bool:
        return self._txn_full(compare, success, [], deadline)[0]

    def _txn_full(
        self, compare: list[Json], success: list[Json], failure: list[Json], deadline: float
    ) -> tuple[bool, list[Json]]:
        """(succeeded, the responses of the branch that ran)."""
        data = self._post("kv/txn", {"compare": compare, "success": success, "failure": failure}, deadline)
        succeeded = data.get("succeeded", False)  # proto3 JSON omits false
        responses = data.get("responses", [])
        if not isinstance(succeeded, bool) or not isinstance(responses, list):
            raise DCSError(f"etcd kv/txn: unexpected answer {data!r:.200}")
        return succeeded, responses

    # -- lease -------------------------------------------------------------------------------------

    @property
    def lease_id(self) -> int | None:
        """This agent's current lease (compare with ``ClusterState.leader.lease_id``)."""
        return self._lease_id

    @property
    def lease_ttl(self) -> int | None:
        """The TTL etcd granted (it may round a short ``ttl`` up to its minimum)."""
        return self._lease_ttl

    def _ensure_lease(self, deadline: float) -> int:
        if self._lease_id is None:
            data = self._post("lease/grant", {"TTL": self.ttl}, deadline)
            lease_id, granted = int(data.get("ID", 0)), int(data.get("TTL", 0))
            if lease_id == 0 or granted <= 0:
                raise DCSError(f"etcd lease/grant: unexpected answer {data!r}")
            if granted != self.ttl:
                log.warning("etcd granted a %d s lease instead of %d s", granted, self.ttl)
            self._lease_id, self._lease_ttl = lease_id, granted
            log.debug("granted lease %x (%d s)", lease_id, granted)
        return self._lease_id

    def _forget_lease(self) -> None:
        self._lease_id = self._lease_ttl = None

    def _on_lease(self, fn: Callable[[int], _R], deadline: float) -> _R:
        """Run ``fn(lease_id)``; if etcd says our lease is gone, grant a new one and retry once."""
        try:
            return fn(self._ensure_lease(deadline))
        except _EtcdError as exc:
            if not exc.lease_not_found:
                raise
            log.info("lease %s expired; granting a new one", self._lease_id)
            self._forget_lease()
            return fn(self._ensure_lease(deadline))

    @_guarded
    def ensure_lease(self) -> int:
        return self._ensure_lease(self._deadline())

    @_guarded
    def keepalive(self) -> bool:
        """Renew once. The lease then lasts ``ttl`` s from when etcd *received* this request."""
        if self._lease_id is None:
            return False
        data = self._post("lease/keepalive", {"ID": str(self._lease_id)}, self._deadline())
        result = data.get("result")
        if not isinstance(result, dict):
            raise DCSError(f"etcd lease/keepalive: unexpected answer {data!r}")
        if int(result.get("TTL", 0)) <= 0:  # etcd answers without TTL for an unknown lease
            log.info("lease %x no longer exists", self._lease_id)
            self._forget_lease()
            return False
        return True

    @_guarded
    def revoke_lease(self) -> None:
        """Revoke our lease now (its keys vanish at once). Not used by ``close``."""
        if self._lease_id is not None:
            lease_id = self._lease_id
            self._forget_lease()
            try:
                self._post("lease/revoke", {"ID": str(lease_id)}, self._deadline())
            except _EtcdError as exc:
                if not exc.lease_not_found:
                    raise

    # -- reads -------------------------------------------------------------------------------------

    @_guarded
    def get_cluster(self) -> ClusterState:
        data = self._range(self.base, self._deadline(), prefix=True)
        revision = int(data["header"]["revision"])
        initialize: str | None = None
        leader: LeaderInfo | None = None
        term = 0
        members: list[MemberInfo] = []
        status: LeaderStatus | None = None
        config: dict[str, Any] | None = None
        switchover: SwitchoverRequest | None = None
        sync: SyncRecord | None = None
        voters: list[VoterEntry] = []
        votes: list[Vote] = []
        for kv in data.get("kvs", []):
            key = _unb64(kv["key"])[len(self.base) :]
            value = _unb64(kv.get("value"))
            if key == "leader":
                leader = LeaderInfo(value, int(kv.get("mod_revision", 0)), int(kv.get("lease", 0)))
            elif key == "term":
                try:
                    term = int(value)
                except ValueError:
                    raise DCSError(f"etcd: {self.base}term holds {value!r}, not an integer") from None
            elif key == "initialize":
                initialize = value
            elif key.startswith("members/"):
                member = _parse(key, functools.partial(MemberInfo.from_json, key.removeprefix("members/")), value)
                if member is not None:
                    members.append(member)
            elif key == "status":
                status = _parse(key, _status_from_json, value)
                if status is not None:
                    status = replace(status, mod_revision=int(kv.get("mod_revision", 0)))
            elif key == "config":
                config = _parse(key, _config_from_json, value)
            elif key == "switchover":
                switchover = _parse(key, SwitchoverRequest.from_json, value)
            elif key == "sync":
                mod = int(kv.get("mod_revision", 0))
                sync = _parse(key, functools.partial(SyncRecord.from_json, mod_revision=mod), value)
                if sync is None:  # malformed: it promises nothing, and the leader may overwrite it
                    sync = SyncRecord("", 0, (), mod)
            elif key.startswith("voters/"):
                entry = _parse(key, functools.partial(VoterEntry.from_json, key.removeprefix("voters/")), value)
                if entry is not None:
                    voters.append(entry)
            elif key.startswith("votes/"):
                vote = _parse(key, Vote.from_json, value)
                if vote is not None and key == f"votes/{vote.term}/{vote.voter}":
                    votes.append(vote)
        return ClusterState(
            revision,
            initialize,
            leader,
            term,
            tuple(members),
            status,
            config,
            switchover,
            sync,
            tuple(voters),
            tuple(votes),
        )

    @_guarded
    def get_history(self) -> list[HistoryEntry]:
        data = self._range(self.history_base, self._deadline(), prefix=True)
        entries = []
        for kv in sorted(data.get("kvs", []), key=lambda kv: _unb64(kv["key"])):
            entry = _parse(_unb64(kv["key"]), HistoryEntry.from_json, _unb64(kv.get("value")))
            if entry is not None:
                entries.append(entry)
        return entries

    # -- writes ------------------------------------------------------------------------------------

    @_guarded
    def touch_member(self, member: MemberInfo) -> None:
        key, value, deadline = f"{self.base}members/{member.name}", member.to_json(), self._deadline()
        self._on_lease(lambda lease: self._txn([], [_put(key, value, lease)], deadline), deadline)

    @_guarded
    def delete_member(self, name: str) -> None:
        self._txn([], [_delete(f"{self.base}members/{name}")], self._deadline())

    @_guarded
    def claim_initialize(self) -> bool:
        key = self.base + "initialize"
        return self._txn([_compare(key, "CREATE", 0)], [_put(key, "")], self._deadline())

    @_guarded
    def set_initialized(self, system_id: str) -> None:
        self._txn([], [_put(self.base + "initialize", system_id)], self._deadline())

    @_guarded
    def cancel_initialize(self) -> None:
        key = self.base + "initialize"
        self._txn([_compare(key, "VALUE", "")], [_delete(key)], self._deadline())

    def _term_is(self, expected_term: int) -> Json:
        if expected_term == 0:
            return _compare(self.base + "term", "CREATE", 0)  # no term key yet
        return _compare(self.base + "term", "VALUE", str(expected_term))

    @_guarded
    def acquire_leader(self, name: str, expected_term: int, votes: Sequence[tuple[str, int]] = ()) -> int | None:
        leader, new_term = self.base + "leader", expected_term + 1
        compare = [_compare(leader, "CREATE", 0), self._term_is(expected_term)]
        # The votes counted by the tally: still there, unchanged (never deleted or recreated meanwhile).
        compare += [_compare(self._vote_key(new_term, voter), "MOD", rev) for voter, rev in votes]

        def attempt(lease: int) -> bool:
            success = [_put(leader, name, lease), _put(self.base + "term", str(new_term))]
            return self._txn(compare, success, deadline)

        deadline = self._deadline()
        return new_term if self._on_lease(attempt, deadline) else None

    @_guarded
    def advance_term(self, expected_term: int) -> bool:
        compare = [_compare(self.base + "leader", "CREATE", 0), self._term_is(expected_term)]
        return self._txn(compare, [_put(self.base + "term", str(expected_term + 1))], self._deadline())

    # -- votes (invariant I5) ----------------------------------------------------------------------

    def _vote_key(self, term: int, voter: str) -> str:
        return f"{self.base}votes/{term}/{voter}"

    @_guarded
    def read_term_and_leader(self) -> tuple[int, str | None]:
        _, responses = self._txn_full(
            [], [_range_op(self.base + "term"), _range_op(self.base + "leader")], [], self._deadline()
        )
        values = [_single_value(r) for r in responses]
        if len(values) != 2:
            raise DCSError(f"etcd kv/txn: expected 2 range answers, got {len(values)}")
        term_text, leader = values
        try:
            term = int(term_text) if term_text is not None else 0
        except ValueError:
            raise DCSError(f"etcd: {self.base}term holds {term_text!r}, not an integer") from None
        return term, leader

    @_guarded
    def create_vote(self, vote: Vote) -> tuple[bool, Vote | None]:
        key = self._vote_key(vote.term, vote.voter)
        compare = [
            _compare(key, "CREATE", 0),
            self._term_is(vote.term - 1),
            _compare(self.base + "leader", "CREATE", 0),
        ]
        ok, responses = self._txn_full(compare, [_put(key, vote.to_json())], [_range_op(key)], self._deadline())
        if ok:
            return True, None
        raw = _single_value(responses[0]) if responses else None
        if raw is None:
            return False, None
        stored = _parse(key, Vote.from_json, raw)
        if stored is None:  # a malformed key still occupies the slot: it is not a vote for anyone we know
            return False, Vote(vote.voter, vote.term, "?", None, vote.witness, 0.0)
        return False, stored

    @_guarded
    def get_votes(self, term: int) -> list[tuple[Vote, int]]:
        prefix = f"{self.base}votes/{term}/"
        out = []
        for kv in self._range(prefix, self._deadline(), prefix=True).get("kvs", []):
            key = _unb64(kv["key"])
            vote = _parse(key, Vote.from_json, _unb64(kv.get("value")))
            if vote is not None and key == prefix + vote.voter and vote.term == term:
                out.append((vote, int(kv.get("mod_revision", 0))))
        return out

    @_guarded
    def delete_votes(self, up_to_term: int) -> int:
        deadline = self._deadline()
        prefix = self.base + "votes/"
        body: Json = {"key": _b64(prefix), "range_end": _range_end_b64(prefix), "keys_only": True}
        stale = []
        for kv in self._post("kv/range", body, deadline).get("kvs", []):
            key = _unb64(kv["key"])
            term_text = key[len(prefix) :].split("/", 1)[0]
            if term_text.isdigit() and int(term_text) <= up_to_term:
                stale.append(_delete(key))
        if stale:
            self._txn([], stale, deadline)
        return len(stale)

    @_guarded
    def register_voter(self, entry: VoterEntry) -> bool:
        key = f"{self.base}voters/{entry.name}"
        return self._txn([_compare(key, "CREATE", 0)], [_put(key, entry.to_json())], self._deadline())

    @_guarded
    def retire_voter(self, name: str) -> bool:
        """Delete ``voters/<name>`` only while ``members/<name>`` is absent (its agent is gone and cannot
        register again meanwhile). True if deleted now. For the operator's scale-down, one at a time."""
        voter, member = f"{self.base}voters/{name}", f"{self.base}members/{name}"
        return self._txn(
            [_compare(member, "CREATE", 0), _compare(voter, "CREATE", 0, "GREATER")], [_delete(voter)], self._deadline()
        )

    @_guarded
    def release_leader(self, name: str) -> bool:
        key = self.base + "leader"
        return self._txn([_compare(key, "VALUE", name)], [_delete(key)], self._deadline())

    @_guarded
    def handover_leader(self, old: str, new: str, expected_term: int) -> int | None:
        deadline = self._deadline()
        member_key, leader = f"{self.base}members/{new}", self.base + "leader"
        kvs = self._range(member_key, deadline).get("kvs", [])
        lease = int(kvs[0].get("lease", 0)) if kvs else 0
        if lease == 0:
            log.info("handover to %s: it has no member key on a lease", new)
            return None
        compare = [
            _compare(leader, "VALUE", old),
            self._term_is(expected_term),
            _compare(member_key, "MOD", int(kvs[0]["mod_revision"])),  # its lease was alive at this revision
        ]
        success = [_put(leader, new, lease), _put(self.base + "term", str(expected_term + 1))]
        try:
            ok = self._txn(compare, success, deadline)
        except _EtcdError as exc:
            if not exc.lease_not_found:  # the new leader's lease expired between the read and the txn
                raise
            ok = False
        return expected_term + 1 if ok else None

    @_guarded
    def write_status(self, status: LeaderStatus) -> None:
        body: dict[str, object] = {"term": status.term, "timeline": status.timeline, "wal_lsn": status.wal_lsn}
        if status.leader is not None:
            body["leader"] = status.leader
        self._txn([], [_put(self.base + "status", json.dumps(body, sort_keys=True))], self._deadline())

    @_guarded
    def set_switchover(self, request: SwitchoverRequest) -> None:
        self._txn([], [_put(self.base + "switchover", request.to_json())], self._deadline())

    @_guarded
    def clear_switchover(self) -> None:
        self._txn([], [_delete(self.base + "switchover")], self._deadline())

    @_guarded
    def write_sync(self, record: SyncRecord, expected_revision: int) -> bool:
        key = self.base + "sync"
        compare = [_compare(self.base + "leader", "VALUE", record.leader), _compare(key, "MOD", expected_revision)]
        return self._txn(compare, [_put(key, record.to_json())], self._deadline())

    @_guarded
    def append_history(self, entry: HistoryEntry) -> None:
        self._txn([], [_put(f"{self.history_base}{entry.term:010d}", entry.to_json())], self._deadline())

    @_guarded
    def set_config(self, config: dict[str, Any], expected_revision: int | None = None) -> bool:
        """Store the dynamic configuration.

        With ``expected_revision``, only if ``config`` was not modified after that revision: pass the
        ``ClusterState.revision`` the change was based on (or the key's own mod_revision; 0 = absent).
        """
        key, value = self.base + "config", json.dumps(config, sort_keys=True)
        compare = [] if expected_revision is None else [_compare(key, "MOD", expected_revision + 1, "LESS")]
        return self._txn(compare, [_put(key, value)], self._deadline())

    def close(self) -> None:
        """Closes HTTP connections only; the lease runs out by itself (``release_leader`` is explicit)."""
        self._session.close()


def _single_value(response: Json) -> str | None:
    """The value of the one key a txn's range op read (None: the key does not exist)."""
    kvs = response.get("response_range", {}).get("kvs", [])
    if not kvs:
        return None
    return _unb64(kvs[0].get("value"))


def _reason(exc: Exception) -> str:
    """The innermost useful part of a requests/urllib3 error message."""
    text = str(exc)
    for marker in ("Caused by ", "Failed to establish a new connection: "):
        if marker in text:
            text = text.rsplit(marker, 1)[1]
    return text.strip("()'\"[] ") or type(exc).__name__


def _decode(url: str, resp: requests.Response) -> Json:
    try:
        data = resp.json()
    except ValueError:
        raise DCSError(f"etcd {url}: HTTP {resp.status_code}, not JSON: {resp.text[:200]!r}") from None
    if not isinstance(data, dict):
        raise DCSError(f"etcd {url}: HTTP {resp.status_code}, unexpected answer {data!r:.200}")
    error = data.get("error")
    if resp.status_code != 200 or error is not None:
        if isinstance(error, dict):  # streaming endpoints (keepalive) wrap errors in an object
            data = error
        message = data.get("message") or data.get("error") or resp.text[:200]
        code = data.get("code", data.get("grpc_code"))
        raise _EtcdError(f"etcd {url}: {message} (HTTP {resp.status_code})", code if isinstance(code, int) else None)
    body = data.get("result", data)  # streaming endpoints (keepalive) wrap the answer
    header = body.get("header") if isinstance(body, dict) else None
    if not isinstance(header, dict) or not str(header.get("revision", "0")).isdigit():
        raise DCSError(f"etcd {url}: not an etcd answer: {resp.text[:200]!r}")
    return data


def _parse(key: str, parse: Callable[[str], _R], value: str) -> _R | None:
    """A malformed value is logged and skipped: one bad key must not blind the whole HA loop."""
    try:
        return parse(value)
    except (ValueError, TypeError, KeyError) as exc:
        log.warning("etcd key %s: ignoring malformed value %.200r (%s)", key, value, exc)
        return None


def _status_from_json(raw: str) -> LeaderStatus:
    data = json.loads(raw)
    leader = data.get("leader") if isinstance(data, dict) else None
    return LeaderStatus(
        term=int(data["term"]),
        timeline=int(data["timeline"]),
        wal_lsn=int(data["wal_lsn"]),
        leader=leader if isinstance(leader, str) and leader else None,
    )


def _config_from_json(raw: str) -> dict[str, Any]:
    data = json.loads(raw)
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    return data
