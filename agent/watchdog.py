"""Optional Linux watchdog (``/dev/watchdog``, e.g. the ``softdog`` module), as Patroni has it (invariant I2).

The leader arms the watchdog and feeds it only after a *successful* lease renewal. If the agent is
stuck (paused, swapping, deadlocked) the feeding stops and the kernel resets the machine before
another member can take the leader key, so a frozen old primary never resumes writing. The fence
guard normally acts first; the watchdog is the backstop when the agent itself cannot run.

Modes (``watchdog.mode``):

* ``off`` (default): never touch the device.
* ``automatic``: use the watchdog when it can be armed; otherwise log one clear line and lead
  without it.
* ``required``: ``activate()`` returns False unless the watchdog is armed with a usable timeout;
  the HA loop must then not take the leader key.

Timing: the kernel resets the machine ``timeout`` whole seconds after the last keepalive.
A keepalive sent after the renewal that was *sent* at ``renew_sent`` is safe only if
``now + timeout <= renew_sent + ttl`` (the lease cannot expire earlier than that); ``keepalive``
skips it otherwise. The default timeout is ``floor(ttl - safety_margin)`` and must exceed
``loop_wait`` (a healthy leader feeds it every loop).

Lifecycle for the HA loop: ``activate()`` before promoting / when taking the key, ``keepalive
(renew_sent)`` after each successful renewal, ``disable()`` when demoting or releasing the key and
on clean shutdown (magic close: write ``V`` then close, which disarms drivers that support it).
Opening the device arms it, so tests never open a real ``/dev/watchdog``.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import math
import os
import stat
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from pgquorum.agent.clock import Clock, SystemClock
from pgquorum.agent.config import ConfigError, Timing

log = logging.getLogger("pgquorum.watchdog")

DEFAULT_DEVICE = Path("/dev/watchdog")


def _ioc(direction: int, nr: int, size: int) -> int:
    return (direction << 30) | (size << 16) | (ord("W") << 8) | nr


_READ, _WRITE = 2, 1
WDIOC_GETSUPPORT = _ioc(_READ, 0, 40)  # struct watchdog_info: u32 options, u32 firmware, u8 identity[32]
WDIOC_SETTIMEOUT = _ioc(_READ | _WRITE, 6, 4)
WDIOC_GETTIMEOUT = _ioc(_READ, 7, 4)
WDIOF_MAGICCLOSE = 0x0100


class WatchdogMode(StrEnum):
    OFF = "off"
    AUTOMATIC = "automatic"
    REQUIRED = "required"


@dataclass(frozen=True)
class WatchdogConfig:
    mode: WatchdogMode = WatchdogMode.OFF
    device: Path = DEFAULT_DEVICE
    timeout: int = 2  # whole seconds from the last keepalive to the reset
    ttl: float = 3.0  # the lease it protects (copied from timing)
    loop_wait: float = 1.0


class WatchdogUnavailable(Exception):
    """The watchdog cannot be armed; the message is one line saying why and what to do."""


def parse_watchdog(raw: object, timing: Timing, where: str = "watchdog") -> WatchdogConfig:
    """``{mode: off|automatic|required, device: /dev/watchdog, timeout: <s>}``; ``None`` means off."""
    if raw is None:
        return WatchdogConfig(ttl=timing.ttl, loop_wait=timing.loop_wait)
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where}: expected a mapping, e.g. {{mode: automatic, device: /dev/watchdog}}")
    unknown = sorted(str(k) for k in raw if k not in ("mode", "device", "timeout"))
    if unknown:
        raise ConfigError(f"{where}.{unknown[0]}: unknown setting (known: device, mode, timeout)")
    mode_raw: Any = raw.get("mode", "off")
    if mode_raw is False:  # YAML 1.1 reads a bare `off` as false
        mode_raw = "off"
    try:
        mode = WatchdogMode(mode_raw)
    except ValueError:
        raise ConfigError(f"{where}.mode: must be off, automatic or required, got {mode_raw!r}") from None
    device_raw = raw.get("device", str(DEFAULT_DEVICE))
    if not isinstance(device_raw, str) or not os.path.isabs(device_raw):
        raise ConfigError(f"{where}.device: must be an absolute path such as /dev/watchdog, got {device_raw!r}")
    limit = timing.ttl - timing.safety_margin
    timeout_raw: Any = raw.get("timeout")
    if timeout_raw is None:
        timeout = math.floor(limit)
    elif isinstance(timeout_raw, int) and not isinstance(timeout_raw, bool) and timeout_raw > 0:
        timeout = timeout_raw
    else:
        raise ConfigError(f"{where}.timeout: must be a whole number of seconds >= 1, got {timeout_raw!r}")
    if mode is not WatchdogMode.OFF:
        if timeout > limit:
            raise ConfigError(
                f"{where}.timeout: {timeout}s is longer than ttl - safety_margin ({limit:g}s): the machine would "
                "reset after another member could take the leader key. Lower it or leave it unset"
            )
        if timeout <= timing.loop_wait:
            raise ConfigError(
                f"{where}.timeout: {timeout}s is not longer than loop_wait ({timing.loop_wait:g}s): a healthy leader "
                "would reset its machine between two renewals. Raise timing.ttl (the timeout follows it) "
                "or lower loop_wait"
            )
    return WatchdogConfig(mode, Path(device_raw), timeout, timing.ttl, timing.loop_wait)


def keepalive_safe(now: float, renew_sent: float, timeout: float, ttl: float) -> bool:
    """A keepalive now makes the reset happen at ``now + timeout``; the lease renewed at ``renew_sent``
    cannot expire before ``renew_sent + ttl``. Feeding later than that would let a stuck leader outlive its lease."""
    return now + timeout <= renew_sent + ttl


def _describe_open_error(device: Path, exc: OSError) -> str:
    if exc.errno == errno.ENOENT:
        return f"watchdog device {device} does not exist: load a driver (modprobe softdog) or set watchdog.mode: off"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return (
            f"no permission to open watchdog device {device} as uid {os.geteuid()}: give the agent's user write "
            "access to it (e.g. a udev rule) or set watchdog.mode: off"
        )
    if exc.errno == errno.EBUSY:
        return f"watchdog device {device} is held by another process (a watchdog daemon?); only one may open it"
    return f"cannot open watchdog device {device}: {exc.strerror or exc}"


class Watchdog:
    """One agent's watchdog. Not thread-safe: the HA loop owns it."""

    def __init__(self, config: WatchdogConfig, clock: Clock | None = None):
        self.config = config
        self.clock = clock or SystemClock()
        self._fd: int | None = None
        self._magic_close = True
        self.timeout: int | None = None  # the device's actual timeout while armed
        self.last_error: str | None = None
        self._logged: str | None = None

    @property
    def armed(self) -> bool:
        return self._fd is not None

    def activate(self) -> bool:
        """Arm the watchdog (idempotent). True when this member may lead (see the module docstring)."""
        if self.config.mode is WatchdogMode.OFF or self._fd is not None:
            return True
        try:
            self._open()
        except WatchdogUnavailable as exc:
            self.last_error = str(exc)
            required = self.config.mode is WatchdogMode.REQUIRED
            if self._logged != self.last_error:  # one line per distinct problem, not one per loop
                self._logged = self.last_error
                log.log(
                    logging.ERROR if required else logging.WARNING,
                    (
                        "watchdog required but unavailable: not taking leadership; "
                        if required
                        else "watchdog unavailable, leading without it: "
                    )
                    + self.last_error,
                    extra={
                        "event": "watchdog_unavailable",
                        "device": str(self.config.device),
                        "mode": str(self.config.mode),
                    },
                )
            return not required
        self.last_error = None
        self._logged = None
        log.info(
            "watchdog armed",
            extra={"event": "watchdog_armed", "device": str(self.config.device), "timeout": self.timeout},
        )
        return True

    def _open(self) -> None:
        device = self.config.device
        try:
            fd = os.open(device, os.O_WRONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise WatchdogUnavailable(_describe_open_error(device, exc)) from None
        if not stat.S_ISCHR(os.fstat(fd).st_mode):
            os.close(fd)  # never write the magic 'V' into an ordinary file
            raise WatchdogUnavailable(f"{device} is not a watchdog device (not a character device)")
        # From here the device may be armed: every failure path disarms it again.
        try:
            options = struct.unpack_from("I", fcntl.ioctl(fd, WDIOC_GETSUPPORT, bytes(40)))[0]
            self._magic_close = bool(options & WDIOF_MAGICCLOSE)
        except OSError:
            self._magic_close = True  # unknown: write the 'V' anyway, it is harmless
        wanted = self.config.timeout
        actual: int | None
        try:
            actual = struct.unpack("i", fcntl.ioctl(fd, WDIOC_SETTIMEOUT, struct.pack("i", wanted)))[0]
        except OSError:
            try:
                actual = struct.unpack("i", fcntl.ioctl(fd, WDIOC_GETTIMEOUT, struct.pack("i", 0)))[0]
            except OSError:
                actual = None
        problem = None
        if actual is None:
            problem = (
                f"{device} can neither set nor report its timeout (not a watchdog driver?); refusing to rely on it"
            )
        elif actual > wanted:
            problem = (
                f"{device} keeps a {actual}s timeout, longer than the {wanted}s the lease allows "
                f"(ttl {self.config.ttl:g}s); the driver refused {wanted}s"
            )
        elif actual <= self.config.loop_wait:
            problem = f"{device} set a {actual}s timeout, not longer than loop_wait ({self.config.loop_wait:g}s)"
        if problem is not None:
            self._close(fd)
            raise WatchdogUnavailable(problem)
        self._fd = fd
        self.timeout = actual

    def keepalive(self, renew_sent: float | None = None) -> bool:
        """Feed the watchdog; call only after a successful lease renewal sent at ``renew_sent`` (monotonic).

        Returns False (and does not feed) when not armed or when feeding now would let the machine
        run past the lease's earliest expiry.
        """
        fd = self._fd
        if fd is None or self.timeout is None:
            return False
        now = self.clock.monotonic()
        if renew_sent is not None and not keepalive_safe(now, renew_sent, self.timeout, self.config.ttl):
            log.warning(
                "watchdog keepalive skipped: the renewal is too old to extend the watchdog past its lease",
                extra={"event": "watchdog_late", "renewal_age": round(now - renew_sent, 3)},
            )
            return False
        try:
            os.write(fd, b"1")
        except OSError as exc:
            log.error(
                "watchdog keepalive failed; the machine will reset unless the next one succeeds",
                extra={"event": "watchdog_keepalive_failed", "error": exc.strerror or str(exc)},
            )
            return False
        return True

    def disable(self) -> None:
        """Disarm (magic close). Call when giving up leadership and on clean shutdown."""
        fd, self._fd = self._fd, None
        self.timeout = None
        if fd is None:
            return
        self._close(fd)
        if not self._magic_close:
            log.warning(
                "watchdog driver has no magic close: closing it may not disarm it",
                extra={"event": "watchdog_no_magic_close", "device": str(self.config.device)},
            )
        else:
            log.info("watchdog disarmed", extra={"event": "watchdog_disarmed", "device": str(self.config.device)})

    @staticmethod
    def _close(fd: int) -> None:
        try:
            os.write(fd, b"V")
        except OSError:
            pass
        finally:
            os.close(fd)

    def status(self) -> dict[str, Any]:
        """For the REST API / status output."""
        return {
            "mode": str(self.config.mode),
            "device": str(self.config.device),
            "armed": self.armed,
            "timeout": self.timeout,
            "error": self.last_error,
        }
