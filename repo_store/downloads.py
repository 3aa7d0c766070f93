"""Expiring download links for files on storage (a bake's adapter archive).

On S3 a link is S3's own presigned URL. On a local folder the API serves the file itself at
`/v1/downloads/<token>`: the token names the path and its expiry and carries an HMAC of both under a
secret kept on storage (created once, create-if-absent, so every API process signs alike). A token
whose path or expiry was changed, or that has expired, is refused.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time

from repo_store.storage import Storage

SECRET_PATH = ("secrets", "download-signing.key")


class LinkRefused(Exception):
    """A download token that is malformed, tampered with or expired."""


class DownloadSigner:
    def __init__(self, storage: Storage):
        self.storage = storage
        self._secret: bytes | None = None

    def _key(self) -> bytes:
        if self._secret is None:
            path = self.storage.path(*SECRET_PATH)
            self.storage.create_json(path, {"secret": secrets.token_hex(32)})  # the first writer's stays
            self._secret = bytes.fromhex(self.storage.read_json(path)["secret"])
        return self._secret

    def presigned_url(self, path: str, expires_in: int) -> str | None:
        """S3's presigned GET URL for `path`, or None on storage that has none (local)."""
        if self.storage.is_local:
            return None
        return self.storage.fs.sign(path, expiration=expires_in)

    def token(self, path: str, expires_in: int, *, now: float | None = None) -> str:
        claims = {"path": path, "exp": int((now or time.time()) + expires_in)}
        body = base64.urlsafe_b64encode(json.dumps(claims, separators=(",", ":")).encode()).decode().rstrip("=")
        return f"{body}.{self._mac(body)}"

    def verify(self, token: str, *, now: float | None = None) -> str:
        """The path a token grants, or LinkRefused."""
        body, _, mac = token.partition(".")
        if not body or not hmac.compare_digest(mac.encode(), self._mac(body).encode()):  # bytes: any text compares
            raise LinkRefused("This download link is not valid")
        try:
            claims = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
        except ValueError:
            raise LinkRefused("This download link is not valid") from None
        if (now or time.time()) > claims["exp"]:
            raise LinkRefused("This download link has expired")
        return claims["path"]

    def _mac(self, body: str) -> str:
        return hmac.new(self._key(), body.encode(), hashlib.sha256).hexdigest()
