"""ctl output on plain data: tables, sizes, times, config changes, one-line errors."""

from __future__ import annotations

from datetime import UTC, timedelta, timezone

import pytest

from pgquorum.ctl.client import (
    ApiError,
    Attempt,
    ClusterView,
    CtlError,
    HistoryItem,
    InDoubt,
    MemberView,
    Unreachable,
    UsageError,
)
from pgquorum.ctl.format import (
    cluster_table,
    config_yaml,
    error_line,
    format_changes,
    format_durations,
    format_time,
    history_table,
    human_bytes,
    member_host,
    render_table,
)

CLUSTER = {
    "leader": "pg1",
    "term": 4,
    "initialized": True,
    "members": [
        {
            "name": "pg2",
            "role": "replica",
            "state": "streaming",
            "term": 4,
            "timeline": 3,
            "lsn": 50_000,
            "lag_bytes": 1536,
            "api_url": "http://127.0.0.1:8009",
            "conn_url": "postgres://127.0.0.1:5433/postgres",
            "nofailover": False,
        },
        {
            "name": "pg1",
            "role": "leader",
            "state": "running",
            "term": 4,
            "timeline": 3,
            "lsn": 51_536,
            "lag_bytes": 0,
            "api_url": "http://127.0.0.1:8008",
            "conn_url": "postgres://127.0.0.1:5432/postgres",
            "nofailover": False,
        },
        {
            "name": "pg3",
            "role": "stopped",
            "state": None,
            "term": None,
            "timeline": None,
            "lsn": None,
            "lag_bytes": None,
            "api_url": "http://127.0.0.1:8010",
            "conn_url": "",
            "nofailover": True,
            "extra": "kept in raw",
        },
    ],
}


@pytest.mark.parametrize(
    ("n", "text"),
    [
        (None, "-"),
        (0, "0 B"),
        (1023, "1023 B"),
        (1024, "1 KiB"),
        (1536, "1.5 KiB"),
        (5 * 1024 * 1024, "5 MiB"),
        (3 * 1024**3 + 1024**3 // 10, "3.1 GiB"),
        (2048 * 1024**4, "2048 TiB"),
    ],
)
def test_human_bytes(n: int | None, text: str) -> None:
    assert human_bytes(n) == text


def test_render_table_aligns_columns_without_trailing_blanks() -> None:
    out = render_table(["A", "LONGER"], [["xxxx", ""], ["y", "z"]])
    assert out.splitlines() == ["A     LONGER", "xxxx", "y     z"]


def test_cluster_table_sorted_with_leader_blank_lag_and_unknowns_as_dash() -> None:
    view = ClusterView.from_json(CLUSTER)
    lines = cluster_table(view, "main").splitlines()
    assert lines[0] == "cluster main: leader pg1, term 4"
    assert lines[1].split() == ["MEMBER", "ROLE", "STATE", "TERM", "TIMELINE", "LAG", "HOST"]
    assert lines[2].split() == ["pg1", "leader", "running", "4", "3", "127.0.0.1:5432"]
    assert lines[3].split() == ["pg2", "replica", "streaming", "4", "3", "1.5", "KiB", "127.0.0.1:5433"]
    assert lines[4].split() == ["pg3", "stopped", "-", "-", "-", "-", "127.0.0.1:8010"]
    assert lines[5] == "nofailover (never promoted): pg3"
    # the columns line up: every value starts where its header starts
    col = lines[1].index("LAG")
    assert lines[3][col:].startswith("1.5 KiB")


def test_cluster_table_without_leader_or_members() -> None:
    view = ClusterView.from_json({"leader": None, "term": 2, "members": []})
    text = cluster_table(view)
    assert text.startswith("cluster: leader - (none), term 2")
    assert "(no members registered)" in text
    assert cluster_table(ClusterView.from_json({"initialized": False, "members": []})).startswith(
        "cluster: not initialized yet"
    )


def test_member_view_tolerates_odd_values_and_keeps_raw() -> None:
    m = MemberView.from_json({"name": "x", "term": "7", "timeline": True, "lag_bytes": "n/a", "extra": 1})
    assert (m.role, m.term, m.timeline, m.lag_bytes) == ("?", 7, None, None)
    assert m.raw["extra"] == 1
    with pytest.raises(ValueError):
        ClusterView.from_json({"members": "nope"})


@pytest.mark.parametrize(
    ("conn_url", "api_url", "host"),
    [
        ("postgres://10.0.0.5:5432/postgres", None, "10.0.0.5:5432"),
        ("postgresql://u@db.example:6432/x?sslmode=require", None, "db.example:6432"),
        ("postgres://[::1]:5432/postgres", None, "[::1]:5432"),
        ("host=10.0.0.7 port=5433 dbname=postgres", None, "10.0.0.7:5433"),
        ("host=/var/run/postgresql", None, "/var/run/postgresql"),
        ("", "http://127.0.0.1:8008", "127.0.0.1:8008"),
        (None, None, "-"),
    ],
)
def test_member_host(conn_url: str | None, api_url: str | None, host: str) -> None:
    assert member_host(MemberView("m", "replica", conn_url=conn_url, api_url=api_url)) == host


def test_format_time_from_unix_seconds_and_iso_text() -> None:
    plus2 = timezone(timedelta(hours=2))
    assert format_time(0, UTC) == "1970-01-01 00:00:00+00:00"
    assert format_time(1_700_000_000.7, plus2) == "2023-11-15 00:13:20+02:00"
    assert format_time("2030-06-01T01:00:00Z", plus2) == "2030-06-01 03:00:00+02:00"
    assert format_time("2030-06-01T01:00:00", UTC) == "2030-06-01 01:00:00+00:00"  # naive: UTC
    assert format_time("last tuesday", UTC) == "last tuesday"
    assert format_time(None, UTC) == "-"
    assert format_time(True, UTC) == "-"


def test_format_durations_contract_keys_first() -> None:
    assert format_durations({}) == "-"
    text = format_durations({"zeta": 1, "promotion": 0.5, "detection": 2.25, "election": 0.014})
    assert text == "detection 2.25s, election 0.01s, promotion 0.50s, zeta 1.00s"


def test_history_table() -> None:
    items = [
        HistoryItem.from_json(
            {"term": 1, "timeline": 1, "new_leader": "pg1", "old_leader": None, "reason": "bootstrap", "at": 0}
        ),
        HistoryItem.from_json(
            {
                "term": 2,
                "timeline": 2,
                "new_leader": "pg2",
                "old_leader": "pg1",
                "reason": "failover",
                "at": 60.0,
                "durations": {"detection": 3.1, "election": 0.2, "promotion": 0.4},
            }
        ),
    ]
    lines = history_table(items, UTC).splitlines()
    assert lines[0].split() == ["TERM", "TIMELINE", "AT", "NEW", "LEADER", "OLD", "LEADER", "REASON", "DURATIONS"]
    assert lines[1].split() == ["1", "1", "1970-01-01", "00:00:00+00:00", "pg1", "-", "bootstrap", "-"]
    assert "failover" in lines[2] and "detection 3.10s, election 0.20s, promotion 0.40s" in lines[2]
    assert history_table([], UTC) == "no leadership changes recorded"
    with pytest.raises(ValueError):
        HistoryItem.from_json({"durations": [1, 2]})


def test_config_yaml_is_sorted_block_style() -> None:
    assert config_yaml({}) == "{}\n"
    assert config_yaml({"ttl": 3, "a": {"b": [1, 2]}}) == "a:\n  b:\n  - 1\n  - 2\nttl: 3\n"


def test_format_changes_lists_each_changed_leaf() -> None:
    old = {"ttl": 3, "gone": "x", "pg": {"parameters": {"work_mem": "4MB", "keep": 1}}}
    patch = {"ttl": 5, "gone": None, "new": True, "pg": {"parameters": {"work_mem": "8MB"}}}
    assert format_changes(old, patch) == [
        '- gone (was "x")',
        "+ new: true",
        '~ pg.parameters.work_mem: "4MB" -> "8MB"',
        "~ ttl: 3 -> 5",
    ]


# -- errors ----------------------------------------------------------------------------------------


def test_unreachable_names_every_url_tried() -> None:
    exc = Unreachable(
        "GET",
        "/cluster",
        [Attempt("http://a:1", "connection refused"), Attempt("http://b:2", "HTTP 503: etcd unreachable")],
    )
    assert error_line(exc) == (
        "GET /cluster: no member API answered; tried http://a:1 (connection refused); "
        "http://b:2 (HTTP 503: etcd unreachable)"
    )


@pytest.mark.parametrize(
    ("status", "field", "expected"),
    [
        (400, "candidate", "bad request: boom (field: candidate) (HTTP 400 from POST http://h:1/switchover)"),
        (409, None, "refused by the cluster: boom (HTTP 409 from POST http://h:1/switchover)"),
        (404, None, "not found: boom (HTTP 404 from POST http://h:1/switchover)"),
        (500, None, "boom (HTTP 500 from POST http://h:1/switchover)"),
    ],
)
def test_api_error_shows_text_field_status_and_where(status: int, field: str | None, expected: str) -> None:
    assert error_line(ApiError("POST", "/switchover", "http://h:1", status, "boom", field)) == expected


def test_auth_errors_hint_at_credentials() -> None:
    exc = ApiError("POST", "/restart", "http://h:1", 401, "missing credentials")
    line = error_line(exc)
    assert line.startswith("not authenticated: missing credentials (HTTP 401 from POST http://h:1/restart)")
    assert "--token-file" in line and "--password-file" in line
    line = error_line(ApiError("POST", "/restart", "http://h:1", 403, "bad token"), "--token-file /t")
    assert line.startswith("not allowed: bad token") and line.endswith("check the credentials from --token-file /t")
    # 403 without credentials: the agent refuses anyway (e.g. no authentication configured); its text says why
    line = error_line(ApiError("POST", "/restart", "http://h:1", 403, "mutating requests are disabled"))
    assert line == "not allowed: mutating requests are disabled (HTTP 403 from POST http://h:1/restart)"


def test_old_agent_without_the_route() -> None:
    exc = ApiError("POST", "/failover", "http://h:1", 501, "Unsupported method ('POST')")
    assert "does not support POST /failover" in error_line(exc)


def test_in_doubt_and_plain_errors_are_one_line() -> None:
    line = error_line(InDoubt("POST", "/failover", "http://h:1", "no answer within 120s"))
    assert "may or may not have been applied" in line and "http://h:1/failover" in line
    assert error_line(UsageError("bad\nvalue")) == "bad value"
    assert error_line(CtlError("multi\n  line\tmessage")) == "multi line message"
    assert error_line(KeyError("x")) == "internal error: KeyError: 'x'"
