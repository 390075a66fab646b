"""The installed package is the whole program: every module of the checkout is in the wheel, so are
the files code reads beside its modules, and an installed copy — away from the checkout — imports
every module and answers ``--help`` for every command. (The images install the same wheel.)"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PKG = ROOT / "src" / "pgquorum"
# Every module that finds files relative to itself, and how: the files the wheel must ship, or the
# documented message it gives when only a checkout has them. A new reader fails the test until
# it is listed here (and its files are package data or it says where else it looks).
READERS: dict[str, list[str] | str] = {
    "pgquorum/chaos/linearizability.py": [
        "pgquorum/chaos/linearize/main.go",
        "pgquorum/chaos/linearize/go.mod",
        "pgquorum/chaos/linearize/go.sum",
    ],
    # the Patroni comparison bed runs bench/patroni_config.py, which is no part of the package
    "pgquorum/chaos/patroni_cluster.py": "the Patroni bed needs the source checkout",
    # a report's commit id, best effort (contextlib.suppress): absent outside a checkout
    "pgquorum/chaos/runner.py": '"rev-parse"',
    # image build contexts (Dockerfile, images/): the checkout, found through $PGQUORUM_SOURCE
    "pgquorum/kube/images.py": "set PGQUORUM_SOURCE=",
}
RELATIVE_READ = re.compile(r"__file__|importlib\.resources|importlib_resources|pkgutil\.get_data|pkg_resources")


def checkout_files(suffix: str = "") -> dict[str, Path]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(PKG, followlinks=True):  # src/pgquorum/<folder> are symlinks
        dirnames[:] = [d for d in dirnames if d != "__pycache__"]
        base = Path(dirpath).relative_to(PKG.parent)
        out.update({(base / f).as_posix(): Path(dirpath) / f for f in filenames if f.endswith(suffix)})
    return out


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    dest = tmp_path_factory.mktemp("wheel")
    # from a clean copy: setuptools reuses a checkout's build/ directory, which could hide a missing file
    src = tmp_path_factory.mktemp("src") / "pgquorum"
    shutil.copytree(
        ROOT, src, symlinks=True, ignore=shutil.ignore_patterns(".git", "build", "dist", "*.egg-info", "__pycache__")
    )
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(dest), str(src)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    (found,) = dest.glob("pgquorum-*.whl")
    return found


def test_every_module_is_in_the_wheel(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    modules = set(checkout_files(".py"))
    assert len(modules) > 100
    assert sorted(modules - names) == []


def test_every_file_a_module_reads_beside_itself_ships_or_is_documented(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    sources = checkout_files(".py")
    readers = {rel for rel, path in sources.items() if RELATIVE_READ.search(path.read_text())}
    assert readers == set(READERS), "a module reads files beside itself: list it in READERS"
    for rel, how in READERS.items():
        if isinstance(how, str):
            assert how in sources[rel].read_text(), f"{rel} no longer says how it finds its files: {how!r}"
        else:
            assert sorted(set(how) - names) == [], f"{rel} reads these beside itself; add them as package data"
    # the Go sources the checker builds from, on both sides (the reader asks for exactly these)
    on_disk = {rel for rel in checkout_files() if rel.startswith("pgquorum/chaos/linearize/")}
    assert on_disk == set(READERS["pgquorum/chaos/linearizability.py"])


# Run in the installed copy (the script's docstring says what it checks).
CHECK = (Path(__file__).resolve().parents[1] / "package_check.py").read_text()


def test_an_installed_copy_imports_everything_and_every_command_answers_help(wheel: Path, tmp_path: Path) -> None:
    target = tmp_path / "site"
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    # -I: no cwd, no script dir, no PYTHON* variables on sys.path; cwd is the temp dir anyway
    out = subprocess.run(
        [sys.executable, "-I", "-c", CHECK, str(target), str(ROOT)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    modules, commands = map(int, out.stdout.split()[-2:])
    assert modules > 100 and commands > 10, out.stdout
