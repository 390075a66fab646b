"""Linearizability of the register history, checked by porcupine (``chaos/linearize``, Go).

The register workload (``register.py``) records reads, writes and compare-and-sets on a few keys.
This module finds or builds the Go checker, converts the history to its input and returns a typed
``LinearizabilityResult``: ``ok`` (linearizable), ``illegal`` (no linearization exists: porcupine's
HTML visualization is written next to the report), ``unknown`` (the checker timed out: not a pass)
or ``error`` (no checker: ``go`` missing, a build or run failure: not a pass either).

Outcomes follow the workload's rules: ``fail`` (certainly not applied) is dropped, an ``unknown``
read is dropped, an ``unknown`` write or cas may have happened at any time after its call and stays
pending forever. Each client gets a fresh porcupine client id after an unknown operation (its old
operation never returns; Jepsen does the same with processes).

The binary is built once per content of ``main.go`` + ``go.mod`` + ``go.sum`` into the cache
directory (``PGQUORUM_CACHE``, else ``/opt/pgquorum-cache`` for root, ``~/.cache/pgquorum``
otherwise: the same rule as ``scripts/setup.sh``, which builds it too and links it into the venv
as ``bin/pgquorum-linearize`` for installed copies that lack the Go sources).
``PGQUORUM_LINEARIZE`` names a binary to use instead.

``python -m pgquorum.chaos.linearizability register.json`` re-checks a recorded register history.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pgquorum.cache import cache_dir, find_go
from pgquorum.chaos.checker import Verdict

REGISTER_KINDS = ("read", "write", "cas")
OUTCOMES = ("ok", "fail", "unknown")
SOURCE_FILES = ("main.go", "go.mod", "go.sum")
BINARY_NAME = "pgquorum-linearize"


class LinearizabilityUnavailable(RuntimeError):
    """No checker binary (``go`` missing, the build failed, no sources); the message says which."""


@dataclass(frozen=True)
class RegisterOp:
    client: str
    op_id: int
    kind: str  # read | write | cas
    key: str
    call_ns: int  # monotonic clock, before connecting / sending
    outcome: str  # ok | fail | unknown
    return_ns: int | None = None  # when the outcome became known
    value: int | None = None  # write: written; cas: the new value; read: what was read (None: absent)
    expect: int | None = None  # cas
    swapped: bool | None = None  # an acknowledged cas: whether it replaced the value
    send: float = 0.0  # wall clock, for reports
    server: str | None = None
    error: str | None = None

    def __post_init__(self) -> None:
        where = f"register op {self.client}/{self.op_id}"
        if self.kind not in REGISTER_KINDS:
            raise ValueError(f"{where}: kind {self.kind!r} is not one of {', '.join(REGISTER_KINDS)}")
        if self.outcome not in OUTCOMES:
            raise ValueError(f"{where}: outcome {self.outcome!r} is not one of {', '.join(OUTCOMES)}")
        if self.outcome == "ok" and self.return_ns is None:
            raise ValueError(f"{where}: an acknowledged operation needs return_ns")
        if self.return_ns is not None and self.return_ns < self.call_ns:
            raise ValueError(f"{where}: return_ns precedes call_ns")
        if self.kind in ("write", "cas") and self.value is None:
            raise ValueError(f"{where}: a {self.kind} needs its value")
        if self.kind == "cas" and self.expect is None:
            raise ValueError(f"{where}: a cas needs expect")
        if self.kind == "cas" and self.outcome == "ok" and self.swapped is None:
            raise ValueError(f"{where}: an acknowledged cas needs swapped")


@dataclass
class LinearizabilityResult:
    result: str  # ok | illegal | unknown (checker timeout) | error (not checked)
    ops: int = 0  # register operations recorded
    ops_checked: int = 0  # given to porcupine (acknowledged + pending writes/cas)
    ops_dropped: int = 0  # failed operations and unknown reads
    pending: int = 0  # unknown writes/cas: may have happened
    keys: dict[str, dict[str, Any]] = field(default_factory=dict)
    seconds: float = 0.0
    visualizations: list[str] = field(default_factory=list)
    error: str | None = None

    @property
    def linearizable(self) -> bool | None:
        """True / False when decided; None when the checker timed out or could not run."""
        return {"ok": True, "illegal": False}.get(self.result)

    def to_json(self) -> dict[str, Any]:
        return {"linearizable": self.linearizable, **asdict(self)}

    def describe(self) -> str:
        if self.result == "ok":
            return f"register history linearizable ({self.ops_checked} ops checked, {self.pending} pending)"
        if self.result == "illegal":
            bad = [k for k, v in self.keys.items() if v.get("result") == "illegal"]
            return f"register history NOT linearizable on key(s) {', '.join(bad)} ({self.ops_checked} ops checked)"
        if self.result == "unknown":
            return f"register history not decided: porcupine timed out ({self.ops_checked} ops) - not a pass"
        return f"register history not checked: {self.error}"


# ----------------------------------------------------------------------------- the binary


def source_dir() -> Path | None:
    d = Path(__file__).resolve().parent / "linearize"
    return d if all((d / f).is_file() for f in SOURCE_FILES) else None


def source_key(src: Path) -> str:
    """sha256 of main.go + go.mod + go.sum, 12 hex digits (setup.sh computes the same)."""
    h = hashlib.sha256()
    for f in SOURCE_FILES:
        h.update((src / f).read_bytes())
    return h.hexdigest()[:12]


def build(src: Path, dest: Path, timeout: float = 600.0) -> None:
    go = find_go()
    if go is None:
        raise LinearizabilityUnavailable("go is not installed (needed to build the porcupine checker)")
    dest.parent.mkdir(parents=True, exist_ok=True)
    # GOPROXY etc. come from the environment; no VCS stamp (the cache key is the sources' hash)
    env = dict(os.environ, GOFLAGS=f"-mod=mod {os.environ.get('GOFLAGS', '')}".strip())
    fd, tmp = tempfile.mkstemp(prefix=".build-", dir=dest.parent)
    os.close(fd)
    try:
        proc = subprocess.run(
            [go, "build", "-buildvcs=false", "-o", tmp, "."],
            cwd=src,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or ["?"])[-1]
            raise LinearizabilityUnavailable(f"go build of {src} failed: {last}")
        os.chmod(tmp, 0o755)
        os.replace(tmp, dest)  # atomic: a concurrent build of the same sources writes the same binary
    except subprocess.TimeoutExpired:
        raise LinearizabilityUnavailable(f"go build of {src} took longer than {timeout:g} s") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def checker_binary() -> Path:
    """The checker: ``PGQUORUM_LINEARIZE``, else built from the sources next to this module (cached
    by their hash), else the one setup.sh linked into the running venv."""
    env = os.environ.get("PGQUORUM_LINEARIZE")
    if env:
        if not os.access(env, os.X_OK):
            raise LinearizabilityUnavailable(f"PGQUORUM_LINEARIZE={env} is not an executable")
        return Path(env)
    src = source_dir()
    if src is not None:
        dest = cache_dir() / f"linearize-{source_key(src)}" / "linearize"
        if not os.access(dest, os.X_OK):
            build(src, dest)
        return dest
    for cand in (Path(sys.prefix) / "bin" / BINARY_NAME, Path(shutil.which(BINARY_NAME) or "/nonexistent")):
        if os.access(cand, os.X_OK):
            return cand
    raise LinearizabilityUnavailable(
        f"no Go sources next to {__file__} and no {BINARY_NAME} in this venv (run scripts/setup.sh)"
    )


# ----------------------------------------------------------------------------- conversion and check


def to_input(ops: list[RegisterOp]) -> dict[str, Any]:
    """The checker's input. A client's id changes after each unknown operation (still pending)."""
    ids: dict[str, int] = {}
    next_id = 0
    out: list[dict[str, Any]] = []
    for o in sorted(ops, key=lambda o: (o.call_ns, o.client, o.op_id)):
        if o.client not in ids:
            ids[o.client] = next_id
            next_id += 1
        item: dict[str, Any] = {
            "client": ids[o.client],
            "op": o.kind,
            "key": o.key,
            "value": o.value,
            "call": o.call_ns,
            "return": o.return_ns,
            "outcome": o.outcome,
            "label": f"{o.client}/{o.op_id}" + (f" on {o.server}" if o.server else ""),
        }
        if o.kind == "cas":
            item["expect"] = o.expect
            item["swapped"] = o.swapped
        out.append(item)
        if o.outcome == "unknown":
            ids[o.client] = next_id
            next_id += 1
    return {"ops": out}


def check_register(
    ops: list[RegisterOp], *, timeout: float = 60.0, html: Path | None = None, binary: Path | None = None
) -> LinearizabilityResult:
    """Run porcupine on ``ops`` (``timeout`` per key). Never raises for a missing checker: the
    result is then ``error`` with the reason."""
    pending = sum(1 for o in ops if o.outcome == "unknown" and o.kind != "read")
    base = LinearizabilityResult("error", ops=len(ops), pending=pending)
    t0 = time.monotonic()
    try:
        exe = binary or checker_binary()
    except LinearizabilityUnavailable as exc:
        base.error = str(exc)
        return base
    argv = [str(exe), "-timeout", f"{timeout:g}s"]
    if html is not None:
        argv += ["-html", str(html)]
    keys = len({o.key for o in ops}) or 1
    try:
        proc = subprocess.run(
            [*argv, "-"],
            input=json.dumps(to_input(ops)),
            capture_output=True,
            text=True,
            timeout=timeout * keys + 60,
        )
    except subprocess.TimeoutExpired:
        base.result, base.error = "unknown", f"the checker ran past {timeout * keys + 60:g} s"
        return base
    except OSError as exc:
        base.error = f"cannot run {exe}: {exc}"
        return base
    base.seconds = round(time.monotonic() - t0, 3)
    if proc.returncode not in (0, 1):
        base.error = f"{exe} exited {proc.returncode}: {proc.stderr.strip()[:300]}"
        return base
    try:
        data = json.loads(proc.stdout)
        base.result = str(data["result"])
        base.ops_checked = int(data["ops_checked"])
        base.ops_dropped = int(data["ops_dropped"])
        base.keys = dict(data["keys"])
        base.visualizations = [str(p) for p in data.get("visualizations") or []]
    except (ValueError, KeyError, TypeError) as exc:
        base.result, base.error = "error", f"unreadable checker output ({exc}): {proc.stdout[:200]!r}"
    return base


def record(verdict: Verdict, ops: list[RegisterOp], out: Path, timeout: float = 60.0) -> LinearizabilityResult:
    """A chaos run's step: save ``register.json``, check it (the visualization of an illegal
    history goes to ``linearizability.html``), and put the result into the verdict. Anything but a
    decided ``ok`` fails the run: a timeout or a missing checker is not a pass."""
    out.mkdir(parents=True, exist_ok=True)
    save(out / "register.json", ops)
    res = check_register(ops, timeout=timeout, html=out / "linearizability.html")
    verdict.linearizability = res.to_json()
    verdict.counts["register_ops"] = res.ops
    verdict.counts["register_ops_checked"] = res.ops_checked
    if res.linearizable is not True:
        verdict.ok = False
        verdict.problems.append(res.describe())
    return res


def save(path: Path, ops: list[RegisterOp]) -> None:
    path.write_text(json.dumps({"version": 1, "ops": [asdict(o) for o in ops]}, indent=1) + "\n")


def load(path: Path) -> list[RegisterOp]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: cannot read a register history ({exc})") from None
    if not isinstance(data, dict) or data.get("version") != 1 or not isinstance(data.get("ops"), list):
        raise ValueError(f"{path}: expected a JSON object with version 1 and a list 'ops'")
    try:
        return [RegisterOp(**o) for o in data["ops"]]
    except TypeError as exc:
        raise ValueError(f"{path}: malformed register op ({exc})") from None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m pgquorum.chaos.linearizability", description="check a register.json with porcupine"
    )
    p.add_argument("register", type=Path, help="register.json of a chaos run")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds per key (then: unknown)")
    p.add_argument("--html", type=Path, default=None, help="porcupine's visualization of an illegal history")
    args = p.parse_args(argv)
    try:
        ops = load(args.register)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    res = check_register(ops, timeout=args.timeout, html=args.html)
    print(json.dumps(res.to_json(), indent=1))
    print(res.describe(), file=sys.stderr)
    return 0 if res.linearizable else 1


if __name__ == "__main__":
    sys.exit(main())
