"""The agent's REST API: a small threaded stdlib HTTP server in front of ``routes.Api``.

Routes (details in ``routes.py``; health semantics in ``health.py``; auth in ``auth.py``)::

  GET  /primary      200 while this member is the writable leader and its lease is valid
  GET  /replica      200 while a running standby streams from the leader   [?lag=1MB|10s]
  GET  /read-only    200 while postgres serves reads (valid leader or standby) [?lag=...]
  GET  /health       200 while postgres runs
  GET  /liveness     200 unless the HA loop stalled (no loop for loop_wait + 2*retry_timeout + ttl)
  GET  /readiness    200 when postgres accepts connections and (leader or streaming replica)
  GET  /cluster      members, leader and term from the last etcd read (503 without etcd)
  GET  /history      {"history": [...]}       leadership changes
  GET  /config       {"config": {...}}        dynamic settings in effect
  PATCH /config      {"config": {...}}        change dynamic settings            (auth)
  POST /switchover   {"candidate", "scheduled_at", "wait"}                        (auth)
  POST /failover     {"candidate", "wait"}                                        (auth)
  POST /restart      {}   restart this member's postgres                          (auth)
  POST /reinitialize {}   wipe and re-clone this replica                          (auth)
  GET  /metrics      Prometheus exposition (when the loop has ``metrics``)

Health routes answer HEAD and OPTIONS too (status only, for load-balancer checks).

Why a threaded stdlib server and not asyncio (and why it is asyncio-friendly enough):

* Cost: no dependency, ~1 MB of RSS; an idle agent must stay under 40 MB.
* No handler ever blocks the HA loop. The loop publishes an immutable ``LoopView`` under a lock
  held only to swap a reference; health routes read that snapshot plus the fence guard's
  ``lease_valid()`` (a clock comparison) and do no I/O, so a hung etcd or postgres cannot make a
  probe hang or slow down. ``/primary`` turns 503 at the fence deadline even if the loop is stuck.
* Operator requests (``Control`` methods) do bounded etcd calls on their own etcd client, on a
  short-lived thread with a deadline: the API thread answers within it (504 otherwise) and the
  loop only sees a request in etcd or a flag it reads in its next iteration.
* So each handler is a pure function of (request, snapshot) or a bounded call; moving to asyncio
  later means calling ``Api.handle`` from an async handler (``asyncio.to_thread`` for operator
  requests), without touching the routes.

Robustness: a socket timeout per connection (slow clients cannot hold a thread), a cap on
concurrent connections (503 beyond it), bodies of at most 64 KiB with Content-Length, JSON errors
for malformed HTTP, and per-request logs without headers or bodies.
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar

from pgquorum.agent.api.auth import Authenticator
from pgquorum.agent.api.routes import Api, ApiLoop, Request, Response, error
from pgquorum.agent.api.validate import MAX_BODY
from pgquorum.agent.config import ConfigError

log = logging.getLogger("pgquorum.api")

SOCKET_TIMEOUT = 10.0  # seconds a client may take to send its request
MAX_CONNECTIONS = 64
BODY_METHODS = frozenset({"POST", "PATCH", "PUT", "DELETE"})


class _Handler(BaseHTTPRequestHandler):
    api: ClassVar[Api]
    server_version = "pgquorum"
    timeout = SOCKET_TIMEOUT

    def version_string(self) -> str:
        return self.server_version

    def log_message(self, format: str, *args: Any) -> None:  # per-request lines go through Api.handle
        pass

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """Malformed HTTP (bad request line, header too large, ...): a JSON error, never echoing input."""
        short = self.responses.get(code, ("error", ""))[0]
        self.close_connection = True
        if getattr(self, "request_version", "HTTP/0.9") == "HTTP/0.9":  # unparsable line: still a status line
            self.request_version = "HTTP/1.0"
        self._write(error(code, f"request refused: {short} (HTTP {code})"), head=False)

    def _write(self, resp: Response, head: bool) -> None:
        payload = resp.payload()
        self.send_response(resp.status)
        for name, value in resp.headers:
            self.send_header(name, value)
        if payload or resp.status not in (204, 304):
            self.send_header("Content-Type", resp.content_type)
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("Cache-Control", "no-store")
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if not head and payload:
            self.wfile.write(payload)

    def _read_body(self) -> bytes | Response:
        if self.headers.get("Transfer-Encoding"):
            self.close_connection = True
            return error(411, "body: send it with a Content-Length header (chunked encoding is not accepted)", "body")
        length_text = self.headers.get("Content-Length")
        if length_text is None:
            return b""
        try:
            length = int(length_text.strip())
            if length < 0:
                raise ValueError
        except ValueError:
            self.close_connection = True
            return error(400, "Content-Length: not a byte count", "Content-Length")
        if length > MAX_BODY:
            self.close_connection = True
            return error(413, f"body: {length} bytes is over the limit of {MAX_BODY} bytes", "body")
        data = self.rfile.read(length) if length else b""
        if len(data) != length:
            self.close_connection = True
            return error(400, "body: shorter than its Content-Length", "body")
        return data

    def _serve(self) -> None:
        method = self.command.upper()
        body = b""
        if method in BODY_METHODS:
            read = self._read_body()
            if isinstance(read, Response):
                self._write(read, head=False)
                return
            body = read
        req = Request(
            method=method,
            target=self.path,
            authorization=self.headers.get("Authorization"),
            body=body,
            client=self.client_address[0] if self.client_address else "-",
        )
        resp = self.api.handle(req)
        self._write(resp, head=method in ("HEAD", "OPTIONS"))

    do_GET = _serve
    do_HEAD = _serve
    do_OPTIONS = _serve
    do_POST = _serve
    do_PATCH = _serve
    do_PUT = _serve
    do_DELETE = _serve


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, address: tuple[str, int], handler: type[_Handler], family: int, max_connections: int):
        self.address_family = family
        self._slots = threading.BoundedSemaphore(max_connections)
        super().__init__(address, handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            body = json.dumps({"error": "too many connections to this agent's API; retry shortly"}).encode()
            with contextlib.suppress(OSError):
                request.sendall(
                    b"HTTP/1.0 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                    + f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
                    + body
                )
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that went away mid-answer, a socket timeout: not worth a traceback on stderr.
        log.debug("API connection error", exc_info=True, extra={"event": "api_connection_error"})


def parse_listen(listen: str) -> tuple[str, int, int]:
    """``host:port`` or ``[v6]:port`` -> (host, port, address family)."""
    host, sep, port_text = listen.rpartition(":")
    if not sep or not port_text.isdigit() or not host:
        raise ConfigError(f"api_listen: {listen!r} must be host:port, e.g. 127.0.0.1:8008")
    family = socket.AF_INET
    if host.startswith("[") and host.endswith("]"):
        host, family = host[1:-1], socket.AF_INET6
    elif ":" in host:
        family = socket.AF_INET6
    return host, int(port_text), family


class ApiServer:
    """The HTTP server bound to ``listen`` (default: the loop's ``cfg.api_listen``); ``start``/``stop``."""

    def __init__(
        self,
        loop: ApiLoop,
        listen: str | None = None,
        auth: Authenticator | None = None,
        *,
        max_connections: int = MAX_CONNECTIONS,
        **api_options: Any,
    ):
        authenticator = auth if auth is not None else Authenticator.from_settings(loop.cfg.api)
        if not authenticator.configured:
            log.warning(
                "API authentication is not configured: mutating routes are refused; set api.auth_token_file",
                extra={"event": "api_auth_disabled"},
            )
        self.api = Api(loop, authenticator, **api_options)
        handler = type("Handler", (_Handler,), {"api": self.api})
        host, port, family = parse_listen(listen or loop.cfg.api_listen)
        try:
            self.httpd = _Server((host, port), handler, family, max_connections)
        except OSError as exc:
            raise ConfigError(f"api_listen: cannot listen on {host}:{port} ({exc.strerror or exc})") from None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="api", daemon=True)
        wait = loop.cfg.timing.loop_wait
        self._sample_every = min(max(wait / 2, 0.1), 1.0)
        self._sampler = threading.Thread(target=self._sample, name="api-lag", daemon=True)

    @property
    def port(self) -> int:
        return int(self.httpd.server_address[1])

    def _serve(self) -> None:
        self.httpd.serve_forever(poll_interval=0.5)

    def _sample(self) -> None:
        """Record the leader's position every half loop, for ``?lag=<duration>`` (no I/O)."""
        while not self._stop.wait(self._sample_every):
            try:
                self.api.observe()
            except Exception:  # pragma: no cover - observe is plain data handling
                log.exception("lag sampler failed", extra={"event": "api_error"})

    def start(self) -> None:
        self._thread.start()
        self._sampler.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self.httpd.shutdown()
        self.httpd.server_close()
