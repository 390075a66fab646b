"""Authentication of the REST API's mutating routes (every POST and PATCH).

* ``Authorization: Bearer <token>``, the token being the content of ``api.auth_token_file``; or
  ``Authorization: Basic ...`` with ``api.username`` and the content of ``api.password_file``.
* Comparison in constant time: both sides are hashed (SHA-256) and compared with
  ``hmac.compare_digest``, so neither the content nor the length of a secret leaks through timing.
  Only the digests are kept in memory.
* No credentials (or a scheme this agent does not accept) -> 401 with ``WWW-Authenticate``;
  wrong credentials -> 403. No authentication configured at all -> every mutating request is
  refused with 403 (secure by default), with a message saying what to configure.
* Secrets are read from their files at start (an unreadable or empty file stops the agent with a
  ``ConfigError``) and re-read when the file changes (rotation without restart). A file that
  becomes unreadable refuses every request (fail closed) until it is readable again.
  Secrets are never logged and never echoed: log lines name the file, not its content.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path

from pgquorum.agent.config import ApiSettings, ConfigError

log = logging.getLogger("pgquorum.api")

MIN_TOKEN_LENGTH = 16
REALM = "pgquorum"
NOT_CONFIGURED = (
    "mutating requests are disabled: this agent has no API authentication configured; "
    "set api.auth_token_file (a file holding a random token) or api.username and api.password_file "
    "in the agent's configuration and restart it"
)


def _digest(secret: bytes) -> bytes:
    return hashlib.sha256(secret).digest()


class SecretFile:
    """A secret kept in a file: loaded at start, re-loaded when the file changes. Holds only a digest."""

    def __init__(self, path: Path, field: str, min_length: int = 1):
        self.path = path
        self.field = field
        self.min_length = min_length
        self._lock = threading.Lock()
        self._stamp: tuple[int, int, int, int] | None = None
        self._digest: bytes | None = None
        self._warned = False
        try:
            self._load()
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{field}: {self._why(exc)}") from None
        mode = os.stat(path).st_mode
        if mode & 0o077:
            log.warning(
                "API secret file is readable by other users; chmod 600 it",
                extra={
                    "event": "api_secret_permissions",
                    "setting": field,
                    "path": str(path),
                    "mode": oct(mode & 0o777),
                },
            )

    def _why(self, exc: Exception) -> str:
        if isinstance(exc, OSError):
            return f"cannot read {self.path} ({exc.strerror or exc})"
        return str(exc)

    def _stat(self) -> tuple[int, int, int, int]:
        st = os.stat(self.path)
        return (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)

    def _load(self) -> None:
        stamp = self._stat()
        secret = self.path.read_bytes().strip()
        if not secret:
            raise ValueError(f"{self.path} is empty")
        if len(secret) < self.min_length:
            raise ValueError(
                f"the secret in {self.path} is shorter than {self.min_length} characters; "
                "use a long random value, e.g. from: openssl rand -base64 32"
            )
        self._digest = _digest(secret)
        self._stamp = stamp

    def digest(self) -> bytes | None:
        """The secret's digest, re-read if the file changed; None when it cannot be read (fail closed)."""
        with self._lock:
            try:
                if self._stat() != self._stamp:
                    self._load()
                    log.info(
                        "API secret file changed: reloaded",
                        extra={"event": "api_secret_reloaded", "setting": self.field},
                    )
                self._warned = False
                return self._digest
            except (OSError, ValueError) as exc:
                if not self._warned:
                    log.error(
                        "API secret unusable: refusing mutating requests until it is fixed",
                        extra={"event": "api_secret_unusable", "setting": self.field, "error": self._why(exc)},
                    )
                    self._warned = True
                self._stamp = None
                return None


@dataclass(frozen=True)
class AuthResult:
    status: int  # 200 when allowed, else 401 / 403
    error: str | None = None
    principal: str | None = None  # "token" or "user:<name>", for the access log

    @property
    def ok(self) -> bool:
        return self.status == 200


class Authenticator:
    def __init__(
        self, token: SecretFile | None = None, username: str | None = None, password: SecretFile | None = None
    ):
        if (username is None) != (password is None):
            raise ValueError("username and password go together")
        self._token = token
        self._username = username
        self._user_digest = _digest(username.encode()) if username is not None else None
        self._password = password

    @classmethod
    def from_settings(cls, settings: ApiSettings) -> Authenticator:
        token = None
        if settings.auth_token_file is not None:
            token = SecretFile(settings.auth_token_file, "api.auth_token_file", MIN_TOKEN_LENGTH)
        password = None
        if settings.password_file is not None:
            password = SecretFile(settings.password_file, "api.password_file")
        return cls(token, settings.username, password)

    @property
    def configured(self) -> bool:
        return self._token is not None or self._password is not None

    def challenges(self) -> list[str]:
        """``WWW-Authenticate`` values: the schemes this agent accepts."""
        out = []
        if self._token is not None:
            out.append(f'Bearer realm="{REALM}"')
        if self._password is not None:
            out.append(f'Basic realm="{REALM}", charset="UTF-8"')
        return out

    def _wanted(self) -> str:
        schemes = []
        if self._token is not None:
            schemes.append("Authorization: Bearer <token from api.auth_token_file>")
        if self._password is not None:
            schemes.append("Authorization: Basic (api.username and the password in api.password_file)")
        return " or ".join(schemes)

    def check(self, authorization: str | None) -> AuthResult:
        if not self.configured:
            return AuthResult(403, NOT_CONFIGURED)
        if authorization is None or not authorization.strip():
            return AuthResult(401, f"authentication required: send {self._wanted()}")
        scheme, _, credentials = authorization.strip().partition(" ")
        scheme = scheme.lower()
        credentials = credentials.strip()
        if not credentials:
            return AuthResult(401, f"empty credentials: send {self._wanted()}")
        if scheme == "bearer" and self._token is not None:
            expected = self._token.digest()
            given = _digest(credentials.encode("utf-8", "surrogateescape"))
            if expected is not None and hmac.compare_digest(given, expected):
                return AuthResult(200, principal="token")
            return AuthResult(403, "invalid credentials")
        if scheme == "basic" and self._password is not None:
            try:
                decoded = base64.b64decode(credentials.encode("ascii"), validate=True).decode("utf-8")
            except (binascii.Error, UnicodeError, ValueError):
                return AuthResult(403, "invalid credentials (malformed Basic authorization)")
            user, sep, password = decoded.partition(":")
            expected_pw = self._password.digest()
            assert self._user_digest is not None
            user_ok = hmac.compare_digest(_digest(user.encode()), self._user_digest)
            pw_ok = expected_pw is not None and hmac.compare_digest(_digest(password.encode()), expected_pw)
            if sep and user_ok and pw_ok:
                return AuthResult(200, principal=f"user:{self._username}")
            return AuthResult(403, "invalid credentials")
        return AuthResult(401, f"unsupported authorization scheme: send {self._wanted()}")
