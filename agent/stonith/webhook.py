"""The ``webhook`` hook: POST the fence request as JSON; any 2xx answer means the old leader is fenced.

Body (compact JSON, keys sorted; the HMAC covers exactly these bytes)::

    {"cluster":"main","new_leader":"b","old_leader":"a","term":7}

Headers: ``Content-Type: application/json``, ``X-Pgquorum-Term``, and when configured
``Authorization: Bearer <token_file content>`` and
``X-Pgquorum-Signature: sha256=<hex HMAC-SHA256 of the body keyed with hmac_key_file's content>``.
Secret files are read at every call (rotation needs no restart), stripped of surrounding
whitespace, and never logged.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from pathlib import Path

from pgquorum.agent import httpcall
from pgquorum.agent.stonith.config import WebhookHook
from pgquorum.agent.stonith.model import FenceRequest, HookFailure, Outcome

SIGNATURE_HEADER = "X-Pgquorum-Signature"


def read_secret(path: Path, field: str) -> bytes:
    """The secret in ``path``; failures name the setting and the file, never the content."""
    try:
        secret = path.read_bytes().strip()
    except OSError as exc:
        raise HookFailure(Outcome.FAILED, f"{field}: cannot read {path} ({exc.strerror or exc})") from None
    if not secret:
        raise HookFailure(Outcome.FAILED, f"{field}: {path} is empty")
    return secret


def body_for(request: FenceRequest) -> bytes:
    payload = {
        "cluster": request.cluster,
        "old_leader": request.old_leader,
        "new_leader": request.new_leader,
        "term": request.term,
    }
    return json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()


def signature(key: bytes, body: bytes) -> str:
    return "sha256=" + hmac.new(key, body, hashlib.sha256).hexdigest()


def verify_signature(key: bytes, body: bytes, header: str | None) -> bool:
    """For receivers: constant-time check of an ``X-Pgquorum-Signature`` header against the raw body."""
    return header is not None and hmac.compare_digest(signature(key, body), header.strip())


def run_webhook(hook: WebhookHook, request: FenceRequest) -> str:
    body = body_for(request)
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "pgquorum-stonith",
        "X-Pgquorum-Term": str(request.term),
    }
    secrets: list[bytes] = []
    if hook.token_file is not None:
        token = read_secret(hook.token_file, f"{hook.where}.token_file")
        secrets.append(token)
        headers["Authorization"] = "Bearer " + token.decode(errors="replace")
    if hook.hmac_key_file is not None:
        key = read_secret(hook.hmac_key_file, f"{hook.where}.hmac_key_file")
        secrets.append(key)
        headers[SIGNATURE_HEADER] = signature(key, body)
    try:
        resp = httpcall.request(
            "POST", hook.url, body=body, headers=headers, timeout=hook.timeout, ca_file=hook.ca_file
        )
    except httpcall.HttpTimeout as exc:
        raise HookFailure(Outcome.TIMEOUT, f"POST {hook.url}: {exc}") from None
    except OSError as exc:
        raise HookFailure(Outcome.FAILED, f"POST {hook.url}: {exc}") from None
    text = resp.snippet(secrets=secrets)
    if resp.ok:
        return f"POST {hook.url} -> {resp.status}" + (f": {text}" if text else "")
    raise HookFailure(Outcome.FAILED, f"POST {hook.url} -> {resp.status}" + (f": {text}" if text else ""))
