"""The disk-full ballast (chaos/diskfull.py) on a real 4 MiB tmpfs: it fills the volume to the last
page, takes back what is freed while it holds, and gives everything back at ``stop``. Needs root
(mount); skipped otherwise."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pgquorum.chaos.diskfull import Ballast, free_bytes

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")


@pytest.fixture
def volume(tmp_path: Path) -> Iterator[Path]:
    vol = tmp_path / "pgdata"
    vol.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "pqtest", str(vol)], check=True)
    try:
        (vol / "pg_stat_tmp").mkdir()
        yield vol
    finally:
        subprocess.run(["umount", "--lazy", str(vol)], check=False)


def test_ballast_fills_holds_and_frees(volume: Path) -> None:
    (volume / "other").write_bytes(bytes(1 << 20))  # a file the "database" may delete meanwhile
    ballast = Ballast(volume, interval=0.05)
    written = ballast.start()
    try:
        assert ballast.path.parent.name == "pg_stat_tmp"
        assert free_bytes(volume) == 0
        assert 2 << 20 < written <= 3 << 20
        with pytest.raises(OSError, match="No space left"):
            (volume / "more").write_bytes(b"x" * 8192)
        (volume / "other").unlink()  # freed space is taken back at the next top-up
        for _ in range(100):
            if free_bytes(volume) == 0 and ballast.topped_up >= 1 << 20:
                break
            time.sleep(0.05)
        assert free_bytes(volume) == 0 and ballast.topped_up >= 1 << 20
    finally:
        ballast.stop()
    assert not ballast.path.exists()
    assert free_bytes(volume) > 3 << 20
