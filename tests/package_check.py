"""Run inside an installed copy of pgquorum (a pip --target directory, or the image's /opt/pgquorum):
imports every module from that copy, then runs ``--help`` for every command and subcommand of the
parser (walked, so a new command is covered) and for pgquorumctl; prints the two counts.

argv: ROOT [CHECKOUT] -- every module must come from ROOT; with CHECKOUT, sys.path is cut down to the
copy and the running environment's dependencies, never the checkout. Read as text by
tests/unit/test_package_complete.py and tests/kube/test_images.py (not collected: no test_ prefix).
"""

import argparse
import importlib
import pkgutil
import sys
from pathlib import Path

here = Path(sys.argv[1]).resolve()
if len(sys.argv) > 2:  # the copy first; its dependencies from the running environment; never the checkout
    sys.path = [str(here)] + [p for p in sys.path if not Path(p).resolve().is_relative_to(sys.argv[2])]
import pgquorum  # noqa: E402 (sys.path is set first)

assert Path(pgquorum.__file__).resolve().is_relative_to(here), pgquorum.__file__
mods = [m.name for m in pkgutil.walk_packages(pgquorum.__path__, "pgquorum.") if not m.name.endswith("__main__")]
bad = []
for name in mods:
    try:
        mod = importlib.import_module(name)
        assert Path(mod.__file__).resolve().is_relative_to(here), mod.__file__
    except Exception as exc:
        bad.append(f"{name}: {exc!r}")
assert not bad, bad
from pgquorum.cli import build_parser, main  # noqa: E402
from pgquorum.ctl.main import main as ctl_main  # noqa: E402


def commands(p, path):
    yield path
    for a in p._actions:
        if isinstance(a, argparse._SubParsersAction):
            for name, sp in a.choices.items():
                yield from commands(sp, [*path, name])


argvs = list(commands(build_parser(), []))
for entry, argv in [(main, a) for a in argvs] + [(ctl_main, [])]:
    try:
        entry([*argv, "--help"])
        raise AssertionError(f"{argv} --help returned")
    except SystemExit as exc:
        assert exc.code == 0, (argv, exc.code)
print(len(mods), len(argvs))
