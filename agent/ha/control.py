"""What operators can ask of an agent (REST API, ctl CLI): the interface between API and HA loop.

The API validates the request's *shape* (types, required fields) and then calls these methods;
they check the request against the cluster (is the candidate a member? healthy? caught up?) and
raise ``ControlError`` with an HTTP status and a message naming the field and the fix.
Requests that change leadership are written to etcd, so any member's API can accept them and the
leader (or, without a leader, the candidate) carries them out in its next loop.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from pgquorum.agent.model import HistoryEntry


class ControlError(Exception):
    def __init__(self, status: int, message: str, field: str | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.field = field


@dataclass(frozen=True)
class Accepted:
    """A request was accepted: what will happen, and a warning when data may be lost."""

    message: str
    warning: str | None = None
    details: dict[str, Any] | None = None


class Control(Protocol):
    def switchover(self, candidate: str | None, scheduled_at: float | None, wait: bool) -> Accepted:
        """Planned, zero-loss handover from the current leader to ``candidate`` (or the best replica).

        ``scheduled_at``: unix time; None = now. ``wait``: block until done (or failed) and report.
        """
        ...

    def failover(self, candidate: str, wait: bool) -> Accepted:
        """Make ``candidate`` the leader; allowed without a healthy leader. Warns when it may lose data."""
        ...

    def restart(self) -> Accepted:
        """Restart this member's postgres (a leader keeps its key; writes pause for the restart)."""
        ...

    def reinitialize(self) -> Accepted:
        """Wipe this replica's data directory and clone it again from the leader (refused on the leader)."""
        ...

    def history(self) -> list[HistoryEntry]: ...

    def dynamic_config(self) -> dict[str, Any]:
        """The dynamic settings stored in etcd, with their effective values."""
        ...

    def patch_config(self, changes: dict[str, Any]) -> dict[str, Any]:
        """Validate and store changes to dynamic settings; returns the new effective settings."""
        ...
