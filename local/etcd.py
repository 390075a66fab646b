"""A real single-node etcd process for the local cluster runner and the integration tests."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT leftovers are fine
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


class EtcdServerError(RuntimeError):
    """etcd could not be started (the message holds the end of its log)."""


class EtcdServer:
    """``etcd`` listening on 127.0.0.1 only; etcd's own heartbeat/election defaults (100 ms / 1 s).

    Leases shorter than etcd's minimum (ceil(1.5 * election timeout) = 2 s with the defaults) are
    rounded up by etcd.
    """

    def __init__(
        self,
        data_dir: Path,
        client_port: int,
        peer_port: int,
        name: str = "etcd0",
        run_as: str | None = None,
        log_file: Path | None = None,
        binary: str = "etcd",
    ) -> None:
        self.data_dir = Path(data_dir)
        self.client_port = client_port
        self.peer_port = peer_port
        self.name = name
        self.run_as = run_as
        self.log_file = Path(log_file) if log_file else self.data_dir.with_name(self.data_dir.name + ".log")
        self.binary = binary
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def client_url(self) -> str:
        return f"http://127.0.0.1:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://127.0.0.1:{self.peer_port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def command(self) -> list[str]:
        exe = shutil.which(self.binary) or self.binary
        return [
            exe,
            f"--name={self.name}",
            f"--data-dir={self.data_dir}",
            f"--listen-client-urls={self.client_url}",
            f"--advertise-client-urls={self.client_url}",
            f"--listen-peer-urls={self.peer_url}",
            f"--initial-advertise-peer-urls={self.peer_url}",
            f"--initial-cluster={self.name}={self.peer_url}",
            "--initial-cluster-state=new",  # ignored when the data dir already holds a member
            "--logger=zap",
            # every agent writes its member key each loop: keep the history from growing without bound
            "--auto-compaction-mode=periodic",
            "--auto-compaction-retention=1h",
        ]

    def start(self, timeout: float = 15) -> None:
        if self.is_running():
            return
        for port in (self.client_port, self.peer_port):  # else /health could answer from another etcd
            if not _port_free(port):
                raise EtcdServerError(f"etcd {self.name}: port 127.0.0.1:{port} is already in use")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.data_dir.chmod(0o700)  # etcd warns about (3.5: refuses) anything looser
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        uid = gid = None
        groups: list[int] = []
        if self.run_as and os.geteuid() == 0:
            entry = pwd.getpwnam(self.run_as)
            uid, gid = entry.pw_uid, entry.pw_gid
            groups = os.getgrouplist(self.run_as, gid)
            for root, dirs, files in os.walk(self.data_dir):
                for item in (root, *(os.path.join(root, n) for n in dirs + files)):
                    os.chown(item, entry.pw_uid, entry.pw_gid)
        env = {k: v for k, v in os.environ.items() if not k.startswith("ETCD")}  # flags only, no surprises
        with open(self.log_file, "ab") as log:
            self._proc = subprocess.Popen(
                self.command(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
                user=uid,
                group=gid,
                extra_groups=None if uid is None else groups,  # the user's groups, not root's
            )
        deadline = time.monotonic() + timeout
        while True:
            if not self.is_running():
                code = self._proc.returncode
                self._proc = None
                raise EtcdServerError(f"etcd exited with status {code} while starting:\n{self.log_tail()}")
            if self.healthy():
                return
            if time.monotonic() > deadline:
                self.stop()
                raise EtcdServerError(f"etcd not healthy after {timeout:g}s:\n{self.log_tail()}")
            time.sleep(0.05)

    def healthy(self, timeout: float = 1.0) -> bool:
        """``GET /health`` answers ``{"health": "true"}``."""
        try:
            with urllib.request.urlopen(self.client_url + "/health", timeout=timeout) as resp:
                return bool(json.loads(resp.read()).get("health") == "true")
        except (OSError, ValueError, urllib.error.URLError):
            return False

    def stop(self, timeout: float = 10) -> None:
        """SIGTERM, then SIGKILL after ``timeout`` seconds."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            if not self.wait_stopped(timeout):
                proc.kill()
                proc.wait()
        self._proc = None

    def kill(self) -> None:
        """SIGKILL at once (crash simulation)."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()
        self._proc = None

    def wait_stopped(self, timeout: float = 10) -> bool:
        """True once the process has exited (within ``timeout`` seconds)."""
        if self._proc is None:
            return True
        try:
            self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return False
        return True

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError as exc:
            return f"(no log at {self.log_file}: {exc.strerror})"

    def __enter__(self) -> EtcdServer:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
