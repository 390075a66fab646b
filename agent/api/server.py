"""The agent's REST API (read-only routes for now; mutating routes arrive with authentication).

A small threaded stdlib HTTP server: it costs no extra dependency or memory, and every route
answers from the HA loop's last snapshot, so a slow etcd never makes a probe hang.

Routes:
  GET /health      200 while postgres runs, else 503; JSON with this member's state
  GET /primary     200 only while we are the writable leader and our lease is valid by our own
                   fence deadline; else 503
  GET /replica     200 while we are a running standby; else 503
  GET /cluster     members, leader and term as seen in the last etcd read
"""

from __future__ import annotations

import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from pgquorum.agent.ha.loop import HaLoop, role_of
from pgquorum.agent.model import Role, lsn_to_str

log = logging.getLogger("pgquorum.api")


def health_body(loop: HaLoop) -> dict[str, Any]:
    view = loop.view
    pg = view.pg
    cluster = view.cluster
    return {
        "name": loop.cfg.name,
        "role": role_of(pg, loop.memory, cluster, loop.cfg.name).value,
        "term": cluster.term if cluster else loop.memory.leader_term,
        "leader": cluster.leader.name if cluster and cluster.leader else None,
        "postgres_running": pg.running,
        "in_recovery": pg.in_recovery,
        "timeline": pg.timeline,
        "lsn": pg.best_lsn(),
        "wal_lsn": pg.wal_lsn,
        "received_lsn": pg.received_lsn,
        "replayed_lsn": pg.replayed_lsn,
        "nofailover": loop.cfg.nofailover,
        "dcs_reachable": view.dcs_ok,
        "lease_valid": loop.guard.lease_valid(),
        "reason": view.decision.reason if view.decision else None,
        "alert": view.decision.alert if view.decision else None,
    }


def cluster_body(loop: HaLoop) -> dict[str, Any]:
    view = loop.view
    cluster = view.cluster
    if cluster is None:
        return {"error": "etcd unreachable from this member", "members": [], "leader": None, "term": None}
    leader = cluster.member(cluster.leader.name) if cluster.leader else None
    leader_lsn = leader.best_lsn() if leader else None
    members = []
    for m in cluster.members:
        lsn = m.best_lsn()
        is_leader = leader is not None and m.name == leader.name
        members.append(
            {
                "name": m.name,
                "role": m.role.value,
                "state": m.state,
                "term": m.term,
                "timeline": m.timeline,
                "received_lsn": lsn_to_str(m.received_lsn),
                "replayed_lsn": lsn_to_str(m.replayed_lsn),
                "wal_lsn": lsn_to_str(m.wal_lsn),
                "lsn": lsn,
                "lag_bytes": 0 if is_leader else (max(0, leader_lsn - lsn) if leader_lsn and lsn is not None else None),
                "api_url": m.api_url,
                "conn_url": m.conn_url,
                "nofailover": m.nofailover,
            }
        )
    return {
        "leader": cluster.leader.name if cluster.leader else None,
        "term": cluster.term,
        "initialized": bool(cluster.initialize),
        "members": members,
    }


class _Handler(BaseHTTPRequestHandler):
    loop: HaLoop
    server_version = "pgquorum"

    def log_message(self, format: str, *args: Any) -> None:  # silence per-request stderr lines
        pass

    def _send(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body, default=str).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0].rstrip("/") or "/"
        loop = self.loop
        try:
            if path in ("/health", "/"):
                body = health_body(loop)
                self._send(200 if body["postgres_running"] else 503, body)
            elif path == "/primary":
                body = health_body(loop)
                ok = body["role"] == Role.LEADER.value and body["lease_valid"] and body["in_recovery"] is False
                self._send(200 if ok else 503, body)
            elif path == "/replica":
                body = health_body(loop)
                ok = body["postgres_running"] and body["in_recovery"] is True
                self._send(200 if ok else 503, body)
            elif path == "/cluster":
                self._send(200, cluster_body(loop))
            elif path == "/metrics":  # Prometheus exposition (pgquorum.agent.metrics)
                data, content_type = loop.metrics.render()
                self.send_response(200)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
            else:
                self._send(
                    404, {"error": f"no route {path}", "routes": ["/health", "/primary", "/replica", "/cluster"]}
                )
        except Exception as exc:  # never let a bug in a route kill the server thread
            log.exception("API route failed", extra={"event": "api_error", "path": path})
            self._send(500, {"error": str(exc)})


class ApiServer:
    def __init__(self, loop: HaLoop, listen: str):
        host, _, port = listen.rpartition(":")
        handler = type("Handler", (_Handler,), {"loop": loop})
        self.httpd = ThreadingHTTPServer((host, int(port)), handler)
        self.httpd.daemon_threads = True
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="api", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
