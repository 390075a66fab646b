"""The chart's dashboard read as queries (kube/dashboard.py), on the real dashboard file."""

from __future__ import annotations

from pathlib import Path

from pgquorum.kube import dashboard

ROOT = Path(__file__).resolve().parents[2]


def test_every_panel_becomes_queries_with_the_cluster_variable_set() -> None:
    doc = dashboard.load(ROOT)
    got = dashboard.panels(doc, cluster="db|other")
    with_targets = [p for p in doc["panels"] if p.get("targets")]
    assert len(got) == len(with_targets) >= 10
    for p in got:
        assert p.exprs and all("$" not in e for e in p.exprs), p
    assert any('cluster=~"db|other"' in e for p in got for e in p.exprs)


def test_a_panel_without_queries_is_skipped_and_braced_variables_are_set() -> None:
    doc = {"panels": [{"title": "row", "type": "row"}, {"title": "t", "targets": [{"expr": 'x{c=~"${cluster}"}'}]}]}
    assert dashboard.panels(doc) == [dashboard.Panel("t", ('x{c=~".+"}',))]
