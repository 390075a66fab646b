"""One HTTP request with a hard deadline, on the standard library only.

``http.client`` timeouts apply per socket operation, so a server that trickles bytes could hold a
request far past its timeout. The request runs in a daemon thread; when the deadline passes we shut
its socket down (which wakes the blocked read at once) and report a timeout.
"""

from __future__ import annotations

import contextlib
import http.client
import socket
import ssl
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

BODY_LIMIT = 65536  # bytes of a response body we read: enough for any status message


class HttpTimeout(Exception):
    pass


@dataclass(frozen=True)
class HttpResponse:
    status: int
    body: bytes

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    def snippet(self, limit: int = 200, secrets: Sequence[bytes] = ()) -> str:
        """The start of the body on one line, secrets masked *before* cutting (no prefix of one can leak)."""
        raw = self.body
        for secret in secrets:
            if len(secret) >= 4:  # masking a tiny secret would garble the whole text
                raw = raw.replace(secret, b"***")
        text = " ".join(raw.decode(errors="replace").split())
        return text[:limit] + ("..." if len(text) > limit else "")


def ssl_context(ca_file: Path | None) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(ca_file) if ca_file is not None else None)


def request(
    method: str,
    url: str,
    *,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    timeout: float,
    ca_file: Path | None = None,
    body_limit: int = BODY_LIMIT,
) -> HttpResponse:
    """Send one request; raise ``HttpTimeout`` past ``timeout`` seconds, ``OSError`` when it cannot connect.
    At most ``body_limit`` bytes of the answer are read."""
    if timeout <= 0:
        raise HttpTimeout("no time left")
    parts = urlsplit(url)
    host = parts.hostname or ""
    conn: http.client.HTTPConnection
    if parts.scheme == "https":
        conn = http.client.HTTPSConnection(host, parts.port, timeout=timeout, context=ssl_context(ca_file))
    else:
        conn = http.client.HTTPConnection(host, parts.port, timeout=timeout)
    target = parts.path or "/"
    if parts.query:
        target += "?" + parts.query
    result: list[HttpResponse] = []
    error: list[BaseException] = []

    def work() -> None:
        try:
            conn.request(method, target, body=body, headers=headers or {})
            resp = conn.getresponse()
            result.append(HttpResponse(resp.status, resp.read(body_limit)))
        except BaseException as exc:
            error.append(exc)
        finally:
            conn.close()

    worker = threading.Thread(target=work, name=f"http-{host}", daemon=True)
    worker.start()
    worker.join(timeout)
    if worker.is_alive():
        sock = conn.sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        # A connect() still in progress has no socket to shut down; it ends by its own timeout.
        raise HttpTimeout(f"no response within {timeout:g}s")
    if error:
        exc = error[0]
        if isinstance(exc, TimeoutError):
            raise HttpTimeout(f"no response within {timeout:g}s") from None
        if isinstance(exc, OSError | http.client.HTTPException):
            raise OSError(_describe(exc)) from None
        raise exc
    return result[0]


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError):
        return f"TLS error: {exc.reason or exc}"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__
