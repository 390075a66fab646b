"""The fence guard: a small thread that enforces the fence deadline even when the HA loop is stuck.

The HA loop can spend up to ``2 * retry_timeout`` in etcd calls; the deadline
(``last_renew_sent + ttl - safety_margin``) must hold regardless, so a separate thread checks
``guard_must_fence`` every few milliseconds and stops postgres itself.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from pgquorum.agent.clock import Clock
from pgquorum.agent.config import Timing
from pgquorum.agent.ha.decide import Memory, fence_deadline, guard_must_fence

log = logging.getLogger("pgquorum.fence")

CHECK_INTERVAL = 0.02  # seconds; fence itself takes ~0.1 s, the margin is >= 0.2 s


class FenceGuard:
    def __init__(self, timing: Timing, clock: Clock, fence: Callable[[str], None], on_fenced: Callable[[], None]):
        self._timing = timing
        self._clock = clock
        self._fence = fence
        self._on_fenced = on_fenced
        self._memory = Memory()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._changed = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fence-guard", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._changed.set()
        self._thread.join(timeout=2)

    def update(self, memory: Memory) -> None:
        with self._lock:
            self._memory = memory
        self._changed.set()

    def deadline(self) -> float | None:
        with self._lock:
            m = self._memory
        return fence_deadline(m.last_renew_sent, self._timing) if m.leader_term is not None else None

    def lease_valid(self) -> bool:
        """True while we lead and our own fence deadline has not passed (for /primary)."""
        deadline = self.deadline()
        return deadline is not None and self._clock.monotonic() < deadline

    def _run(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                memory = self._memory
            now = self._clock.monotonic()
            if guard_must_fence(now, memory, self._timing):
                late = now - (fence_deadline(memory.last_renew_sent, self._timing) or now)
                log.error(
                    "fence deadline reached: stopping postgres",
                    extra={"term": memory.leader_term, "late_by": round(late, 3)},
                )
                try:
                    self._fence(f"lease of term {memory.leader_term} not renewed before the fence deadline")
                finally:
                    with self._lock:
                        if self._memory is memory:
                            self._memory = Memory()
                    self._on_fenced()
                continue
            self._changed.wait(CHECK_INTERVAL)
            self._changed.clear()
