"""The top-level ``operator/`` folder is the namespace package ``pgquorum.operator`` (no
``__init__.py``): from the checkout's root, where the current directory is on ``sys.path``, a
regular package named ``operator`` would shadow the standard library's (``collections`` imports it)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_import_operator_from_the_checkout_root_is_the_standard_library() -> None:
    assert not (ROOT / "operator" / "__init__.py").exists(), "operator/__init__.py shadows the stdlib 'operator'"
    out = subprocess.run(
        [sys.executable, "-c", "import collections, operator; print(operator.__file__)"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert Path(out.stdout.strip()).parent == Path(collections_dir())


def test_pgquorum_operator_is_importable() -> None:
    out = subprocess.run(
        [sys.executable, "-c", "import pgquorum.operator.reconcile as r; print(r.__name__)"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0 and out.stdout.strip() == "pgquorum.operator.reconcile", out.stderr


def collections_dir() -> str:
    import collections

    return str(Path(collections.__file__).resolve().parents[1])
