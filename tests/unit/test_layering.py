"""The architecture, checked: which top-level packages may import which, and that the decision
modules stay pure (no I/O, no clock of their own: time is an argument).

Direct imports only, read from the source with ``ast`` (nothing is imported). A new edge either
fits the architecture (add it here, saying why) or is a sign to move code.
"""

from __future__ import annotations

import ast
import os
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2] / "src" / "pgquorum"

# Who may import whom among pgquorum's top-level packages (beyond itself and the shared ``cache``).
ALLOWED: dict[str, set[str]] = {
    # The agent runs alone beside PostgreSQL (and in every pod): nothing of the operator, the
    # clusters, the harnesses or the CLI around it.
    "agent": set(),
    "local": {"agent"},  # the local cluster runs agents
    "ctl": {"agent", "local"},  # talks to agents' APIs; finds a local cluster's endpoints
    "chaos": {"agent", "local", "kube"},  # beds: the local one, and the Kubernetes one
    "operator": {"agent", "ctl", "kube"},  # renders agents' config; image names from kube.images
    "kube": {"agent", "chaos", "operator"},  # installs the operator; reuses chaos' Prometheus readers
    "cli": {"agent", "chaos", "ctl", "kube", "local", "operator"},
}

# Decisions are pure functions over immutable snapshots: these modules may not do I/O themselves.
PURE = (
    "agent/ha/decide.py",
    "agent/ha/actions.py",
    "agent/ha/view.py",
    "agent/quorum/candidate.py",
    "agent/quorum/failsafe.py",
    "agent/quorum/refusal.py",
    "agent/quorum/status.py",
    "agent/quorum/sync.py",
    "agent/quorum/votes.py",
    "operator/reconcile.py",
    "operator/spec.py",
    "operator/status.py",
    "operator/switchover.py",
)
IMPURE_MODULES = ("socket", "subprocess", "threading", "urllib", "http", "time", "psycopg", "etcd3gw", "kopf")
IMPURE_OURS = (
    "pgquorum.agent.dcs.etcd",
    "pgquorum.agent.postgres.controller",
    "pgquorum.agent.httpcall",
    "pgquorum.agent.kubeapi",
)


def sources() -> Iterator[tuple[str, Path]]:
    """(path relative to the package, file) for every module, through the symlinked folders."""
    for folder, _dirs, files in os.walk(ROOT, followlinks=True):
        for name in files:
            if name.endswith(".py"):
                path = Path(folder) / name
                yield str(path.relative_to(ROOT)), path


def imports(path: Path) -> set[str]:
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return out


def test_packages_import_only_what_the_architecture_allows() -> None:
    wrong = []
    seen = set()
    for rel, path in sources():
        top = rel.split("/")[0].removesuffix(".py")
        seen.add(top)
        allowed = ALLOWED.get(top)
        if allowed is None:
            continue
        for module in imports(path):
            parts = module.split(".")
            if parts[0] != "pgquorum" or len(parts) < 2 or parts[1] in (top, "cache"):
                continue
            if parts[1] not in allowed:
                wrong.append(f"{rel} imports {module}")
    assert seen >= set(ALLOWED), f"packages gone from the tree: {set(ALLOWED) - seen}"
    assert not wrong, "\n".join(wrong)


def test_decision_modules_do_no_io() -> None:
    wrong = []
    for rel in PURE:
        path = ROOT / rel
        assert path.is_file(), f"{rel}: listed as pure but missing"
        for module in imports(path):
            if module.split(".")[0] in IMPURE_MODULES or module.startswith(IMPURE_OURS):
                wrong.append(f"{rel} imports {module}")
    assert not wrong, "\n".join(wrong)


def test_the_check_sees_a_forbidden_import(tmp_path: Path) -> None:
    # the reader itself: an import inside a function counts as much as one at the top
    bad = tmp_path / "m.py"
    bad.write_text("def f():\n    import subprocess\n    from pgquorum.kube import cluster\n")
    assert imports(bad) == {"subprocess", "pgquorum.kube"}
