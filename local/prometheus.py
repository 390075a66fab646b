"""A real Prometheus (Debian's ``/usr/bin/prometheus``) scraping the local cluster's agents and etcd.

It listens on 127.0.0.1 only, scrapes every second (so a failover shows up in the graphs), and keeps
one day of data under its own directory.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType

import yaml

DEFAULT_BINARY = "/usr/bin/prometheus"


class PrometheusError(RuntimeError):
    """Prometheus could not be started (the message holds the end of its log)."""


def scrape_config(targets: list[str], etcd_targets: list[str], interval: str = "1s") -> dict[str, object]:
    """prometheus.yml: the agents' ``/metrics`` (job ``pgquorum``) and etcd's own (job ``etcd``).

    ``interval`` is a Prometheus duration (``1s``, ``500ms``); the scrape timeout equals it (it may not
    be longer)."""
    jobs: list[dict[str, object]] = [
        {"job_name": "pgquorum", "metrics_path": "/metrics", "static_configs": [{"targets": list(targets)}]}
    ]
    if etcd_targets:
        jobs.append(
            {"job_name": "etcd", "metrics_path": "/metrics", "static_configs": [{"targets": list(etcd_targets)}]}
        )
    return {
        "global": {"scrape_interval": interval, "scrape_timeout": interval, "evaluation_interval": "1s"},
        "scrape_configs": jobs,
    }


class PrometheusServer:
    """One Prometheus process; ``targets`` and ``etcd_targets`` are ``host:port`` strings."""

    def __init__(
        self,
        data_dir: Path,
        port: int,
        targets: list[str],
        run_as: str | None = None,
        log_file: Path | None = None,
        etcd_targets: list[str] | None = None,
        binary: str = DEFAULT_BINARY,
        scrape_interval: str = "1s",
        die_with_parent: bool = False,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.port = port
        self.targets = list(targets)
        self.etcd_targets = list(etcd_targets or [])
        self.run_as = run_as
        self.log_file = Path(log_file) if log_file else self.data_dir.with_name(self.data_dir.name + ".log")
        self.binary = binary
        self.scrape_interval = scrape_interval
        # SIGTERM when the starting process dies, even by SIGKILL (a harness killed by a test timeout
        # must not leave it running); util-linux's setpriv sets it after the switch to run_as.
        self.die_with_parent = die_with_parent
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def config_file(self) -> Path:
        return self.data_dir / "prometheus.yml"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def command(self) -> list[str]:
        setpriv = shutil.which("setpriv") if self.die_with_parent else None
        return [
            *([setpriv, "--pdeathsig", "TERM", "--"] if setpriv else []),
            self.binary,
            f"--config.file={self.config_file}",
            f"--storage.tsdb.path={self.data_dir / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--storage.tsdb.retention.time=1d",
        ]

    def write_config(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        (self.data_dir / "data").mkdir(exist_ok=True)
        self.config_file.write_text(
            yaml.safe_dump(scrape_config(self.targets, self.etcd_targets, self.scrape_interval), sort_keys=False)
        )

    def start(self, timeout: float = 30) -> None:
        if self.is_running():
            return
        if not os.access(self.binary, os.X_OK):
            raise PrometheusError(f"{self.binary} not found: apt-get install prometheus (Debian)")
        self.write_config()
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        uid = gid = None
        groups: list[int] = []
        if self.run_as and os.geteuid() == 0:
            entry = pwd.getpwnam(self.run_as)
            uid, gid = entry.pw_uid, entry.pw_gid
            groups = os.getgrouplist(self.run_as, gid)
            for root, dirs, files in os.walk(self.data_dir):
                for item in (root, *(os.path.join(root, n) for n in dirs + files)):
                    os.chown(item, uid, gid)
        with open(self.log_file, "ab") as log:
            self._proc = subprocess.Popen(
                self.command(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                cwd=str(self.data_dir),
                user=uid,
                group=gid,
                extra_groups=None if uid is None else groups,
            )
        deadline = time.monotonic() + timeout
        while True:
            if not self.is_running():
                code = self._proc.returncode
                self._proc = None
                raise PrometheusError(f"prometheus exited with status {code} while starting:\n{self.log_tail()}")
            if self.ready():
                return
            if time.monotonic() > deadline:
                self.stop()
                raise PrometheusError(f"prometheus not ready after {timeout:g}s:\n{self.log_tail()}")
            time.sleep(0.1)

    def ready(self, timeout: float = 1.0) -> bool:
        """``GET /-/ready`` answers 200 (the TSDB is open and the web API serves)."""
        try:
            with urllib.request.urlopen(self.url + "/-/ready", timeout=timeout) as resp:
                return bool(resp.status == 200)
        except (OSError, urllib.error.URLError):
            return False

    def stop(self, timeout: float = 10) -> None:
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._proc = None

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError as exc:
            return f"(no log at {self.log_file}: {exc.strerror})"

    def __enter__(self) -> PrometheusServer:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
