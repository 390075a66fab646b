"""Pure helpers of the etcd DCS: JSON bodies for etcd's gRPC gateway, answer decoding."""

from __future__ import annotations

import base64

import pytest
import requests

from pgquorum.agent.dcs.base import DCSError
from pgquorum.agent.dcs.etcd import _compare, _decode, _put, _range_end_b64


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


@pytest.mark.parametrize(
    ("prefix", "end"),
    [("/pgquorum/c1/", b"/pgquorum/c10"), ("a", b"b"), ("caf\u00e9", b"caf\xc3\xaa"), ("", b"\0")],
)
def test_range_end_is_prefix_plus_one(prefix: str, end: bytes) -> None:
    assert base64.b64decode(_range_end_b64(prefix)) == end


def test_put_and_compare_bodies() -> None:
    assert _put("/k", "v", 7) == {"request_put": {"key": b64(b"/k"), "value": b64(b"v"), "lease": "7"}}
    assert _compare("/k", "CREATE", 0) == {
        "key": b64(b"/k"),
        "target": "CREATE",
        "result": "EQUAL",
        "create_revision": "0",
    }
    assert _compare("/k", "VALUE", "12")["value"] == b64(b"12")
    assert _compare("/k", "MOD", 5, "LESS") == {
        "key": b64(b"/k"),
        "target": "MOD",
        "result": "LESS",
        "mod_revision": "5",
    }


def response(status: int, body: bytes) -> requests.Response:
    resp = requests.Response()
    resp.status_code = status
    resp._content = body
    return resp


def test_decode_ok_and_stream_wrapped() -> None:
    assert _decode("u", response(200, b'{"header": {"revision": "4"}, "count": "1"}'))["count"] == "1"
    assert _decode("u", response(200, b'{"result": {"header": {"revision": "4"}, "TTL": "2"}}'))["result"]["TTL"] == "2"


def test_decode_errors_keep_etcds_message_and_code() -> None:
    with pytest.raises(DCSError, match="requested lease not found") as info:
        _decode("u", response(404, b'{"error": "etcdserver: requested lease not found", "code": 5}'))
    assert getattr(info.value, "lease_not_found", False)
    with pytest.raises(DCSError, match="no leader") as info:
        _decode("u", response(200, b'{"error": {"grpc_code": 14, "message": "etcdserver: no leader"}}'))
    assert not getattr(info.value, "lease_not_found", True)
    with pytest.raises(DCSError, match="not JSON"):
        _decode("u", response(502, b"<html>bad gateway</html>"))
    with pytest.raises(DCSError, match="not an etcd answer"):
        _decode("u", response(200, b'{"kvs": []}'))
