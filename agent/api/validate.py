"""Request validation for the REST API: bodies, fields, times and the ``lag`` query parameter.

Every failure is a ``ValidationError`` naming the field and what is expected, so a client gets
``400 {"error": "wait: expected a boolean (true or false), got a string", "field": "wait"}``
instead of a guess. Nothing here echoes a request body back; only short field values are quoted.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

MAX_BODY = 64 * 1024  # bytes; every request body we accept is a small JSON object
TIME_EXAMPLE = "2026-11-26T18:00:00+00:00"
_NAME_OK = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-_")  # as config.py's member names


class ValidationError(Exception):
    """A request is malformed: ``status`` (400, 411, 413), the ``field`` at fault and why."""

    def __init__(self, field: str | None, message: str, status: int = 400):
        super().__init__(message)
        self.field = field
        self.message = message
        self.status = status


def json_type(value: object) -> str:
    """The JSON name of a decoded value's type, for messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValidationError(key, f"{key}: given more than once")
        out[key] = value
    return out


def _no_constants(name: str) -> Any:
    raise ValidationError("body", f"body: {name} is not valid JSON")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValidationError("body", "body: a number is out of range")
    return value


def parse_object(raw: bytes, *, allow_empty: bool = True) -> dict[str, Any]:
    """Decode a request body that must be one JSON object of at most ``MAX_BODY`` bytes.

    An empty body means ``{}`` when ``allow_empty`` (``POST /restart`` with no body is fine).
    """
    if len(raw) > MAX_BODY:
        raise ValidationError("body", f"body: {len(raw)} bytes is over the limit of {MAX_BODY} bytes", 413)
    if not raw.strip():
        if allow_empty:
            return {}
        raise ValidationError("body", 'body: expected a JSON object, e.g. {"maximum_lag_on_failover": 1048576}')
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ValidationError("body", "body: not UTF-8 text") from None
    try:
        value = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constants, parse_float=_finite)
    except json.JSONDecodeError as exc:
        raise ValidationError(
            "body", f"body: not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})"
        ) from None
    except (ValueError, RecursionError):  # nested too deep, a number with thousands of digits
        raise ValidationError("body", "body: not acceptable JSON (nested too deep or a number too long)") from None
    if not isinstance(value, dict):
        raise ValidationError("body", f"body: expected a JSON object {{...}}, got {json_type(value)}")
    return value


@dataclass(frozen=True)
class FieldSpec:
    """One allowed body field: its JSON types, whether it is required, and its default."""

    name: str
    types: tuple[type, ...]  # allowed Python types of the decoded value; type(None) allows null
    expected: str  # for messages: "a string (a member name) or null"
    required: bool = False
    default: Any = None


def check_fields(body: dict[str, Any], specs: Sequence[FieldSpec]) -> dict[str, Any]:
    """Unknown fields, missing required fields and wrong types -> ValidationError naming the field."""
    known = {s.name: s for s in specs}
    unknown = sorted(k for k in body if k not in known)
    if unknown:
        allowed = ", ".join(known) if known else "none: send {} or no body"
        raise ValidationError(unknown[0], f"{unknown[0]}: unknown field (allowed: {allowed})")
    out: dict[str, Any] = {}
    for spec in specs:
        if spec.name not in body:
            if spec.required:
                raise ValidationError(spec.name, f"{spec.name}: required field is missing ({spec.expected})")
            out[spec.name] = spec.default
            continue
        value = body[spec.name]
        ok = any(_is_type(value, t) for t in spec.types)
        if not ok:
            raise ValidationError(spec.name, f"{spec.name}: expected {spec.expected}, got {json_type(value)}")
        out[spec.name] = value
    return out


def _is_type(value: object, kind: type) -> bool:
    if kind is bool:
        return isinstance(value, bool)
    if kind in (int, float):
        return isinstance(value, int | float) and not isinstance(value, bool)
    if kind is type(None):
        return value is None
    return isinstance(value, kind)


def member_name(value: str, field: str) -> str:
    """A member name as the configuration allows it (lowercase letters, digits, '-', '_')."""
    if not value:
        raise ValidationError(field, f"{field}: must not be empty (a member name)")
    if len(value) > 63 or not set(value) <= _NAME_OK:
        raise ValidationError(
            field, f"{field}: {_quote(value)} is not a member name (lowercase letters, digits, '-' and '_')"
        )
    return value


def parse_time(value: str, field: str) -> float:
    """ISO-8601 with a timezone -> unix seconds."""
    example = f"an ISO-8601 time with a timezone, e.g. {TIME_EXAMPLE} or 2026-11-26T18:00:00Z"
    try:
        when = datetime.fromisoformat(value.strip())
    except ValueError:
        raise ValidationError(field, f"{field}: {_quote(value)} is not {example}") from None
    if when.tzinfo is None or when.utcoffset() is None:
        raise ValidationError(field, f"{field}: {_quote(value)} has no timezone; expected {example}")
    return when.timestamp()


# -- lag -------------------------------------------------------------------------------------------

_SIZE_UNITS = {"": 1, "b": 1, "kb": 1024, "mb": 1024**2, "gb": 1024**3, "tb": 1024**4}
_TIME_UNITS = {"ms": 0.001, "s": 1.0, "sec": 1.0, "min": 60.0, "h": 3600.0}
_LAG_RE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*")
LAG_EXAMPLES = "bytes (e.g. 1048576, 16kB, 1MB) or a duration (e.g. 500ms, 10s, 1min)"


@dataclass(frozen=True)
class LagLimit:
    """``?lag=``: a byte count (WAL not yet received) or a duration (age of WAL not yet replayed)."""

    text: str
    max_bytes: int | None = None
    max_seconds: float | None = None


def parse_lag(values: Sequence[str]) -> LagLimit | None:
    """The ``lag`` query parameter: absent -> None; a plain number means bytes (as Patroni)."""
    if not values:
        return None
    if len(values) > 1:
        raise ValidationError("lag", "lag: given more than once")
    text = values[0]
    match = _LAG_RE.fullmatch(text)
    unit = match.group(2).lower() if match else ""
    if match is None or (unit not in _SIZE_UNITS and unit not in _TIME_UNITS):
        raise ValidationError("lag", f"lag: {_quote(text)} is not {LAG_EXAMPLES}")
    number = float(match.group(1))
    if unit in _TIME_UNITS:
        seconds = number * _TIME_UNITS[unit]
        if not math.isfinite(seconds):
            raise ValidationError("lag", f"lag: {_quote(text)} is out of range")
        return LagLimit(text.strip(), max_seconds=seconds)
    if unit == "" and "." in match.group(1):
        raise ValidationError("lag", f"lag: {_quote(text)}: a byte count is a whole number (or use a unit: 1.5MB)")
    size = number * _SIZE_UNITS[unit]
    if not math.isfinite(size) or size >= 2**63:
        raise ValidationError("lag", f"lag: {_quote(text)} is out of range")
    return LagLimit(text.strip(), max_bytes=int(size))


def _quote(value: str, limit: int = 40) -> str:
    return repr(value if len(value) <= limit else value[:limit] + "...")
