"""The optional watchdog: configuration rules, and every "cannot arm" path on device paths the test controls.

The real /dev/watchdog is never opened here: opening it arms a machine reset.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from pgquorum.agent.config import ConfigError, Timing
from pgquorum.agent.watchdog import Watchdog, WatchdogConfig, WatchdogMode, keepalive_safe, parse_watchdog

T = Timing(ttl=3, loop_wait=1, retry_timeout=1, safety_margin=0.5)
SLOW = Timing(ttl=10, loop_wait=1, retry_timeout=2, safety_margin=2)


class Clock:
    def __init__(self, now: float = 100.0) -> None:
        self.now = now

    def monotonic(self) -> float:
        return self.now

    def wall(self) -> float:
        return self.now


@pytest.fixture
def devdir() -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(prefix="pgq-wd-"))
    root.chmod(0o755)
    yield root
    shutil.rmtree(root, ignore_errors=True)


def config(device: Path, mode: str = "automatic", timing: Timing = T) -> WatchdogConfig:
    return parse_watchdog({"mode": mode, "device": str(device)}, timing)


def test_defaults_follow_the_lease() -> None:
    assert parse_watchdog(None, T) == WatchdogConfig(WatchdogMode.OFF, Path("/dev/watchdog"), 2, 3.0, 1.0)
    assert parse_watchdog({"mode": "required"}, SLOW).timeout == 8  # floor(ttl - safety_margin)
    assert parse_watchdog({"mode": False}, T).mode is WatchdogMode.OFF  # YAML's bare `off`


@pytest.mark.parametrize(
    ("raw", "timing", "expected"),
    [
        ("automatic", T, "watchdog: expected a mapping"),
        ({"mode": "on"}, T, "watchdog.mode: must be off, automatic or required, got 'on'"),
        ({"mode": "automatic", "dev": "/x"}, T, "watchdog.dev: unknown setting"),
        ({"mode": "automatic", "device": "watchdog"}, T, "watchdog.device: must be an absolute path"),
        ({"mode": "automatic", "timeout": 1.5}, T, "watchdog.timeout: must be a whole number of seconds"),
        ({"mode": "automatic", "timeout": 3}, T, "watchdog.timeout: 3s is longer than ttl - safety_margin (2.5s)"),
        ({"mode": "required", "timeout": 1}, T, "watchdog.timeout: 1s is not longer than loop_wait (1s)"),
        (
            {"mode": "required"},
            Timing(ttl=2, loop_wait=1, retry_timeout=0.5, safety_margin=0.5),
            "watchdog.timeout: 1s is not longer than loop_wait",
        ),
    ],
)
def test_bad_settings_name_the_field(raw: object, timing: Timing, expected: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_watchdog(raw, timing)
    assert str(err.value).startswith(expected), str(err.value)


def test_off_never_touches_the_device(devdir: Path) -> None:
    dog = Watchdog(config(devdir / "absent", mode="off"))
    assert dog.activate() is True
    assert not dog.armed and dog.last_error is None
    assert dog.keepalive(100.0) is False


def test_absent_device_automatic_leads_without_it_with_one_clear_line(
    devdir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="pgquorum.watchdog")
    dog = Watchdog(config(devdir / "watchdog"))
    assert dog.activate() is True
    assert dog.activate() is True  # every loop may try again: logged once
    assert not dog.armed
    assert dog.last_error == (
        f"watchdog device {devdir / 'watchdog'} does not exist: load a driver (modprobe softdog) "
        "or set watchdog.mode: off"
    )
    (record,) = caplog.records
    assert record.levelno == logging.WARNING and "leading without it" in record.getMessage()
    assert dog.keepalive() is False
    dog.disable()  # nothing to close: no error
    assert dog.status() == {
        "mode": "automatic",
        "device": str(devdir / "watchdog"),
        "armed": False,
        "timeout": None,
        "error": dog.last_error,
    }


def test_absent_device_required_refuses_leadership(devdir: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="pgquorum.watchdog")
    dog = Watchdog(config(devdir / "watchdog", mode="required"))
    assert dog.activate() is False
    (record,) = caplog.records
    assert record.levelno == logging.ERROR and "not taking leadership" in record.getMessage()


def test_not_permitted(devdir: Path) -> None:
    device = devdir / "watchdog"
    device.write_bytes(b"")
    device.chmod(0o600)  # root's; the check below runs as another user
    code = (
        "import json;from pathlib import Path;from pgquorum.agent.config import Timing;"
        "from pgquorum.agent.watchdog import Watchdog, parse_watchdog;"
        f"d=Watchdog(parse_watchdog({{'mode':'required','device':{str(device)!r}}}, Timing()));"
        "ok=d.activate();print(json.dumps([ok, d.armed, d.last_error]))"
    )
    if os.geteuid() == 0:
        out = subprocess.run(
            [sys.executable, "-c", code], user=65534, group=65534, extra_groups=[], capture_output=True,
            text=True, timeout=60, cwd="/",
        )  # fmt: skip
    else:
        device.chmod(0o000)
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    ok, armed, error = json.loads(out.stdout.splitlines()[-1])
    assert (ok, armed) == (False, False)
    assert error.startswith(f"no permission to open watchdog device {device} as uid ")
    assert "set watchdog.mode: off" in error


def test_a_regular_file_is_not_a_watchdog_and_is_left_untouched(devdir: Path) -> None:
    device = devdir / "watchdog"
    device.write_bytes(b"")
    dog = Watchdog(config(device))
    assert dog.activate() is True and not dog.armed
    assert dog.last_error == f"{device} is not a watchdog device (not a character device)"
    assert device.read_bytes() == b""  # no magic 'V' written into a plain file


def test_a_character_device_without_watchdog_ioctls_is_refused(devdir: Path) -> None:
    device = devdir / "watchdog"
    device.symlink_to("/dev/null")  # a real character device that knows no watchdog ioctl
    dog = Watchdog(config(device, mode="required"))
    assert dog.activate() is False and not dog.armed
    assert (
        dog.last_error
        == f"{device} can neither set nor report its timeout (not a watchdog driver?); refusing to rely on it"
    )


def test_keepalive_is_refused_when_not_armed_whatever_the_renewal() -> None:
    dog = Watchdog(WatchdogConfig(WatchdogMode.AUTOMATIC), clock=Clock())
    assert dog.keepalive(renew_sent=99.9) is False


def test_a_keepalive_may_not_push_the_reset_past_the_lease() -> None:
    # ttl 3, timeout 2: a renewal sent at 100 keeps the lease until at least 103.
    assert keepalive_safe(now=100.2, renew_sent=100.0, timeout=2, ttl=3)
    assert keepalive_safe(now=101.0, renew_sent=100.0, timeout=2, ttl=3)
    assert not keepalive_safe(now=101.01, renew_sent=100.0, timeout=2, ttl=3)  # a renewal answered too late
