"""Structured logs: one line per event, ``key=value`` pairs, always naming the member.

Example::

    2026-11-26T16:40:01.123Z ERROR member=b term=4 event=fence reason="etcd unreachable ..." late_by=0.01
"""

from __future__ import annotations

import logging
import sys
import time

_STANDARD = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}


def _quote(value: object) -> str:
    text = str(value)
    if text == "" or any(c in text for c in ' "=\t'):
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return text


class KeyValueFormatter(logging.Formatter):
    def __init__(self, member: str):
        super().__init__()
        self.member = member

    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"
        parts = [ts, record.levelname, f"member={_quote(self.member)}", f"msg={_quote(record.getMessage())}"]
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                parts.append(f"{key}={_quote(value)}")
        if record.exc_info:
            parts.append("exc=" + _quote(self.formatException(record.exc_info).replace("\n", " | ")))
        return " ".join(parts)


def setup_logging(member: str, level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(KeyValueFormatter(member))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Transport libraries are noisy at INFO and would log every request.
    for noisy in ("urllib3", "requests", "etcd3gw", "psycopg"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
