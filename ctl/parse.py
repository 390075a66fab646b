"""Command-line values (pure): scheduled times, ``KEY=VALUE`` assignments, configuration patches."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from datetime import datetime, tzinfo
from typing import Any

import yaml

from pgquorum.ctl.client import UsageError

Json = dict[str, Any]

_HAS_TIME = re.compile(r"\d[Tt ]\d")


def parse_scheduled(text: str, now: datetime, local_tz: tzinfo | None = None) -> datetime:
    """``--scheduled``: an ISO-8601 date *and* time in the future; no offset means local time.

    Returns an aware datetime. ``now`` must be aware; ``local_tz`` (default: the system's) is the
    zone of a time given without an offset.
    """
    value = text.strip()
    example = "e.g. 2030-06-01T03:00+02:00, 2030-06-01T01:00Z or '2030-06-01 03:00' (local time)"
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        raise UsageError(f"--scheduled {text!r}: not an ISO-8601 time ({example})") from None
    if not _HAS_TIME.search(value):
        raise UsageError(f"--scheduled {text!r}: give a time of day too ({example})")
    if when.tzinfo is None:
        when = when.replace(tzinfo=local_tz) if local_tz is not None else when.astimezone()
    if when <= now:
        current = now.astimezone(when.tzinfo).isoformat("T", "seconds")
        raise UsageError(f"--scheduled {text!r}: that is in the past (now is {current})")
    return when


def parse_value(text: str, key: str) -> Any:
    """A ``config set`` value, read as YAML: ``10`` is a number, ``true`` a boolean, ``null`` removes."""
    if text == "":
        raise UsageError(f"config set {key}=: empty value (use {key}=null to remove the key, {key}='' for '')")
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise UsageError(f"config set {key}={text}: not a YAML value ({problem}); quote strings") from None


def parse_assignments(items: Sequence[str]) -> Json:
    """``["ttl=5", "postgresql.parameters.work_mem=8MB"]`` -> a nested merge patch."""
    if not items:
        raise UsageError("config set: give at least one KEY=VALUE")
    patch: Json = {}
    seen: list[tuple[str, ...]] = []
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        path = tuple(part.strip() for part in key.split("."))
        if not sep or not key or not all(path):
            raise UsageError(f"config set {item!r}: expected KEY=VALUE (KEY may be dotted: a.b.c)")
        for other in seen:
            shorter = min(len(other), len(path))
            if other[:shorter] == path[:shorter]:
                raise UsageError(f"config set: {key!r} conflicts with {'.'.join(other)!r} (set each key once)")
        seen.append(path)
        node = patch
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = parse_value(raw, key)
    return patch


def merge_patch(old: Mapping[str, Any], new: Mapping[str, Any]) -> Json:
    """The JSON merge patch (RFC 7386) that turns ``old`` into ``new``: only what changed.

    Removed keys map to None; nested objects are diffed key by key; a change of type (1 -> true,
    1 -> 1.0) counts as a change.
    """
    patch: Json = {}
    for key in old:
        if key not in new:
            patch[key] = None
    for key, value in new.items():
        if key not in old:
            patch[key] = value
            continue
        before = old[key]
        if isinstance(value, Mapping) and isinstance(before, Mapping):
            sub = merge_patch(before, value)
            if sub:
                patch[key] = sub
        elif type(value) is not type(before) or value != before:
            patch[key] = value
    return patch
