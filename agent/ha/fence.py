"""The fence guard: a small thread that enforces the fence deadline even when the HA loop is stuck.

The HA loop can spend up to ``2 * retry_timeout`` in etcd calls; the deadline
(``last_renew_sent + ttl - safety_margin``, or with quorum votes the end of the majority of
promises) must hold regardless, so a separate thread checks ``guard_must_fence`` every few
milliseconds and stops postgres itself. ``voting`` gives it the current voting members and
promises (the promise keeper renews them on its own thread, so the deadline moves between loops).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from pgquorum.agent.clock import Clock
from pgquorum.agent.config import Timing
from pgquorum.agent.ha.decide import Memory, Voting, guard_must_fence, serving_deadline_at

log = logging.getLogger("pgquorum.fence")

CHECK_INTERVAL = 0.02  # seconds; fence itself takes ~0.1 s, the margin is >= 0.2 s


class FenceGuard:
    def __init__(
        self,
        timing: Timing,
        clock: Clock,
        fence: Callable[[str], None],
        on_fenced: Callable[[], None],
        voting: Callable[[], Voting | None] | None = None,
        me: str = "",
    ):
        self._voting = voting or (lambda: None)
        self._me = me
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
        if m.leader_term is None:
            return None
        return serving_deadline_at(m, self._timing, self._voting(), self._me, self._clock.monotonic())

    def lease_valid(self) -> bool:
        """True while we lead and our own fence deadline has not passed (for /primary)."""
        deadline = self.deadline()
        return deadline is not None and self._clock.monotonic() < deadline

    def _run(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                memory = self._memory
            now = self._clock.monotonic()
            voting = self._voting() if memory.leader_term is not None else None
            if guard_must_fence(now, memory, self._timing, voting, self._me):
                late = now - (serving_deadline_at(memory, self._timing, voting, self._me, now) or now)
                log.error(
                    "fence deadline reached: stopping postgres",
                    extra={"term": memory.leader_term, "late_by": round(late, 3)},
                )
                try:
                    what = "majority of promises" if voting is not None else "lease"
                    self._fence(f"{what} of term {memory.leader_term} not renewed before the fence deadline")
                finally:
                    with self._lock:
                        if self._memory is memory:
                            self._memory = Memory()
                    self._on_fenced()
                continue
            self._changed.wait(CHECK_INTERVAL)
            self._changed.clear()
