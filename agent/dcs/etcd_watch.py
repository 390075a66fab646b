"""Wake the HA loop the moment the leader key changes (etcd watch over the JSON gateway).

Only a latency optimisation: a member that polls every ``loop_wait`` notices a vanished leader key
up to ``loop_wait`` late; the watch cuts that to milliseconds. Correctness never depends on it --
the loop still reads the whole cluster itself -- so errors just mean a reconnect after a pause.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import socket
import threading
from collections.abc import Callable, Sequence

import requests

log = logging.getLogger(__name__)

RECONNECT_PAUSE = 0.5
IDLE_RECONNECT = 30.0  # an idle stream is re-created now and then, so a half-dead connection cannot linger


class LeaderWatch:
    def __init__(self, endpoints: Sequence[str], key: str, on_change: Callable[[], None]):
        self._endpoints = [e.rstrip("/") for e in endpoints]
        self._key = base64.b64encode(key.encode()).decode("ascii")
        self._on_change = on_change
        self._stop = threading.Event()
        self._session = requests.Session()
        self._response: requests.Response | None = None
        self._thread = threading.Thread(target=self._run, name="leader-watch", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Returns at once: the reading thread sees its stream end and exits.

        ``response.close()`` would wait for the reader's buffer lock, held by a read that returns only
        on the next event or the idle timeout -- a SIGTERMed leader then kept serving (and kept its
        key) for seconds. Shutting the socket down needs no lock and ends that read immediately.
        """
        self._stop.set()
        response = self._response
        if response is None:
            return
        connection = getattr(response.raw, "connection", None)
        sock = getattr(connection, "sock", None)
        if isinstance(sock, socket.socket):
            with contextlib.suppress(OSError):  # already closed by the reader: nothing to stop
                sock.shutdown(socket.SHUT_RDWR)

    def join(self, timeout: float) -> bool:
        """Wait for the reading thread to end; True when it has."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _run(self) -> None:
        index = 0
        while not self._stop.is_set():
            url = self._endpoints[index % len(self._endpoints)] + "/v3/watch"
            try:
                self._watch(url)
            except Exception as exc:  # any failure (also close() racing a read at shutdown): reconnect later
                if self._stop.is_set():
                    return
                log.debug("leader watch interrupted: %s", exc)
                index += 1
            self._stop.wait(RECONNECT_PAUSE)

    def _watch(self, url: str) -> None:
        body = {"create_request": {"key": self._key}}
        with self._session.post(url, json=body, stream=True, timeout=(1.0, IDLE_RECONNECT)) as response:
            self._response = response
            response.raise_for_status()
            for line in response.iter_lines():
                if self._stop.is_set():
                    return
                if not line:
                    continue
                result = json.loads(line).get("result", {})
                if result.get("events"):
                    self._on_change()
