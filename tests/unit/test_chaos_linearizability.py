"""The register linearizability check through the real porcupine checker (chaos/linearize, Go):
linearizable histories pass, a stale read after an acknowledged write is illegal, an unknown write
that may have happened explains a read, a failed write does not, a checker timeout is ``unknown``
(not a pass), a missing checker is ``error`` (not a pass)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pgquorum.chaos import linearizability as lin
from pgquorum.chaos.checker import Verdict
from pgquorum.chaos.linearizability import RegisterOp, check_register, to_input

MS = 1_000_000


def _binary() -> Path:
    if lin.find_go() is None and not lin.os.environ.get("PGQUORUM_LINEARIZE"):
        pytest.skip("go is not installed: the porcupine checker cannot be built")
    return lin.checker_binary()


@pytest.fixture(scope="module")
def binary() -> Path:
    return _binary()


class H:
    """Builds register ops; times in milliseconds."""

    def __init__(self) -> None:
        self.ops: list[RegisterOp] = []

    def add(
        self,
        client: str,
        kind: str,
        key: str,
        call: int,
        ret: int | None,
        outcome: str = "ok",
        *,
        value: int | None = None,
        expect: int | None = None,
        swapped: bool | None = None,
    ) -> H:
        self.ops.append(
            RegisterOp(
                client,
                len(self.ops) + 1,
                kind,
                key,
                call * MS,
                outcome,
                None if ret is None else ret * MS,
                value=value,
                expect=expect,
                swapped=swapped,
            )
        )
        return self


def test_linearizable_history_with_concurrency_and_cas(binary: Path) -> None:
    h = (
        H()
        .add("setup", "write", "k0", 0, 1, value=0)
        .add("setup", "write", "k1", 0, 1, value=0)
        .add("a", "write", "k0", 10, 30, value=1)
        .add("b", "read", "k0", 12, 20, value=0)  # concurrent with the write: may see the old value
        .add("c", "read", "k0", 15, 25, value=1)  # ... or the new one
        .add("b", "cas", "k0", 40, 50, value=2, expect=1, swapped=True)
        .add("c", "cas", "k0", 60, 70, value=3, expect=1, swapped=False)
        .add("a", "read", "k0", 80, 90, value=2)
        .add("a", "read", "k1", 80, 90, value=0)
    )
    res = check_register(h.ops, binary=binary)
    assert res.result == "ok", res
    assert res.linearizable is True
    assert res.ops_checked == 9 and res.ops_dropped == 0
    assert set(res.keys) == {"k0", "k1"} and all(k["result"] == "ok" for k in res.keys.values())


def test_stale_read_after_acknowledged_write_is_illegal(binary: Path, tmp_path: Path) -> None:
    h = (
        H()
        .add("setup", "write", "k0", 0, 1, value=0)
        .add("setup", "write", "k1", 0, 1, value=0)
        .add("a", "write", "k0", 10, 20, value=1)  # acknowledged at 20
        .add("b", "read", "k0", 30, 40, value=0)  # began after the ack, saw the old value
        .add("b", "read", "k1", 30, 40, value=0)
    )
    html = tmp_path / "lin.html"
    res = check_register(h.ops, binary=binary, html=html)
    assert res.result == "illegal" and res.linearizable is False
    assert res.keys["k0"]["result"] == "illegal" and res.keys["k1"]["result"] == "ok"
    assert res.visualizations == [str(html)] and html.stat().st_size > 1000
    assert "NOT linearizable on key(s) k0" in res.describe()


def test_unknown_write_may_have_happened(binary: Path) -> None:
    h = (
        H()
        .add("setup", "write", "k0", 0, 1, value=0)
        .add("a", "write", "k0", 10, 20, "unknown", value=4)  # connection broke: may commit any time later
        .add("b", "read", "k0", 30, 40, value=0)  # not yet
        .add("b", "read", "k0", 500, 510, value=4)  # now it has
        .add("b", "read", "k0", 600, 610, value=4)
    )
    res = check_register(h.ops, binary=binary)
    assert res.result == "ok", res
    assert res.pending == 1 and res.ops_checked == 5


def test_unknown_write_cannot_be_seen_before_its_call(binary: Path) -> None:
    h = (
        H()
        .add("setup", "write", "k0", 0, 1, value=0)
        .add("b", "read", "k0", 5, 8, value=4)  # before anyone wrote 4
        .add("a", "write", "k0", 10, 20, "unknown", value=4)
    )
    assert check_register(h.ops, binary=binary).result == "illegal"


def test_failed_write_is_dropped_so_seeing_its_value_is_illegal(binary: Path) -> None:
    h = (
        H()
        .add("setup", "write", "k0", 0, 1, value=0)
        .add("a", "write", "k0", 10, 20, "fail", value=4)  # certainly not committed
        .add("b", "read", "k0", 30, 40, value=4)
    )
    res = check_register(h.ops, binary=binary)
    assert res.result == "illegal"
    assert res.ops_dropped == 1


def test_unknown_read_is_dropped_and_unknown_cas_may_apply(binary: Path) -> None:
    h = (
        H()
        .add("setup", "write", "k0", 0, 1, value=0)
        .add("b", "read", "k0", 5, None, "unknown")
        .add("a", "cas", "k0", 10, None, "unknown", value=2, expect=0)
        .add("b", "read", "k0", 30, 40, value=2)
    )
    res = check_register(h.ops, binary=binary)
    assert res.result == "ok" and res.ops_dropped == 1


def test_acknowledged_cas_that_did_not_swap_although_it_matched_is_illegal(binary: Path) -> None:
    h = H().add("setup", "write", "k0", 0, 1, value=0).add("a", "cas", "k0", 10, 20, value=3, expect=0, swapped=False)
    assert check_register(h.ops, binary=binary).result == "illegal"


def test_timeout_is_unknown_not_a_pass(binary: Path) -> None:
    # 40 concurrent pending writes of distinct values and an impossible read: porcupine must try
    # every subset before it can say illegal; with 10 ms it cannot
    h = H().add("setup", "write", "k0", 0, 1, value=0)
    for i in range(40):
        h.add(f"c{i}", "write", "k0", 10 + i, None, "unknown", value=i + 1)
        h.add(f"c{i}", "read", "k0", 100 + i, 200 + i, value=i + 1)
    h.add("z", "read", "k0", 1000, 1001, value=999)
    res = check_register(h.ops, binary=binary, timeout=0.01)
    assert res.result == "unknown" and res.linearizable is None
    assert "not a pass" in res.describe()


def test_missing_checker_is_an_error_not_a_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PGQUORUM_LINEARIZE", "/nonexistent/linearize")
    res = check_register(H().add("setup", "write", "k0", 0, 1, value=0).ops)
    assert res.result == "error" and res.linearizable is None
    assert "PGQUORUM_LINEARIZE" in (res.error or "")


def test_bad_input_is_a_one_line_error(binary: Path) -> None:
    import subprocess

    proc = subprocess.run([str(binary), "-"], input='{"ops": [{"client": 0, "op": "write", "key": "k"}]}', text=True,
                          capture_output=True)  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.strip() == "linearize: ops[0]: call is missing"
    with pytest.raises(ValueError, match="a cas needs expect"):
        RegisterOp("a", 1, "cas", "k0", 0, "unknown", value=1)


def test_client_ids_change_after_an_unknown_operation() -> None:
    h = (
        H()
        .add("a", "write", "k0", 0, None, "unknown", value=1)
        .add("a", "read", "k0", 10, 20, value=1)
        .add("b", "read", "k0", 11, 21, value=1)
    )
    ids = [o["client"] for o in to_input(h.ops)["ops"]]
    assert ids == [0, 1, 2]
    assert to_input(h.ops)["ops"][0]["return"] is None


def test_record_into_verdict_and_round_trip(binary: Path, tmp_path: Path) -> None:
    h = H().add("setup", "write", "k0", 0, 1, value=0).add("a", "read", "k0", 10, 20, value=1)
    verdict = Verdict(ok=True, counts={})
    res = lin.record(verdict, h.ops, tmp_path)
    assert res.result == "illegal"
    assert verdict.ok is False and verdict.linearizability is not None
    assert verdict.to_json()["linearizability"]["linearizable"] is False
    assert any("NOT linearizable" in p for p in verdict.problems)
    assert (tmp_path / "linearizability.html").exists()
    assert lin.load(tmp_path / "register.json") == h.ops
    assert json.loads((tmp_path / "register.json").read_text())["version"] == 1


def test_report_shows_the_result(binary: Path, tmp_path: Path) -> None:
    from pgquorum.chaos.history import History
    from pgquorum.chaos.report import markdown, summary_line

    h = H().add("setup", "write", "k0", 0, 1, value=0).add("a", "read", "k0", 10, 20, value=0)
    verdict = Verdict(ok=True, counts={})
    lin.record(verdict, h.ops, tmp_path)
    assert verdict.ok is True
    assert summary_line(verdict).endswith("register linearizable: yes (2 of 2 ops checked)")
    assert "- k0: ok, 2 ops, 0 pending" in markdown(History([]), verdict)
