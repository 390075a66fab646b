"""A minimal Kubernetes REST client on the standard library: what the agent needs from the apiserver
(its own pod's labels, the old leader's pod for STONITH) and nothing more — no client library, whose
import alone would cost the agent more memory than its whole HA loop.

In-cluster by default: ``https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT`` with the service
account's token and CA. Every call has a hard deadline (``httpcall``), and the token never reaches a
log or an error message.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any
from urllib.parse import quote

from pgquorum.agent import httpcall

SA_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
SA_TOKEN = SA_DIR / "token"
SA_CA = SA_DIR / "ca.crt"
SA_NAMESPACE = SA_DIR / "namespace"

MERGE_PATCH = "application/merge-patch+json"


class Failure(StrEnum):
    TIMEOUT = "timeout"  # no answer in time: the apiserver may or may not have applied the call
    FAILED = "failed"  # refused, unreachable or not an apiserver


class KubeApiError(Exception):
    def __init__(self, failure: Failure, message: str) -> None:
        super().__init__(message)
        self.failure = failure


@dataclass(frozen=True)
class Endpoint:
    """Where the apiserver is and how to authenticate: base URL, token file, CA file."""

    base: str
    token_file: Path | None
    ca_file: Path | None


def in_cluster(environ: Mapping[str, str], where: str) -> Endpoint:
    """The pod's own apiserver (the ``kubernetes`` Service's env vars + the service account)."""
    host = environ.get("KUBERNETES_SERVICE_HOST")
    port = environ.get("KUBERNETES_SERVICE_PORT") or "443"
    if not host:
        raise KubeApiError(
            Failure.FAILED, f"{where}: not in a Kubernetes pod (KUBERNETES_SERVICE_HOST is unset); set api_url"
        )
    if ":" in host:  # an IPv6 service address
        host = f"[{host}]"
    return Endpoint(f"https://{host}:{port}", SA_TOKEN, SA_CA)


def service_account_namespace(where: str) -> str:
    try:
        ns = SA_NAMESPACE.read_text().strip()
    except OSError as exc:
        raise KubeApiError(
            Failure.FAILED, f"{where}.namespace: not set and {SA_NAMESPACE} is unreadable ({exc.strerror})"
        ) from None
    if not ns:
        raise KubeApiError(Failure.FAILED, f"{where}.namespace: not set and {SA_NAMESPACE} is empty")
    return ns


class KubeApi:
    def __init__(
        self, base: str, token: bytes | None, ca_file: Path | None, user_agent: str, token_file: Path | None = None
    ) -> None:
        """``token_file``: read before each call instead of a fixed ``token`` — the kubelet rotates
        projected service-account tokens in place, and a long-running agent must follow."""
        self.base = base.rstrip("/")
        self.token = token
        self.token_file = token_file
        self.ca_file = ca_file if base.startswith("https:") else None
        self.user_agent = user_agent

    def call(
        self,
        method: str,
        path: str,
        body: Mapping[str, Any] | None = None,
        *,
        timeout: float,
        content_type: str = "application/json",
        accept: frozenset[int] = frozenset({404, 409}),
        body_limit: int = httpcall.BODY_LIMIT,
    ) -> tuple[int, dict[str, Any]]:
        """(status, JSON object); 2xx and ``accept`` are returned, anything else raises ``KubeApiError``.
        An answer of ``body_limit`` bytes or more raises too: a cut JSON would read as an empty one."""
        headers = {"Accept": "application/json", "User-Agent": self.user_agent}
        if self.token_file is not None:
            try:
                self.token = self.token_file.read_bytes().strip()
            except OSError as exc:
                raise KubeApiError(Failure.FAILED, f"cannot read the token {self.token_file}: {exc.strerror}") from None
        if self.token is not None:
            headers["Authorization"] = "Bearer " + self.token.decode(errors="replace")
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = content_type
        try:
            resp = httpcall.request(
                method,
                self.base + path,
                body=data,
                headers=headers,
                timeout=timeout,
                ca_file=self.ca_file,
                body_limit=body_limit,
            )
        except httpcall.HttpTimeout as exc:
            raise KubeApiError(Failure.TIMEOUT, f"{method} {path}: {exc}") from None
        except OSError as exc:
            raise KubeApiError(Failure.FAILED, f"{method} {path} at {self.base}: {exc}") from None
        if len(resp.body) >= body_limit:
            raise KubeApiError(Failure.FAILED, f"{method} {path}: answer larger than {body_limit} bytes")
        try:
            parsed = json.loads(resp.body) if resp.body else {}
        except ValueError:
            parsed = {}
        if not isinstance(parsed, dict):
            parsed = {}
        if resp.ok or resp.status in accept:
            return resp.status, parsed
        secrets = [self.token] if self.token is not None else []
        message = parsed.get("message")
        if isinstance(message, str) and message:
            resp = httpcall.HttpResponse(resp.status, message.encode())
        detail = resp.snippet(300, secrets)
        hint = {
            401: "; the token was refused (expired or wrong token_file?)",
            403: "; grant the agent's service account this permission (see the operator's RBAC)",
        }.get(resp.status, "")
        raise KubeApiError(Failure.FAILED, f"{method} {path} -> {resp.status}: {detail}{hint}")


def pod_path(namespace: str, pod: str) -> str:
    return f"/api/v1/namespaces/{quote(namespace, safe='')}/pods/{quote(pod, safe='')}"
