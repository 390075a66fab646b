"""The Helm chart (``charts/pgquorum``) with the Helm this project builds (``pgquorum kube build``):
``helm lint --strict`` passes; its CRDs are the ones the operator's code defines; rendered with the
defaults it makes exactly the objects ``pgquorum operator manifests`` prints (one source of truth,
checked); and a wrong value fails with the key's name."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from pgquorum.kube.images import PGQUORUM_IMAGE
from pgquorum.kube.versions import HELM
from pgquorum.operator.cli import peering_crds
from pgquorum.operator.crd import postgrescluster_crd
from pgquorum.operator.install import operator_objects

pytestmark = pytest.mark.kube
CHART = Path(__file__).resolve().parents[2] / "charts" / "pgquorum"


def helm(*args: str) -> subprocess.CompletedProcess[str]:
    binary = HELM.binary("helm")
    if not binary.exists():
        pytest.fail(f"{binary} missing: `pgquorum kube build` builds it", pytrace=False)
    return subprocess.run([str(binary), *args], capture_output=True, text=True, timeout=60)


def test_the_chart_lints_strict() -> None:
    proc = helm("lint", "--strict", str(CHART))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_charts_crds_are_the_operators() -> None:
    shipped = [d for f in sorted((CHART / "crds").glob("*.yaml")) for d in yaml.safe_load_all(f.read_text())]
    wanted = [postgrescluster_crd(), *peering_crds()]
    key = lambda o: o["metadata"]["name"]  # noqa: E731
    assert sorted(shipped, key=key) == sorted(wanted, key=key), "regenerate charts/pgquorum/crds (see its header)"


def rendered(*args: str) -> list[dict[str, Any]]:
    proc = helm("template", "r", str(CHART), "--namespace", "pgquorum-system", *args)
    assert proc.returncode == 0, proc.stderr
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


def by_name(objects: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(o["kind"], o["metadata"]["name"]): o for o in objects}


def test_rendered_with_the_defaults_it_is_what_the_operator_installs() -> None:
    expected = [o for o in operator_objects("pgquorum-system", PGQUORUM_IMAGE, replicas=2) if o["kind"] != "Namespace"]
    assert by_name(rendered()) == by_name(expected)


def test_values_reach_the_deployment() -> None:
    got = by_name(
        rendered("--set", "operator.replicas=3", "--set", "image.tag=9.9", "--set", "image.pullPolicy=Always")
    )
    deployment = got[("Deployment", "pgquorum-operator")]
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert deployment["spec"]["replicas"] == 3
    assert container["image"] == "localhost/pgquorum:9.9" and container["imagePullPolicy"] == "Always"


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("operator.replicas=two", "at '/operator/replicas': got string, want integer"),
        ("operator.replicas=0", "/operator/replicas"),
        ("image.pullPolicy=Sometimes", "/image/pullPolicy"),
        ("nope=1", "additional properties 'nope' not allowed"),
        ("operator.replica=2", "additional properties 'replica' not allowed"),
    ],
)
def test_a_wrong_value_fails_naming_the_key(value: str, says: str) -> None:
    proc = helm("template", "r", str(CHART), "--set", value)
    assert proc.returncode != 0 and says in proc.stderr, proc.stderr
