"""The probe's report: windows without acknowledgements and lost writes, from plain ops."""

from __future__ import annotations

from pgquorum.chaos.history import FinalState, Op
from pgquorum.chaos.probe import gaps, report


def write(i: int, send: float, outcome: str = "ok", term: int = 1) -> Op:
    ack = send + 0.01 if outcome == "ok" else None
    return Op("w1", i, "write", send, outcome, ack=ack, term=term if ack else None, key=f"k{i}")


OPS = [write(1, 100.0), write(2, 100.1), write(3, 100.2, "fail"), write(4, 103.5, term=2), write(5, 103.6, term=2)]


def test_windows_without_acks_longer_than_the_gap_longest_first() -> None:
    assert gaps(OPS, 100.0, 104.0, 1.0) == [{"from": 100.11, "to": 103.51, "seconds": 3.4}]
    # the end of the run counts: writes stopped 1.39 s before it
    assert gaps(OPS, 100.0, 105.0, 1.0)[1] == {"from": 103.61, "to": 105.0, "seconds": 1.39}


def test_report_names_lost_and_phantom_writes() -> None:
    final = FinalState(writes=frozenset({"k1", "k3", "k4", "k5"}), transfers={}, balances={}, initial_balance=0)
    got = report(OPS, final, 100.0, 104.0, 1.0)
    assert got["acked"] == 4 and got["failed"] == 1
    assert got["lost"] == ["k2"] and got["phantoms"] == ["k3"]
    assert got["terms"] == [1, 2]
