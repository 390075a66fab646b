"""The chart's alert rules and dashboard queries, checked by Prometheus's own promtool (Debian's
prometheus package): every rule is valid and the alerts fire on the series the agents export
(alerts_test.yaml: synthetic series, expected alerts and their texts); every dashboard panel's
query parses."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

FILES = Path(__file__).resolve().parents[2] / "charts" / "pgquorum" / "files"
HERE = Path(__file__).resolve().parent


def promtool(*args: str, cwd: Path = HERE) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("promtool")
    if binary is None:
        pytest.fail("promtool missing: apt-get install prometheus (scripts/setup.sh does)", pytrace=False)
    return subprocess.run([binary, *args], capture_output=True, text=True, timeout=60, cwd=cwd)


def test_the_alert_rules_are_valid_prometheus_rules() -> None:
    proc = promtool("check", "rules", str(FILES / "alerts.yaml"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS: 10 rules found" in proc.stdout


def test_the_alerts_fire_on_the_agents_series() -> None:
    proc = promtool("test", "rules", "alerts_test.yaml")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_every_dashboard_panel_query_parses(tmp_path: Path) -> None:
    dashboard = json.loads((FILES / "dashboard.json").read_text())
    exprs = {
        f"panel_{p['id']}_{t['refId']}": t["expr"].replace("$cluster", ".*")
        for p in dashboard["panels"]
        for t in p["targets"]
    }
    assert len(exprs) == len(dashboard["panels"]) >= 12
    rules = {"groups": [{"name": "dashboard", "rules": [{"record": k, "expr": e} for k, e in exprs.items()]}]}
    path = tmp_path / "dashboard-queries.yaml"
    path.write_text(yaml.safe_dump(rules))
    proc = promtool("check", "rules", str(path))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_in_cluster_prometheus_config_is_valid(tmp_path: Path) -> None:
    """kube/prometheus.py's config (file_sd for agents and etcd, the chart's rules) as promtool reads it:
    Debian's Prometheus has no Kubernetes service discovery, which this test found."""
    from pgquorum.kube.prometheus import prometheus_config

    config = prometheus_config()
    (tmp_path / "rules").mkdir()
    shutil.copyfile(FILES / "alerts.yaml", tmp_path / "rules" / "alerts.yaml")
    config["rule_files"] = [str(tmp_path / "rules" / "*.yaml")]  # where the pod mounts them: here
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    proc = promtool("check", "config", str(tmp_path / "prometheus.yml"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS: 10 rules found" in proc.stdout
    jobs = [j["job_name"] for j in config["scrape_configs"]]
    assert jobs == ["pgquorum-agents", "pgquorum-etcd", "prometheus"]
