"""REST API request validation: bodies, fields, times and ?lag= (every error names the field)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from pgquorum.agent.api.validate import (
    MAX_BODY,
    FieldSpec,
    LagLimit,
    ValidationError,
    check_fields,
    member_name,
    parse_lag,
    parse_object,
    parse_time,
)


def fails(fn: Any, *args: Any, **kw: Any) -> ValidationError:
    with pytest.raises(ValidationError) as info:
        fn(*args, **kw)
    return info.value


# -- bodies -----------------------------------------------------------------------------------------


def test_object_bodies() -> None:
    assert parse_object(b'{"a": 1, "b": [true, null]}') == {"a": 1, "b": [True, None]}
    assert parse_object(b"") == {}
    assert parse_object(b"  \n") == {}


@pytest.mark.parametrize(
    ("raw", "needle"),
    [
        (b"[1, 2]", "expected a JSON object {...}, got an array"),
        (b'"x"', "got a string"),
        (b"null", "got null"),
        (b"{", "not valid JSON"),
        (b"{'a': 1}", "not valid JSON"),
        (b"\xff\xfe", "not UTF-8"),
        (b'{"a": NaN}', "NaN is not valid JSON"),
        (b'{"a": 1e999}', "out of range"),
        (b"[" * 100_000 + b"]" * 100_000, None),  # too large, see below
        (b"[" * 30_000 + b"]" * 30_000, "nested too deep"),
        (b'{"a": ' + b"9" * 10_000 + b"}", "number too long"),
    ],
)
def test_bad_bodies_are_400_naming_body(raw: bytes, needle: str | None) -> None:
    err = fails(parse_object, raw)
    assert err.field == "body"
    if needle is None:
        assert err.status == 413
    else:
        assert err.status == 400
        assert needle in err.message


def test_body_limit_is_64_kib() -> None:
    just = b'{"a": "' + b"x" * (MAX_BODY - 9) + b'"}'
    assert len(just) == MAX_BODY
    assert parse_object(just)["a"].startswith("x")
    err = fails(parse_object, just + b" ")
    assert err.status == 413 and "65537 bytes is over the limit of 65536" in err.message


def test_duplicate_keys_are_refused() -> None:
    err = fails(parse_object, b'{"wait": true, "wait": false}')
    assert err.field == "wait" and "given more than once" in err.message


def test_empty_body_when_an_object_is_required() -> None:
    err = fails(parse_object, b"", allow_empty=False)
    assert err.field == "body" and "expected a JSON object" in err.message


# -- fields -----------------------------------------------------------------------------------------

SPECS = (
    FieldSpec("candidate", (str, type(None)), "a string (a member name) or null"),
    FieldSpec("wait", (bool,), "a boolean (true or false)", default=True),
    FieldSpec("count", (int,), "a number", required=True),
)


def test_fields_defaults_and_types() -> None:
    assert check_fields({"count": 3}, SPECS) == {"candidate": None, "wait": True, "count": 3}
    assert check_fields({"count": 1.5, "candidate": "pg2", "wait": False}, SPECS)["wait"] is False


@pytest.mark.parametrize(
    ("body", "field", "needle"),
    [
        ({"count": 1, "colour": "red"}, "colour", "colour: unknown field (allowed: candidate, wait, count)"),
        ({}, "count", "count: required field is missing (a number)"),
        ({"count": True}, "count", "count: expected a number, got a boolean"),
        ({"count": 1, "wait": "yes"}, "wait", "wait: expected a boolean (true or false), got a string"),
        ({"count": 1, "wait": 1}, "wait", "got a number"),
        (
            {"count": 1, "candidate": 7},
            "candidate",
            "candidate: expected a string (a member name) or null, got a number",
        ),
        ({"count": 1, "candidate": ["pg2"]}, "candidate", "got an array"),
    ],
)
def test_field_errors_name_the_field_and_the_type(body: dict[str, Any], field: str, needle: str) -> None:
    err = fails(check_fields, body, SPECS)
    assert err.status == 400 and err.field == field
    assert needle in err.message


def test_no_fields_allowed() -> None:
    err = fails(check_fields, {"force": True}, ())
    assert err.field == "force" and "allowed: none" in err.message


def test_member_names() -> None:
    assert member_name("pg-2_b", "candidate") == "pg-2_b"
    for bad in ("", "PG2", "pg 2", "x" * 64, "pg2;drop"):
        assert fails(member_name, bad, "candidate").field == "candidate"


# -- times ------------------------------------------------------------------------------------------


def test_iso_times_with_timezone() -> None:
    expected = datetime(2026, 11, 26, 18, 0, tzinfo=UTC).timestamp()
    assert parse_time("2026-11-26T18:00:00+00:00", "scheduled_at") == expected
    assert parse_time("2026-11-26T18:00:00Z", "scheduled_at") == expected
    assert parse_time("2026-11-26T19:00:00+01:00", "scheduled_at") == expected
    assert parse_time("2026-11-26 18:00:00.5+00:00", "scheduled_at") == expected + 0.5


@pytest.mark.parametrize("text", ["tomorrow", "2026-11-26T18:00:00", "2026-13-01T00:00:00Z", "", "1764180000"])
def test_bad_times_name_scheduled_at_with_an_example(text: str) -> None:
    err = fails(parse_time, text, "scheduled_at")
    assert err.field == "scheduled_at" and err.status == 400
    assert "2026-11-26T18:00:00+00:00" in err.message


def test_a_time_without_timezone_says_so() -> None:
    assert "has no timezone" in fails(parse_time, "2026-11-26T18:00:00", "scheduled_at").message


# -- lag --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "limit"),
    [
        ("1048576", LagLimit("1048576", max_bytes=1048576)),
        ("0", LagLimit("0", max_bytes=0)),
        ("16kB", LagLimit("16kB", max_bytes=16 * 1024)),
        ("16KB", LagLimit("16KB", max_bytes=16 * 1024)),
        ("1MB", LagLimit("1MB", max_bytes=1024**2)),
        ("1.5MB", LagLimit("1.5MB", max_bytes=1572864)),
        ("2GB", LagLimit("2GB", max_bytes=2 * 1024**3)),
        ("100B", LagLimit("100B", max_bytes=100)),
        ("10s", LagLimit("10s", max_seconds=10.0)),
        ("500ms", LagLimit("500ms", max_seconds=0.5)),
        ("2min", LagLimit("2min", max_seconds=120.0)),
        ("1h", LagLimit("1h", max_seconds=3600.0)),
        ("0.5s", LagLimit("0.5s", max_seconds=0.5)),
    ],
)
def test_lag_values(text: str, limit: LagLimit) -> None:
    assert parse_lag([text]) == limit


def test_no_lag_is_none() -> None:
    assert parse_lag([]) is None


@pytest.mark.parametrize("text", ["", "abc", "-1", "1.5", "10 parsecs", "1e3", "1MBs", "99999999TB", "0x10"])
def test_bad_lag_is_400_naming_lag(text: str) -> None:
    err = fails(parse_lag, [text])
    assert err.field == "lag" and err.status == 400
    assert text == "" or "lag:" in err.message


def test_lag_given_twice() -> None:
    assert "more than once" in fails(parse_lag, ["1MB", "2MB"]).message
