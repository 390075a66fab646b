"""PostgresController: the thin executor that runs one local PostgreSQL. It makes no HA decisions.

Every external call is bounded: SQL through ``Database`` (client-side deadline), binaries through
``process.run`` (killed on timeout), postgres itself through signals with escalation. Postgres is
started as a child process so its exit is known at once (``exited``); a postmaster left by a
previous agent is adopted instead of started twice.

Files: PGDATA holds the cluster plus our generated ``pgquorum.conf`` (included last from
postgresql.conf), ``pg_hba.conf`` and ``pg_ident.conf``. The run directory (default: a sibling
``<PGDATA>.pgquorum``) holds what must survive a re-clone: the postgres log, the pgpass file and,
when the path is short enough, the unix socket.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

import psycopg
from psycopg import sql

from pgquorum.agent.config import PostgresSettings
from pgquorum.agent.model import PostgresState, StandbyReplication, SyncObservation, parse_lsn
from pgquorum.agent.postgres import process
from pgquorum.agent.postgres.conf import (
    CONF_NAME,
    SLOT_PREFIX,
    Upstream,
    conninfo,
    read_standby_names,
    read_upstream,
    render_conf,
    render_hba,
    render_ident,
    render_pgpass,
    scram_verifier,
    slot_name,
    with_include,
)
from pgquorum.agent.postgres.db import Conn, Database
from pgquorum.agent.postgres.errors import PostgresError, PostgresTimeout
from pgquorum.agent.postgres.process import OsUser
from pgquorum.agent.postgres.status import PROBE_SQL, ControlData, parse_controldata, parse_probe
from pgquorum.agent.quorum.sync import parse_standby_names

__all__ = ["PostgresController", "PostgresError", "PostgresTimeout", "Upstream", "slot_name"]

log = logging.getLogger(__name__)

StopMode = Literal["smart", "fast", "immediate"]
_STOP_SIGNALS = {"smart": signal.SIGTERM, "fast": signal.SIGINT, "immediate": signal.SIGQUIT}
_LOG_ROTATE_BYTES = 64 * 1024 * 1024
# Never wiped even if configured as PGDATA by mistake.
_NEVER_WIPE = frozenset(
    Path(p)
    for p in [
        "/",
        "/bin",
        "/boot",
        "/dev",
        "/etc",
        "/home",
        "/lib",
        "/opt",
        "/proc",
        "/root",
        "/run",
        "/srv",
        "/sys",
        "/tmp",
        "/usr",
        "/var",
        "/var/lib",
        "/var/tmp",
        "/var/lib/postgresql",
    ]
)
_SHM_BUSY = "pre-existing shared memory block"  # orphaned backends of a killed postmaster still attached


class PostgresController:
    """Runs one PostgreSQL data directory. Thread-safe; ``state()`` and ``fence()`` never wait for
    another operation (they take no lock), everything else is serialized."""

    def __init__(
        self,
        settings: PostgresSettings,
        member_name: str,
        *,
        run_dir: Path | None = None,
        probe_timeout: float = 1.0,
    ):
        self.settings = settings
        self.member_name = member_name
        self.data_dir = Path(os.path.abspath(settings.data_dir))
        default_run_dir = self.data_dir.with_name(self.data_dir.name + ".pgquorum")
        self.run_dir = Path(os.path.abspath(run_dir or default_run_dir))
        if self.run_dir == self.data_dir or self.data_dir in self.run_dir.parents:
            raise PostgresError(f"run directory {self.run_dir} must be outside PGDATA {self.data_dir}")
        self.user = OsUser.resolve(settings.run_as)
        self.socket_dir = self._pick_socket_dir()
        self.log_file = self.run_dir / "postgresql.log"
        self.passfile = self.run_dir / "pgpass"
        self.probe_timeout = probe_timeout
        # Set while no postmaster we started or adopted is alive. Cleared by start(), and by state()
        # when it finds a postmaster left by a previous agent (which it then watches).
        self.exited = threading.Event()
        self.exited.set()
        self.exit_code: int | None = None  # of our own child; None for an adopted postmaster
        self._proc: subprocess.Popen[bytes] | None = None
        self._pid: int | None = None
        self._generation = 0
        self._track_lock = threading.Lock()
        self._op_lock = threading.RLock()
        self._passwords: dict[str, str] = {}
        self._log_offset = 0
        self._warned_ignored = False
        local: dict[str, str | int | None] = {
            "host": str(self.socket_dir),
            "port": settings.port,
            "user": settings.superuser,
            "dbname": "postgres",
            "application_name": "pgquorum",
            "connect_timeout": 3,  # a safety net only: Database enforces the real deadline
        }
        self._db = Database(
            conninfo(
                {
                    **local,
                    # local commit: the agent's own writes never wait for a quorum that may be gone
                    "options": "-c statement_timeout=30s -c lock_timeout=5s -c synchronous_commit=local",
                }
            ),
            what=f"postgres of {member_name}",
        )
        # Quorum commit: what we write into pgquorum.conf (see set_standby_names), and when the
        # value in force was first observed, keyed by (value, postmaster pid, timeline).
        self._standby_names = self._read_standby_names()
        self._sync_seen: tuple[str, int | None, str | None] | None = None
        self._sync_change_lsn: int | None = None
        # A physical replication session to ourselves: IDENTIFY_SYSTEM on a standby names the
        # timeline it has replayed, the only exact source once the WAL receiver is gone.
        self._replication_conninfo = conninfo({**local, "replication": "true"})

    # -- paths and small helpers ------------------------------------------------------------
    def _bin(self, name: str) -> str:
        return str(self.settings.bin_dir / name)

    def _pick_socket_dir(self) -> Path:
        # A unix socket path holds at most 107 bytes: "<dir>/.s.PGSQL.<port>.lock" must fit.
        if len(str(self.run_dir).encode()) + 25 <= 100:
            return self.run_dir
        digest = hashlib.sha256(str(self.data_dir).encode()).hexdigest()[:12]
        return Path(tempfile.gettempdir()) / f"pgquorum-{digest}"

    def _initialized(self) -> bool:
        return (self.data_dir / "PG_VERSION").exists()

    def _ensure_dirs(self) -> None:
        process.make_dir(self.run_dir, self.user)
        process.make_dir(self.socket_dir, self.user)

    def _password(self, kind: Literal["superuser", "replication"]) -> str | None:
        if kind in self._passwords:
            return self._passwords[kind]
        s = self.settings
        path = s.superuser_password_file if kind == "superuser" else s.replication_password_file
        if path is None:
            return None
        try:
            value = Path(path).read_text().strip()
        except OSError as exc:
            raise PostgresError(f"cannot read the {kind} password file {path}: {exc.strerror}") from None
        if not value:
            raise PostgresError(f"the {kind} password file {path} is empty")
        return value

    def _write_pgpass(self, need: Iterable[Literal["superuser", "replication"]] = ()) -> None:
        entries = []
        kinds: tuple[tuple[Literal["superuser", "replication"], str], ...] = (
            ("superuser", self.settings.superuser),
            ("replication", self.settings.replication_user),
        )
        for kind, user in kinds:
            password = self._password(kind)
            if password is not None:
                entries.append((user, password))
            elif kind in need:
                field = f"postgres.{kind}_password_file"
                raise PostgresError(f"the {kind} password is unknown: set {field}")
        process.write_file(self.passfile, render_pgpass(entries), self.user, 0o600)

    def control_data(self, timeout: float = 5.0) -> ControlData:
        """pg_controldata's view (works with postgres stopped): e.g. the shutdown checkpoint's LSN."""
        return self._controldata(timeout)

    def _controldata(self, timeout: float) -> ControlData:
        res = process.run([self._bin("pg_controldata"), "-D", str(self.data_dir)], self.user, timeout)
        if res.returncode != 0:
            raise PostgresError(f"pg_controldata failed on {self.data_dir}:\n{res.tail()}")
        return parse_controldata(res.output)

    def log_tail(self, lines: int = 20) -> str:
        """The last lines the postgres server wrote since it was last started by us."""
        try:
            with open(self.log_file, "rb") as f:
                size = f.seek(0, os.SEEK_END)
                start = self._log_offset if self._log_offset <= size else 0
                f.seek(max(start, size - 64 * 1024))
                return process.tail_text(f.read().decode(errors="replace"), lines)
        except OSError:
            return "(no postgres log)"

    def configured_upstream(self) -> Upstream | None:
        """The upstream in our generated config (None: written for a primary, or not written)."""
        try:
            return read_upstream((self.data_dir / CONF_NAME).read_text())
        except OSError:
            return None

    def _is_standby_configured(self) -> bool:
        return (self.data_dir / "standby.signal").exists()

    # -- process tracking --------------------------------------------------------------------
    def postmaster_pid(self) -> int | None:
        """The pid of the live postmaster of this data directory, or None."""
        proc = self._proc
        if proc is not None and proc.returncode is None and process.pid_alive(proc.pid):
            return proc.pid  # our child: its pid cannot be reused before we reap it
        try:
            lines = (self.data_dir / "postmaster.pid").read_text().splitlines()
            pid = int(lines[0])
            started = float(lines[2]) if len(lines) > 2 else None
        except (OSError, ValueError, IndexError):
            return None
        return pid if process.is_postmaster_of(pid, self.data_dir, started) else None

    def _track(self, pid: int, proc: subprocess.Popen[bytes] | None) -> None:
        with self._track_lock:
            self._generation += 1
            generation = self._generation
            self._proc, self._pid, self.exit_code = proc, pid, None
            self.exited.clear()
        threading.Thread(
            target=self._watch, args=(generation, pid, proc), name=f"postmaster-{pid}", daemon=True
        ).start()

    def _adopt(self, pid: int) -> None:
        with self._track_lock:
            if pid == self._pid and not self.exited.is_set():
                return
        log.info("adopting the running postmaster %s", pid)
        self._track(pid, None)

    def _watch(self, generation: int, pid: int, proc: subprocess.Popen[bytes] | None) -> None:
        code: int | None = None
        if proc is not None:
            code = proc.wait()
        else:
            process.wait_exit(pid)
        with self._track_lock:
            if generation == self._generation:
                self.exit_code = code
                self.exited.set()
        log.info("postmaster %s exited (code %s)", pid, code)

    def wait_exit(self, timeout: float | None = None) -> bool:
        """Block until the postmaster we started or adopted exits; True if it has (or none runs)."""
        return self.exited.wait(timeout)

    def _wait_gone(self, pid: int, timeout: float) -> bool:
        if pid == self._pid and not self.exited.is_set():
            return self.exited.wait(timeout) or not process.pid_alive(pid)
        return process.wait_gone(pid, timeout)

    # -- state -------------------------------------------------------------------------------
    def state(self, timeout: float | None = None) -> PostgresState:
        """What the local postgres looks like now. Never raises; bounded by about ``timeout`` seconds."""
        budget = self.probe_timeout if timeout is None else timeout
        try:
            return self._state(budget)
        except Exception as exc:  # the agent's eyes: degrade to what we know, never crash the loop
            log.warning("reading the postgres state failed: %s", exc)
            try:
                pid = self.postmaster_pid()
                return PostgresState(data_initialized=self._initialized(), running=pid is not None, pid=pid)
            except Exception:
                return PostgresState(data_initialized=False, running=False)

    def _state(self, budget: float) -> PostgresState:
        deadline = time.monotonic() + budget
        initialized = self._initialized()
        pid = self.postmaster_pid()
        if pid is not None and (pid != self._pid or self.exited.is_set()):
            self._adopt(pid)
        configured = self.configured_upstream()
        upstream_name = configured.name if configured else None
        if pid is None:
            if not initialized:
                return PostgresState(data_initialized=False, running=False)
            cd = self._controldata_quiet(max(0.5, budget))
            return PostgresState(
                data_initialized=True,
                running=False,
                timeline=cd.best_timeline,
                system_id=cd.system_id,
                was_primary=cd.was_primary,
                upstream=upstream_name if self._is_standby_configured() else None,
            )
        try:
            row = self._db.query(PROBE_SQL, timeout=budget)[0]
        except PostgresError as exc:
            # Starting, not yet consistent, or hung: pg_control still tells the identity and last role.
            log.debug("postgres not accepting connections: %s", exc)
            cd = self._controldata_quiet(max(0.3, deadline - time.monotonic()))
            return PostgresState(
                data_initialized=initialized,
                running=True,
                accepting_connections=False,
                timeline=cd.best_timeline,
                system_id=cd.system_id,
                was_primary=cd.was_primary,
                upstream=upstream_name if self._is_standby_configured() else None,
                pid=pid,
            )
        p = parse_probe(row)
        standby = p.in_recovery
        if standby and not p.receiver_timeline:
            p = replace(p, timeline=self._replayed_timeline(deadline - time.monotonic()) or p.timeline)
        return PostgresState(
            data_initialized=True,
            running=True,
            accepting_connections=True,
            in_recovery=p.in_recovery,
            timeline=p.timeline,
            system_id=p.system_id,
            wal_lsn=None if standby else p.wal_lsn,
            received_lsn=p.received_lsn if standby else None,
            replayed_lsn=p.replayed_lsn if standby else None,
            upstream=upstream_name if standby else None,
            streaming=p.streaming,
            replay_lag_seconds=p.replay_lag_seconds if standby else None,
            was_primary=not standby,
            pid=pid,
        )

    def _replayed_timeline(self, budget: float) -> int | None:
        """The timeline a standby has replayed. pg_control's checkpoint timeline lags until the
        next restartpoint, so right after a failover (when the WAL receiver dies with the leader)
        it would make every replica look a timeline behind and ineligible."""
        try:
            rows = self._db.query("IDENTIFY_SYSTEM", timeout=max(0.2, budget), conninfo=self._replication_conninfo)
            return int(rows[0][1]) if rows else None
        except (PostgresError, ValueError, TypeError) as exc:
            log.debug("IDENTIFY_SYSTEM on the local standby failed: %s", exc)
            return None

    def _controldata_quiet(self, timeout: float) -> ControlData:
        try:
            return self._controldata(timeout)
        except PostgresError as exc:
            log.warning("%s", exc)
            return ControlData()

    # -- configuration -----------------------------------------------------------------------
    def write_config(self, upstream: Upstream | None) -> None:
        """Write pgquorum.conf / pg_hba.conf / pg_ident.conf / pgpass; ``upstream`` sets primary_conninfo.

        Touches no signal file: a standby stays a standby (use ``prepare_standby`` to make one). A
        running postgres only sees the change after ``reload()`` or a restart.
        """
        with self._op_lock:
            main_conf = self.data_dir / "postgresql.conf"
            if not main_conf.exists():
                raise PostgresError(f"no postgresql.conf in {self.data_dir}: bootstrap or clone first")
            self._ensure_dirs()
            self._write_pgpass(need=("replication",) if upstream is not None else ())
            me, sock = self.member_name, self.socket_dir
            text, ignored = render_conf(self.settings, me, sock, self.passfile, upstream, self._standby_names)
            if ignored and not self._warned_ignored:
                self._warned_ignored = True
                log.warning("postgres.parameters: ignoring %s (managed by pgquorum)", ", ".join(ignored))
            process.write_file(self.data_dir / CONF_NAME, text, self.user)
            process.write_file(self.data_dir / "pg_hba.conf", render_hba(self.settings), self.user)
            ident = render_ident(self.user.agent_user, self.user.name, self.settings.superuser)
            process.write_file(self.data_dir / "pg_ident.conf", ident, self.user)
            included = with_include(main_conf.read_text())
            if included is not None:
                process.write_file(main_conf, included, self.user)

    def prepare_standby(self, upstream: Upstream | None) -> None:
        """Config for ``upstream`` plus standby.signal: the next start runs as a standby (no start here).

        Clears ``synchronous_standby_names``: a standby must not carry a primary's quorum into its
        next promotion; the leader sets it again right before promoting (``set_standby_names``).
        """
        with self._op_lock:
            self._standby_names = ""
            self.write_config(upstream)
            process.write_file(self.data_dir / "standby.signal", "", self.user)

    def reload(self) -> None:
        """SIGHUP the postmaster (no connection needed, so it works on a standby still recovering)."""
        pid = self.postmaster_pid()
        if pid is not None:
            process.send_signal(pid, signal.SIGHUP)

    # -- lifecycle ---------------------------------------------------------------------------
    def bootstrap(
        self,
        superuser_password: str | None = None,
        replication_password: str | None = None,
        timeout: float = 60.0,
    ) -> None:
        """initdb a new cluster, start it as primary, set the superuser password, create the replication role.

        Passwords default to the configured password files. Refuses a data directory that is not empty.
        """
        with self._op_lock:
            deadline = time.monotonic() + timeout
            if self._initialized() or self.postmaster_pid() is not None:
                raise PostgresError(f"bootstrap: {self.data_dir} already holds a cluster")
            self._require_empty_data_dir("bootstrap")
            su_pw = superuser_password or self._password("superuser")
            repl_pw = replication_password or self._password("replication")
            if not su_pw or not repl_pw:
                raise PostgresError(
                    "bootstrap needs the superuser and replication passwords "
                    "(postgres.superuser_password_file / replication_password_file)"
                )
            # Remembered only where no password file exists (a file stays the source of truth).
            if self.settings.superuser_password_file is None:
                self._passwords["superuser"] = su_pw
            if self.settings.replication_password_file is None:
                self._passwords["replication"] = repl_pw
            self._ensure_dirs()
            process.make_dir(self.data_dir, self.user)
            cmd = [
                self._bin("initdb"),
                "-D",
                str(self.data_dir),
                "-U",
                self.settings.superuser,
                "--encoding=UTF8",
                "--no-locale",
                "--auth-local=peer",
                "--auth-host=scram-sha-256",
            ]
            started = time.monotonic()
            try:
                res = process.run(cmd, self.user, _left(deadline))
            except PostgresError:
                self._wipe_data_dir()
                raise
            if res.returncode != 0:
                self._wipe_data_dir()
                raise PostgresError(f"initdb failed in {self.data_dir}:\n{res.tail()}")
            log.info("initdb done in %.2fs", time.monotonic() - started)
            self.write_config(None)
            if not self.start(timeout=_left(deadline)):
                tail = self.log_tail()
                raise PostgresError(f"bootstrap: postgres did not accept connections in time; log:\n{tail}")
            self._set_passwords(su_pw, repl_pw, max(1.0, _left(deadline)))

    def _set_passwords(self, su_pw: str, repl_pw: str, timeout: float) -> None:
        su, repl = self.settings.superuser, self.settings.replication_user

        def secret(pw: str) -> sql.Composable:
            # A SCRAM verifier is stored as is: the clear password never reaches the server.
            return sql.Literal(scram_verifier(pw) or pw)

        async def fn(conn: Conn) -> None:
            async with conn.transaction():
                # Should the clear-text fallback be used, keep it out of the server log.
                await conn.execute("SET LOCAL log_statement = 'none'")
                await conn.execute("SET LOCAL log_min_error_statement = 'panic'")
                await conn.execute("SET LOCAL log_min_duration_statement = -1")
                alter = sql.SQL("ALTER ROLE {} WITH PASSWORD {}")
                await conn.execute(alter.format(sql.Identifier(su), secret(su_pw)))
                cur = await conn.execute("SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = %s", [repl])
                verb = "ALTER" if await cur.fetchone() else "CREATE"
                await conn.execute(
                    sql.SQL(verb + " ROLE {} WITH LOGIN REPLICATION PASSWORD {}").format(
                        sql.Identifier(repl), secret(repl_pw)
                    )
                )

        self._db.run(fn, timeout)

    def start(self, timeout: float = 30.0) -> bool:
        """Start postgres as our child (or adopt a running postmaster) and wait until it accepts connections.

        True: accepting connections. False: still running but not accepting within ``timeout``
        (a standby replaying, say). Raises PostgresError if it exits during start-up (with the log tail).
        The config is rewritten first (settings may have changed), keeping the role and upstream.
        """
        with self._op_lock:
            deadline = time.monotonic() + timeout
            if not self._initialized():
                raise PostgresError(f"cannot start: {self.data_dir} holds no cluster (bootstrap or clone)")
            pid = self.postmaster_pid()
            if pid is not None:
                if pid != self._pid or self.exited.is_set():
                    self._adopt(pid)
                return self._wait_ready(deadline, respawn=False)
            self.write_config(self.configured_upstream())
            # Left by a killed postmaster; postgres itself would refuse to start if the pid in it
            # now belongs to another process of the postgres user (pid reuse in containers). The
            # socket's lock file likewise: our socket directory is ours alone, and on Kubernetes it
            # sits on the volume, so a pod force-deleted left one naming a pid that in the new
            # container is one of the agent's own threads (measured: the recreated member could
            # never start postgres again).
            for stale in (self.data_dir / "postmaster.pid", self.socket_dir / f".s.PGSQL.{self.settings.port}.lock"):
                with contextlib.suppress(FileNotFoundError):
                    stale.unlink()
            self._spawn()
            return self._wait_ready(deadline, respawn=True)

    def _spawn(self) -> None:
        self._ensure_dirs()
        with contextlib.suppress(OSError):
            if self.log_file.stat().st_size > _LOG_ROTATE_BYTES:
                os.replace(self.log_file, self.log_file.with_name(self.log_file.name + ".1"))
        fd = os.open(self.log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
        try:
            if self.user.switch:
                os.fchown(fd, self.user.uid, self.user.gid)
            self._log_offset = os.fstat(fd).st_size
            proc = subprocess.Popen(
                [self._bin("postgres"), "-D", str(self.data_dir)],
                stdin=subprocess.DEVNULL,
                stdout=fd,
                stderr=subprocess.STDOUT,
                cwd=str(self.data_dir),
                env=self.user.env(),
                start_new_session=True,  # a Ctrl-C / SIGTERM to the agent's group must not reach postgres
                **self.user.popen_kwargs(),
            )
        except OSError as exc:
            raise PostgresError(f"cannot start postgres: {exc}") from None
        finally:
            os.close(fd)
        log.info("started postgres (pid %s) on port %s", proc.pid, self.settings.port)
        self._track(proc.pid, proc)

    def _wait_ready(self, deadline: float, respawn: bool) -> bool:
        while True:
            if self.exited.is_set():
                tail = self.log_tail()
                if respawn and _SHM_BUSY in tail and time.monotonic() + 0.3 < deadline:
                    # Backends of a SIGKILLed postmaster detach within moments: try again.
                    time.sleep(0.2)
                    self._spawn()
                    continue
                raise PostgresError(f"postgres exited (code {self.exit_code}) while starting; log:\n{tail}")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                log.warning("postgres is running but not accepting connections yet")
                return False
            try:
                self._db.query("SELECT 1", timeout=min(1.0, remaining))
                return True
            except PostgresError:
                self.exited.wait(min(0.05, max(0.0, deadline - time.monotonic())))

    def stop(self, mode: StopMode = "fast", timeout: float | None = None) -> bool:
        """Stop postgres: ``mode`` shutdown, then immediate (1 s), then SIGKILL of postmaster and backends.

        True when it stopped in the requested mode, False when it had to escalate (after an immediate
        shutdown or a kill, a primary needs crash recovery: ``rewind`` does it).
        """
        with self._op_lock:
            timeout = self.settings.stop_timeout if timeout is None else timeout
            pid = self.postmaster_pid()
            if pid is None:
                return True
            log.info("stopping postgres (pid %s, %s)", pid, mode)
            process.send_signal(pid, _STOP_SIGNALS[mode])
            if self._wait_gone(pid, timeout):
                return True
            if mode != "immediate":
                log.warning("postgres did not stop within %.1fs (%s): immediate shutdown", timeout, mode)
                process.send_signal(pid, signal.SIGQUIT)
                if self._wait_gone(pid, 1.0):
                    return False
            log.error("postgres did not stop: killing the postmaster and its backends")
            process.kill_tree(pid)
            if not self._wait_gone(pid, 2.0):
                raise PostgresError(f"postgres (pid {pid}) survived SIGKILL (stuck in the kernel?)")
            return False

    def fence(self) -> float:
        """Stop accepting writes as fast as possible; returns the seconds it took.

        SIGQUIT (immediate shutdown: the postmaster SIGQUITs every backend at once); if the postmaster
        has not exited after 0.5 s (stopped, wedged), SIGKILL it and every backend. Takes no lock, so
        it never waits behind another operation. Crash recovery is needed before the next start.
        """
        started = time.monotonic()
        pid = self.postmaster_pid()
        if pid is None:
            return time.monotonic() - started
        process.send_signal(pid, signal.SIGQUIT)
        if not self._wait_gone(pid, 0.5):
            # The postmaster exits after its backends on SIGQUIT, but not on SIGKILL: wait for the
            # backends too, or one may still be finishing a commit when fence() returns.
            kids = process.children_of(pid)
            process.kill_tree(pid, kids)
            deadline = time.monotonic() + 1.0
            if not self._wait_gone(pid, 1.0):
                log.error("fence: postgres (pid %s) survived SIGKILL", pid)
            for kid in kids:
                if not process.wait_gone(kid, max(0.0, deadline - time.monotonic())):
                    log.error("fence: postgres backend (pid %s) survived SIGKILL", kid)
        elapsed = time.monotonic() - started
        log.warning("fenced postgres (pid %s) in %.3fs", pid, elapsed)
        return elapsed

    def promote(self, timeout: float = 30.0) -> bool:
        """Promote a running standby; True once it accepts writes (already a primary: True at once).

        Uses the promote signal file + SIGUSR1 (what pg_ctl promote does): no connection needed, so it
        also works before hot standby accepts connections.
        """
        with self._op_lock:
            deadline = time.monotonic() + timeout
            pid = self.postmaster_pid()
            if pid is None:
                raise PostgresError("cannot promote: postgres is not running")
            if self._in_recovery(min(1.0, timeout)) is False:
                return True
            process.write_file(self.data_dir / "promote", "", self.user)
            process.send_signal(pid, signal.SIGUSR1)
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    log.error("promotion did not finish within %.1fs", timeout)
                    return False
                if self._in_recovery(min(1.0, remaining)) is False:
                    break
                if self.postmaster_pid() is None:
                    raise PostgresError(f"postgres exited while promoting; log:\n{self.log_tail()}")
                time.sleep(0.01)
            try:  # a later restart must not find primary_conninfo of a former upstream
                self.write_config(None)
                self.reload()
            except PostgresError as exc:
                log.warning("promoted, but rewriting the config failed: %s", exc)
            return True

    def _last_ran_as_primary(self) -> bool:
        return self._controldata(5.0).was_primary

    def _in_recovery(self, timeout: float) -> bool | None:
        try:
            return bool(self._db.query("SELECT pg_catalog.pg_is_in_recovery()", timeout=timeout)[0][0])
        except PostgresError:
            return None

    def follow(self, upstream: Upstream | None) -> None:
        """Point a standby at ``upstream`` (None: no upstream) and reload; PG 15 applies it without restart.

        Refuses a running primary (``demote`` it) and a stopped cluster that last ran as a primary
        (``rewind`` it): either could hold WAL the new upstream does not have.
        """
        with self._op_lock:
            pid = self.postmaster_pid()
            if pid is not None:
                in_recovery = self._in_recovery(self.probe_timeout)
                if in_recovery is False or (in_recovery is None and not self._is_standby_configured()):
                    raise PostgresError("follow: postgres runs as a primary; demote() it instead")
            elif self._initialized() and not self._is_standby_configured() and self._last_ran_as_primary():
                raise PostgresError("follow: the stopped cluster last ran as a primary; rewind() it instead")
            self.prepare_standby(upstream)
            if pid is not None:
                process.send_signal(pid, signal.SIGHUP)
            log.info("following %s", upstream.name if upstream else "nobody")

    def demote(self, upstream: Upstream | None, timeout: float = 60.0) -> bool:
        """Stop (fast, escalating), restart as a standby of ``upstream``; the result of ``start``.

        Safe for a primary whose standby has everything (switchover: fast shutdown waits for the
        WAL senders). After a crash or fence use ``rewind`` instead.
        """
        with self._op_lock:
            deadline = time.monotonic() + timeout
            self.stop("fast", timeout=min(self.settings.stop_timeout, timeout))
            self.prepare_standby(upstream)
            return self.start(timeout=max(1.0, _left(deadline)))

    def clone(self, upstream: Upstream, timeout: float = 600.0) -> None:
        """pg_basebackup from ``upstream`` into an empty/absent data directory, then standby config.

        Does not start postgres. On failure the partial copy is removed.
        """
        with self._op_lock:
            if self.postmaster_pid() is not None:
                raise PostgresError(f"clone: postgres is running in {self.data_dir}; stop it first")
            self._require_empty_data_dir("clone")
            self._ensure_dirs()
            process.make_dir(self.data_dir, self.user)
            self._write_pgpass(need=("replication",))
            source = conninfo(
                {
                    "host": upstream.host,
                    "port": upstream.port,
                    "user": self.settings.replication_user,
                    "passfile": str(self.passfile),
                    "connect_timeout": 5,
                    "application_name": f"pgquorum-clone-{self.member_name}",
                }
            )
            cmd = [
                self._bin("pg_basebackup"),
                "-D",
                str(self.data_dir),
                "-d",
                source,
                "--wal-method=stream",
                "--checkpoint=fast",
                "--no-password",
                f"--label=pgquorum clone of {upstream.name}",
            ]
            started = time.monotonic()
            try:
                res = process.run(cmd, self.user, timeout)
            except PostgresError:
                self._wipe_data_dir()
                raise
            if res.returncode != 0:
                self._wipe_data_dir()
                where = f"{upstream.name} at {upstream.host}:{upstream.port}"
                raise PostgresError(f"pg_basebackup from {where} failed:\n{res.tail()}")
            log.info("cloned from %s in %.2fs", upstream.name, time.monotonic() - started)
            self.prepare_standby(upstream)

    def rewind(self, upstream: Upstream, timeout: float = 300.0) -> bool:
        """Make a former primary (or a diverged standby) a standby of ``upstream`` with pg_rewind.

        Stops postgres if running; a cluster not shut down cleanly first gets crash recovery in
        single-user mode. True: rewound (or nothing to rewind), standby config written, not started.
        False: rewind impossible (no common history, WAL gone, different system, failed half-way):
        the caller re-clones (``reinitialize``). Raises PostgresError when the source is unreachable.
        """
        with self._op_lock:
            deadline = time.monotonic() + timeout
            if not self._initialized():
                log.error("rewind: %s holds no cluster", self.data_dir)
                return False
            self.stop("fast", timeout=min(self.settings.stop_timeout, timeout))
            # Single-user mode refuses to run with standby.signal present.
            for name in ("standby.signal", "recovery.signal"):
                with contextlib.suppress(FileNotFoundError):
                    (self.data_dir / name).unlink()
            try:
                return self._rewind(upstream, deadline)
            finally:
                # Whatever happened, a node asked to rejoin must never come back up as a primary.
                if not (self.data_dir / "standby.signal").exists():
                    with contextlib.suppress(PostgresError, OSError):
                        self.prepare_standby(upstream)

    def _rewind(self, upstream: Upstream, deadline: float) -> bool:
        """Crash recovery if needed, then pg_rewind; see ``rewind``."""
        cd = self._controldata(min(10.0, _left(deadline)))
        if not cd.clean_shutdown:
            self._crash_recovery(deadline, cd.cluster_state)
        self._write_pgpass(need=("superuser",))
        source = conninfo(
            {
                "host": upstream.host,
                "port": upstream.port,
                "user": self.settings.superuser,
                "dbname": "postgres",
                "passfile": str(self.passfile),
                "connect_timeout": 5,
                "application_name": f"pgquorum-rewind-{self.member_name}",
            }
        )
        self._checkpoint_source(source, min(60.0, _left(deadline)))
        started = time.monotonic()
        cmd = [self._bin("pg_rewind"), "--target-pgdata", str(self.data_dir), "--source-server", source]
        res = process.run(cmd, self.user, max(1.0, _left(deadline)))
        if res.returncode != 0:
            out = res.output.lower()
            if "could not connect" in out or "connection to server" in out:
                raise PostgresError(f"pg_rewind could not reach {upstream.name}:\n{res.tail()}")
            log.error("pg_rewind from %s failed; a re-clone is needed:\n%s", upstream.name, res.tail())
            return False
        took = time.monotonic() - started
        log.info("pg_rewind from %s done in %.2fs: %s", upstream.name, took, res.tail(1))
        self.prepare_standby(upstream)
        return True

    def _crash_recovery(self, deadline: float, cluster_state: str | None) -> None:
        log.warning("cluster state is %r: crash recovery in single-user mode before pg_rewind", cluster_state)
        cmd = [self._bin("postgres"), "--single", "-D", str(self.data_dir), "template1"]
        while True:
            res = process.run(cmd, self.user, max(1.0, _left(deadline)))
            if res.returncode == 0:
                break
            if _SHM_BUSY in res.output and _left(deadline) > 0.5:
                time.sleep(0.2)
                continue
            raise PostgresError(f"crash recovery (single-user mode) failed:\n{res.tail()}")
        cd = self._controldata(min(10.0, max(1.0, _left(deadline))))
        if not cd.clean_shutdown:
            raise PostgresError(f"after crash recovery the cluster state is still {cd.cluster_state!r}")

    def member_received_lsn(self, member: Upstream, timeout: float = 1.0) -> int | None:
        """Another member's fresh WAL position, straight from its postgres (used by switchover to see
        that the candidate has our shutdown checkpoint; its REST API only knows its last loop)."""
        self._write_pgpass(need=("superuser",))
        target = conninfo(
            {
                "host": member.host,
                "port": member.port,
                "user": self.settings.superuser,
                "dbname": "postgres",
                "passfile": str(self.passfile),
                "connect_timeout": 2,
                "application_name": f"pgquorum-{self.member_name}",
            }
        )

        async def fn(conn: Conn) -> int | None:
            cur = await conn.execute(
                "SELECT pg_catalog.pg_last_wal_receive_lsn()::text, pg_catalog.pg_last_wal_replay_lsn()::text"
            )
            row = await cur.fetchone()
            if row is None:
                return None
            values = [parse_lsn(v) for v in row if v]
            return max((v for v in values if v is not None), default=None)

        return self._db.run(fn, timeout, conninfo=target)

    def _checkpoint_source(self, source: str, timeout: float) -> None:
        """pg_rewind (PG 15) reads the source's timeline from its last checkpoint: right after a
        promotion that still shows the old timeline and pg_rewind wrongly finds nothing to do."""

        async def fn(conn: Conn) -> None:
            cur = await conn.execute(
                "SELECT pg_catalog.pg_is_in_recovery(), "
                "(SELECT timeline_id FROM pg_catalog.pg_control_checkpoint()), "
                "CASE WHEN pg_catalog.pg_is_in_recovery() THEN NULL "
                "ELSE pg_catalog.pg_walfile_name(pg_catalog.pg_current_wal_lsn()) END"
            )
            row = await cur.fetchone()
            if row is None:
                return
            in_recovery, checkpoint_tli, walfile = row
            if not in_recovery and walfile and int(str(walfile)[:8], 16) != checkpoint_tli:
                log.info("checkpoint on the source so that its pg_control shows the new timeline")
                await conn.execute("CHECKPOINT")

        try:
            self._db.run(fn, timeout, conninfo=source)
        except PostgresError as exc:
            raise PostgresError(f"pg_rewind source: {exc}") from None

    def reinitialize(self, upstream: Upstream, timeout: float = 600.0) -> None:
        """Stop postgres, delete what is inside PGDATA (nothing else), clone from ``upstream``."""
        with self._op_lock:
            deadline = time.monotonic() + timeout
            self.stop("immediate", timeout=min(self.settings.stop_timeout, timeout))
            self._wipe_data_dir()
            self.clone(upstream, timeout=max(1.0, _left(deadline)))

    def _require_empty_data_dir(self, what: str) -> None:
        if self.data_dir.exists() and any(self.data_dir.iterdir()):
            raise PostgresError(
                f"{what}: {self.data_dir} is not empty; reinitialize() wipes it (if the data is disposable)"
            )

    def _wipe_data_dir(self) -> None:
        """Delete what is inside PGDATA. The directory itself stays (it may be a mount point)."""
        d = self.data_dir
        if len(d.parts) < 2 or d in _NEVER_WIPE or d in (Path.home(), Path(self.user.home)):
            raise PostgresError(f"refusing to wipe {d}: does not look like a dedicated data directory")
        if not d.exists():
            return
        log.warning("wiping the data directory %s", d)
        for entry in os.scandir(d):
            path = Path(entry.path)
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(path)
            else:
                path.unlink()

    # -- quorum commit -----------------------------------------------------------------------
    # synchronous_standby_names lives in our generated pgquorum.conf, not in postgresql.auto.conf
    # (ALTER SYSTEM): writing the file needs no connection, so it can be set on a standby right
    # before its promotion; it survives restarts with the file; and the file is regenerated at
    # every role change, so prepare_standby() clears it for every replica start and after every
    # demotion, rewind or clone, while pg_basebackup/pg_rewind would copy a primary's auto.conf.
    def _read_standby_names(self) -> str:
        try:
            return read_standby_names((self.data_dir / CONF_NAME).read_text())
        except OSError:
            return ""

    @property
    def standby_names(self) -> str:
        """The ``synchronous_standby_names`` our generated config holds."""
        return self._standby_names

    def set_standby_names(self, value: str, timeout: float = 3.0) -> None:
        """Write ``synchronous_standby_names`` into pgquorum.conf, reload, and wait until it is in force.

        Raises PostgresError if postgres does not show the value within ``timeout`` (e.g. an
        ``ALTER SYSTEM`` setting overrides our file): a transition counts only once it applies.
        """
        wanted = parse_standby_names(value)
        with self._op_lock:
            deadline = time.monotonic() + timeout
            if value != self._standby_names:
                self._standby_names = value
                self.write_config(self.configured_upstream())
                self.reload()
            if self.postmaster_pid() is None:
                return  # applies at the next start (the file is what start() uses)
            shown: str | None = None
            while True:
                try:
                    rows = self._db.query(
                        "SELECT pg_catalog.current_setting('synchronous_standby_names')",
                        timeout=max(0.2, min(1.0, _left(deadline))),
                    )
                    shown = str(rows[0][0])
                except PostgresError as exc:
                    if _left(deadline) <= 0:
                        raise PostgresError(f"synchronous_standby_names: cannot verify {value!r}: {exc}") from None
                if shown is not None and parse_standby_names(shown) == wanted:
                    log.info("synchronous_standby_names = %r in force", value)
                    return
                if _left(deadline) <= 0:
                    raise PostgresError(
                        f"synchronous_standby_names is {shown!r}, not {value!r}, after a reload: it is set elsewhere "
                        "(ALTER SYSTEM?); run ALTER SYSTEM RESET synchronous_standby_names and reload"
                    )
                time.sleep(0.02)

    def sync_observation(self, timeout: float = 1.0) -> SyncObservation:
        """On a primary: the quorum setting in force, our flush position and the streaming standbys.

        ``change_lsn`` is measured at the first observation of a value (after a change, a restart or
        a promotion), not at the change itself: by then every WAL sender has reloaded too, and a
        later measurement only asks standbys for more.
        """

        async def fn(conn: Conn) -> tuple[tuple[Any, ...], list[tuple[Any, ...]]]:
            cur = await conn.execute(
                "SELECT pg_catalog.pg_is_in_recovery(), "
                "pg_catalog.current_setting('synchronous_standby_names'), "
                "CASE WHEN pg_catalog.pg_is_in_recovery() THEN NULL "
                "ELSE pg_catalog.pg_current_wal_flush_lsn()::text END, "
                "CASE WHEN pg_catalog.pg_is_in_recovery() THEN NULL "
                "ELSE substr(pg_catalog.pg_walfile_name(pg_catalog.pg_current_wal_lsn()), 1, 8) END"
            )
            head = await cur.fetchone()
            cur = await conn.execute(
                "SELECT application_name, state, flush_lsn::text FROM pg_catalog.pg_stat_replication"
            )
            return head or (), await cur.fetchall()

        head, rows = self._db.run(fn, timeout)
        if not head or head[0]:
            raise PostgresError("sync_observation: postgres is not a primary")
        value, flush, timeline = str(head[1]), parse_lsn(head[2]), head[3]
        key = (value, self.postmaster_pid(), str(timeline) if timeline else None)
        if key != self._sync_seen:
            self._sync_seen, self._sync_change_lsn = key, flush
        standbys = tuple(StandbyReplication(str(r[0]), str(r[1]), parse_lsn(r[2])) for r in rows)
        return SyncObservation(value, flush, self._sync_change_lsn, standbys)

    def prepare_peer_access(self) -> None:
        """Write the pgpass file ``peer_wal_position`` needs (once, before parallel calls)."""
        self._write_pgpass(need=("superuser",))

    def peer_wal_position(self, member: Upstream, timeout: float = 0.5) -> int | None:
        """A peer's WAL position straight from its postgres: the most it flushed or replayed.

        Fresher than its agent's API (one loop old); the failover quorum check needs that.
        Call ``prepare_peer_access`` first. Raises PostgresError when it does not answer.
        """
        target = conninfo(
            {
                "host": member.host,
                "port": member.port,
                "user": self.settings.superuser,
                "dbname": "postgres",
                "passfile": str(self.passfile),
                "connect_timeout": 2,
                "application_name": f"pgquorum-{self.member_name}",
            }
        )

        async def fn(conn: Conn) -> int | None:
            cur = await conn.execute(
                "SELECT CASE WHEN pg_catalog.pg_is_in_recovery() THEN NULL "
                "ELSE pg_catalog.pg_current_wal_flush_lsn()::text END, "
                "pg_catalog.pg_last_wal_receive_lsn()::text, pg_catalog.pg_last_wal_replay_lsn()::text"
            )
            row = await cur.fetchone()
            values = [parse_lsn(v) for v in (row or ()) if v]
            return max((v for v in values if v is not None), default=None)

        return self._db.run(fn, timeout, conninfo=target)

    # -- SQL helpers -------------------------------------------------------------------------
    def ensure_slots(self, names: Iterable[str], timeout: float = 5.0) -> tuple[list[str], list[str]]:
        """On a primary: physical slots for the given members (ourselves excluded) exist; other slots
        of our naming scheme (``pgq_*``) that are not in use are dropped. Returns (created, dropped)."""
        wanted: dict[str, str] = {}
        for name in names:
            if name == self.member_name:
                continue
            slot = slot_name(name)
            if slot in wanted:
                log.warning("members %s and %s map to the same slot %s", wanted[slot], name, slot)
            wanted[slot] = name

        async def fn(conn: Conn) -> tuple[list[str], list[str]]:
            cur = await conn.execute("SELECT pg_catalog.pg_is_in_recovery()")
            row = await cur.fetchone()
            if row is None or row[0]:
                raise PostgresError("ensure_slots: postgres is not a primary")
            cur = await conn.execute(
                "SELECT slot_name, active FROM pg_catalog.pg_replication_slots "
                "WHERE slot_type = 'physical' AND starts_with(slot_name, %s)",
                [SLOT_PREFIX],
            )
            existing = {str(name): bool(active) for name, active in await cur.fetchall()}
            created, dropped = [], []
            for slot in sorted(set(wanted) - set(existing)):
                with contextlib.suppress(psycopg.errors.DuplicateObject):
                    create = "SELECT pg_catalog.pg_create_physical_replication_slot(%s, true)"
                    await conn.execute(create, [slot])
                    created.append(slot)
            for slot, active in sorted(existing.items()):
                if slot in wanted:
                    continue
                if active:
                    log.info("slot %s is not wanted but still in use: dropping it later", slot)
                    continue
                with contextlib.suppress(psycopg.errors.UndefinedObject, psycopg.errors.ObjectInUse):
                    await conn.execute("SELECT pg_catalog.pg_drop_replication_slot(%s)", [slot])
                    dropped.append(slot)
            return created, dropped

        created, dropped = self._db.run(fn, timeout)
        if created or dropped:
            log.info("replication slots: created %s, dropped %s", created, dropped)
        return created, dropped

    def execute(self, query: str, params: Any = None, timeout: float = 5.0) -> list[tuple[Any, ...]]:
        """Run one statement on the local postgres as the superuser (bounded by ``timeout``)."""
        return self._db.query(query, params, timeout=timeout)

    def close(self) -> None:
        """Release the SQL connection and its thread (postgres itself keeps running)."""
        self._db.close()


def _left(deadline: float) -> float:
    return max(0.0, deadline - time.monotonic())
