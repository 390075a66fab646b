"""The one exception the PostgreSQL layer raises for expected failures."""

from __future__ import annotations


class PostgresError(RuntimeError):
    """A PostgreSQL operation failed in an expected way (timeout, refused, bad state).

    The message says what was attempted, why it failed and, where it helps, the tail of the
    postgres log or of the tool's output. It never contains a password.
    """


class PostgresTimeout(PostgresError):
    """A command or query did not finish within its time budget (it was killed / abandoned)."""
