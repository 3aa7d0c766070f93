"""API keys on storage, stored hashed: `keys/<key_id>.json` holds the SHA-256 of the secret, never it.

A secret reads `bh_<key_id>_<random>`; the id finds the record in one read, and the hash is compared
in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from typing import Literal

from targets import validate_name

from repo_store.storage import Storage

Scope = Literal["read", "write", "admin"]
SCOPES: tuple[Scope, ...] = ("read", "write", "admin")


@dataclass(frozen=True)
class ApiKey:
    key_id: str
    workspace: str
    scope: Scope
    name: str

    def allows(self, needed: Scope) -> bool:
        return SCOPES.index(self.scope) >= SCOPES.index(needed)


class KeyStore:
    # Verified keys are remembered briefly so a busy client costs one storage read a minute, not one
    # per request; a revoked key therefore stops working within this time in running servers.
    CACHE_SECONDS = 60.0

    def __init__(self, storage: Storage):
        self.storage = storage
        self._verified: dict[str, tuple[ApiKey, float]] = {}

    def _path(self, key_id: str) -> str:
        return self.storage.path("keys", f"{key_id}.json")

    def create(self, *, workspace: str, scope: Scope, name: str = "") -> tuple[ApiKey, str]:
        """A new key and its secret. The secret is returned once and cannot be recovered."""
        validate_name(workspace, "workspace")
        if scope not in SCOPES:
            raise ValueError(f"scope must be one of {SCOPES}")
        key_id = secrets.token_hex(8)
        secret = f"bh_{key_id}_{secrets.token_urlsafe(24)}"
        record = {
            "key_id": key_id,
            "workspace": workspace,
            "scope": scope,
            "name": name,
            "sha256": _digest(secret),
            "created_at": time.time(),
        }
        if not self.storage.create_json(self._path(key_id), record):
            raise RuntimeError("key id collision; try again")
        return ApiKey(key_id, workspace, scope, name), secret

    def verify(self, secret: str) -> ApiKey | None:
        digest = _digest(secret)
        cached = self._verified.get(digest)
        if cached is not None and time.monotonic() - cached[1] < self.CACHE_SECONDS:
            return cached[0]
        key = self._verify_on_storage(secret, digest)
        if key is not None:
            self._verified[digest] = (key, time.monotonic())
        return key

    def _verify_on_storage(self, secret: str, digest: str) -> ApiKey | None:
        parts = secret.split("_")
        if len(parts) < 3 or parts[0] != "bh" or not parts[1].isalnum():
            return None
        record = self.storage.read_json(self._path(parts[1]))
        if record is None:
            return None
        if not hmac.compare_digest(record["sha256"], digest):
            return None
        return ApiKey(record["key_id"], record["workspace"], record["scope"], record.get("name", ""))

    def revoke(self, key_id: str) -> ApiKey:
        """Delete a key's record: its secret stops verifying (within CACHE_SECONDS in running servers)."""
        record = self.storage.read_json(self._path(key_id)) if key_id.isalnum() else None
        if record is None:
            raise KeyError(f"no key with id {key_id!r}; `bakehouse keys list` shows them")
        self.storage.delete_tree(self._path(key_id))
        self._verified = {digest: entry for digest, entry in self._verified.items() if entry[0].key_id != key_id}
        return ApiKey(record["key_id"], record["workspace"], record["scope"], record.get("name", ""))

    def list(self) -> list[ApiKey]:
        keys = []
        for name in self.storage.list_names(self.storage.path("keys")):
            record = self.storage.read_json(self.storage.path("keys", name))
            if record:
                keys.append(ApiKey(record["key_id"], record["workspace"], record["scope"], record.get("name", "")))
        return keys


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()
