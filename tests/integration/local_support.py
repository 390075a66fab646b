"""The one way an integration test gets a local cluster (real etcd, real PostgreSQL) and cleans up.

The directory is under /var/tmp, traversable by the unprivileged user that runs PostgreSQL (pytest's
tmp is 0700 and CI runs as root). Cleanup never leaves a process behind a failed test: a stopped
etcd (a test froze it) is resumed first, then ``pgquorum local down`` stops what the cluster
started; the agents' (and Prometheus') log tails are printed for the report.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from pgquorum.local.runner import LocalCluster


@contextlib.contextmanager
def scratch_cluster(prefix: str, tail: int = 30) -> Iterator[LocalCluster]:
    """A ``LocalCluster`` in a fresh directory (not started: the caller brings it up its own way)."""
    base = Path(tempfile.mkdtemp(prefix=prefix, dir="/var/tmp"))
    base.chmod(0o755)
    c = LocalCluster(base / "cluster")
    try:
        yield c
    finally:
        state = None
        with contextlib.suppress(Exception):
            state = c.load()
        if state is not None and state.etcd_pid:
            with contextlib.suppress(OSError):
                os.kill(state.etcd_pid, signal.SIGCONT)
        subprocess.run(
            [sys.executable, "-m", "pgquorum", "local", "down", "--data-dir", str(c.data_dir)],
            capture_output=True,
            timeout=120,
        )
        logs = [*sorted(c.data_dir.glob("*/agent.log")), c.data_dir / "prometheus.log"]
        for log in (p for p in logs if p.exists()):
            print(f"==== {log} (tail)\n" + "\n".join(log.read_text(errors="replace").splitlines()[-tail:]))
        shutil.rmtree(base, ignore_errors=True)
