"""Time is injected: decisions take ``now`` as an argument, executors get a Clock."""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    def monotonic(self) -> float:
        """Seconds on a clock that never jumps; every timing decision uses this."""
        ...

    def wall(self) -> float:
        """Unix time, only for humans (history entries, logs)."""
        ...


class SystemClock:
    def monotonic(self) -> float:
        return time.monotonic()

    def wall(self) -> float:
        return time.time()
