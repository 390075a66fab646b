"""The build cache outside the checkout, and Go builds into it.

Everything built from source (the porcupine checker, Kubernetes, CoreDNS, Helm, images) lands under
one directory, keyed by version or by the hash of its sources, so a warm machine never rebuilds and a
fresh one builds once: ``PGQUORUM_CACHE``, else ``/opt/pgquorum-cache`` for root (readable by the
unprivileged users our processes drop to), else ``~/.cache/pgquorum``. scripts/setup.sh uses the same.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path


class BuildError(RuntimeError):
    """A build step failed; the message names the step and the last line of its output."""


def cache_dir() -> Path:
    env = os.environ.get("PGQUORUM_CACHE")
    if env:
        return Path(env)
    if os.geteuid() == 0:
        return Path("/opt/pgquorum-cache")
    return Path.home() / ".cache" / "pgquorum"


def find_go() -> str | None:
    found = shutil.which("go")
    if found:
        return found
    for cand in ("/usr/local/go/bin/go", "/usr/lib/go/bin/go"):
        if os.access(cand, os.X_OK):
            return cand
    return None


def go_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for ``go``: GOPROXY etc. from ours; modules resolved on demand; no VCS stamp
    (cache keys are versions or source hashes); static binaries unless the caller says otherwise."""
    env = dict(os.environ)
    env["GOFLAGS"] = f"-mod=mod -buildvcs=false {os.environ.get('GOFLAGS', '')}".strip()
    env.setdefault("CGO_ENABLED", "0")
    env.update(extra or {})
    return env


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """An exclusive flock on ``path`` (created): two processes building the same thing take turns."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def go_build(
    package: str,
    dest: Path,
    *,
    cwd: Path,
    ldflags: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    timeout: float = 1800.0,
) -> None:
    """``go build`` of ``package`` inside module directory ``cwd`` to ``dest``, atomically (a build
    that fails or times out leaves no file behind)."""
    go = find_go()
    if go is None:
        raise BuildError("go is not installed: apt-get install golang-go (or put Go >= 1.24 on PATH)")
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}-", dir=dest.parent)
    os.close(fd)
    argv = [go, "build", "-trimpath", "-o", tmp]
    if ldflags:
        argv += ["-ldflags", " ".join(ldflags)]
    argv.append(package)
    try:
        proc = subprocess.run(argv, cwd=cwd, env=go_env(env), capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0:
            tail = "\n".join((proc.stderr.strip() or proc.stdout.strip() or "?").splitlines()[-5:])
            raise BuildError(f"go build {package} (in {cwd}) failed:\n{tail}")
        os.chmod(tmp, 0o755)
        os.replace(tmp, dest)
    except subprocess.TimeoutExpired:
        raise BuildError(f"go build {package} took longer than {timeout:g} s") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_module(directory: Path, go_mod: str, files: Mapping[str, str] | None = None) -> None:
    """(Re)write a wrapper module: its go.mod and any other files; go.sum is kept (go fills it)."""
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / "go.mod"
    if not target.exists() or target.read_text() != go_mod:
        target.write_text(go_mod)
    for name, text in (files or {}).items():
        (directory / name).write_text(text)
