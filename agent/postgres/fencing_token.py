"""The term as a fencing token inside PostgreSQL (invariant I2).

At every promotion (and whenever the leader holds a term its database does not show yet) the
agent writes the term into a one-row table of the ``postgres`` database. It is ordinary WAL, so
standbys show the term of the primary they replicate, and a client can check it *inside its own
transaction*::

    BEGIN;
    SELECT pgquorum.assert_term(42);   -- raises SQLSTATE PQ001 unless the server's term is 42
    ... writes ...
    COMMIT;

A client (or the 2PC coordinator) that learned term 42 from etcd or ``GET /cluster`` can then
never commit on a deposed primary still showing 41, nor act on a stale belief of its own after a
newer primary wrote 43. ``pgquorum.current_term()`` returns the term for monitoring.

The table is created in the ``postgres`` database only: applications using another database
read the term through ``GET /cluster`` / ``pgquorum_term`` or a ``dblink``/separate connection.
"""

from __future__ import annotations

from typing import Protocol

# One round trip (simple query protocol, no parameters): idempotent DDL.
SCHEMA_SQL = """
CREATE SCHEMA IF NOT EXISTS pgquorum;
CREATE TABLE IF NOT EXISTS pgquorum.term (
    one boolean PRIMARY KEY DEFAULT true CHECK (one),
    term bigint NOT NULL,
    leader text NOT NULL,
    promoted_at timestamptz NOT NULL DEFAULT now()
);
CREATE OR REPLACE FUNCTION pgquorum.current_term() RETURNS bigint
    LANGUAGE sql STABLE AS 'SELECT term FROM pgquorum.term';
CREATE OR REPLACE FUNCTION pgquorum.assert_term(expected bigint) RETURNS bigint
    LANGUAGE plpgsql STABLE AS $$
DECLARE
    actual bigint := (SELECT term FROM pgquorum.term);
BEGIN
    IF actual IS DISTINCT FROM expected OR pg_catalog.pg_is_in_recovery() THEN
        RAISE EXCEPTION 'pgquorum fencing token mismatch: this server is at term %, the client expects %',
            actual, expected
            USING ERRCODE = 'PQ001',
                  HINT = 're-read the leader and term (GET /cluster) and retry on the current primary';
    END IF;
    RETURN actual;
END $$;
GRANT USAGE ON SCHEMA pgquorum TO PUBLIC;
GRANT SELECT ON pgquorum.term TO PUBLIC;
"""

# Terms only move forward: a slow writer of an older term never overwrites a newer one.
UPSERT_SQL = """
INSERT INTO pgquorum.term (term, leader) VALUES (%s, %s)
ON CONFLICT (one) DO UPDATE SET term = EXCLUDED.term, leader = EXCLUDED.leader, promoted_at = now()
WHERE pgquorum.term.term < EXCLUDED.term
"""


class SqlRunner(Protocol):
    def execute(self, query: str, params: object = None, timeout: float = 5.0) -> list[tuple[object, ...]]: ...


def write_term(pg: SqlRunner, term: int, leader: str, timeout: float = 5.0) -> None:
    """Record ``term`` (led by ``leader``) on the local primary; raises PostgresError on failure."""
    pg.execute(SCHEMA_SQL, timeout=timeout)
    pg.execute(UPSERT_SQL, (term, leader), timeout=timeout)
