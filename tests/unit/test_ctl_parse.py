"""ctl command-line values: scheduled times, KEY=VALUE assignments, configuration patches."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from pgquorum.ctl.client import UsageError
from pgquorum.ctl.parse import merge_patch, parse_assignments, parse_scheduled

NOW = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
PLUS2 = timezone(timedelta(hours=2))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2030-01-01T13:00:00Z", datetime(2030, 1, 1, 13, 0, tzinfo=UTC)),
        ("2030-01-01T13:00Z", datetime(2030, 1, 1, 13, 0, tzinfo=UTC)),
        ("2030-01-01T15:30:00+02:00", datetime(2030, 1, 1, 13, 30, tzinfo=UTC)),
        ("2030-01-02 00:00:00.5+00:00", datetime(2030, 1, 2, 0, 0, 0, 500_000, tzinfo=UTC)),
        ("20300101T1300Z", datetime(2030, 1, 1, 13, 0, tzinfo=UTC)),
        ("  2030-01-01T13:00Z  ", datetime(2030, 1, 1, 13, 0, tzinfo=UTC)),
    ],
)
def test_scheduled_with_offset(text: str, expected: datetime) -> None:
    when = parse_scheduled(text, NOW)
    assert when == expected and when.tzinfo is not None


def test_scheduled_without_offset_is_local_time() -> None:
    when = parse_scheduled("2030-01-01 15:00", NOW, local_tz=PLUS2)
    assert when.utcoffset() == timedelta(hours=2)
    assert when.astimezone(UTC) == datetime(2030, 1, 1, 13, 0, tzinfo=UTC)
    # with the system zone: still aware
    assert parse_scheduled("2099-01-01T00:00", NOW).tzinfo is not None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("tomorrow", "not an ISO-8601 time"),
        ("", "not an ISO-8601 time"),
        ("2030-13-01T00:00Z", "not an ISO-8601 time"),
        ("2030-06-01", "give a time of day too"),
        ("2030-01-01T11:59:59Z", "in the past"),
        ("2030-01-01T12:00:00Z", "in the past"),  # now is not in the future
        ("2030-01-01T13:00:00+02:00", "in the past"),
    ],
)
def test_scheduled_errors(text: str, message: str) -> None:
    with pytest.raises(UsageError, match=message) as info:
        parse_scheduled(text, NOW, local_tz=UTC)
    assert "--scheduled" in str(info.value) and info.value.exit_code == 2


def test_assignments_build_a_nested_patch_with_yaml_values() -> None:
    patch = parse_assignments(
        [
            "ttl=5",
            "loop_wait=1.5",
            "postgresql.parameters.work_mem=8MB",
            "postgresql.parameters.wal_log_hints=true",
            "synchronous.mode='quorum'",
            "old_key=null",
            "empty=''",
            "list=[a, b]",
            "url=http://x:1/a=b",
        ]
    )
    assert patch == {
        "ttl": 5,
        "loop_wait": 1.5,
        "postgresql": {"parameters": {"work_mem": "8MB", "wal_log_hints": True}},
        "synchronous": {"mode": "quorum"},
        "old_key": None,
        "empty": "",
        "list": ["a", "b"],
        "url": "http://x:1/a=b",
    }


@pytest.mark.parametrize(
    ("items", "message"),
    [
        ([], "at least one KEY=VALUE"),
        (["ttl"], "expected KEY=VALUE"),
        (["=5"], "expected KEY=VALUE"),
        (["a..b=1"], "expected KEY=VALUE"),
        (["ttl="], "empty value"),
        (["a=[1,"], "not a YAML value"),
        (["a=1", "a=2"], "conflicts"),
        (["a.b=1", "a=2"], "conflicts"),
        (["a=1", "a.b.c=2"], "conflicts"),
    ],
)
def test_assignment_errors(items: list[str], message: str) -> None:
    with pytest.raises(UsageError, match=message):
        parse_assignments(items)


def test_merge_patch_contains_only_changes() -> None:
    old = {"ttl": 3, "flag": 1, "gone": 1, "pg": {"a": 1, "b": {"c": 2, "d": 3}}, "same": [1, 2]}
    new = {"ttl": 5, "flag": True, "pg": {"a": 1, "b": {"c": 2, "d": 4, "e": 5}}, "same": [1, 2], "added": "x"}
    assert merge_patch(old, new) == {
        "ttl": 5,
        "flag": True,  # 1 -> true is a change although 1 == True in Python
        "gone": None,
        "pg": {"b": {"d": 4, "e": 5}},
        "added": "x",
    }
    assert merge_patch(old, old) == {}
    assert merge_patch({"a": {"b": 1}}, {"a": 2}) == {"a": 2}
    assert merge_patch({"a": 2}, {"a": {"b": 1}}) == {"a": {"b": 1}}
