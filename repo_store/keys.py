"""API keys on storage, stored hashed: `keys/<key_id>.json` holds the SHA-256 of the secret, never it.

A secret reads `bh_<key_id>_<random>`; the id finds the record in one read, and the hash is compared
in constant time.

Requests per key are kept per UTC hour, one file per API process:

    key_usage/<key_id>/<YYYYMMDDHH>/<process_id>.json   {"requests": n, "last_used": unix time}

Only its own process writes a file, with that process's running total for the hour, so several API
processes over one storage never read-modify-write a shared count; readers add the files up.
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
USAGE_FOLDER = "key_usage"


def usage_hour(at: float) -> str:
    """The UTC hour `at` falls in, as usage folders are named (YYYYMMDDHH: sorts in time order)."""
    return time.strftime("%Y%m%d%H", time.gmtime(at))


@dataclass(frozen=True)
class ApiKey:
    key_id: str
    workspace: str
    scope: Scope
    name: str

    def allows(self, needed: Scope) -> bool:
        return SCOPES.index(self.scope) >= SCOPES.index(needed)


@dataclass(frozen=True)
class HourlyCount:
    """One process's running total for one key in one UTC hour."""

    requests: int
    last_used: float


@dataclass(frozen=True)
class KeyUsage:
    key_id: str
    requests_per_hour: dict[str, int]  # UTC hour (YYYYMMDDHH) -> requests, for the hours read that have any
    last_used: float | None  # unix time of the latest request ever recorded; None if none

    @property
    def requests(self) -> int:
        return sum(self.requests_per_hour.values())


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

    def get(self, key_id: str) -> ApiKey:
        """The key with this id; KeyError naming it when there is none."""
        record = self.storage.read_json(self._path(key_id)) if key_id.isalnum() else None
        if record is None:
            raise KeyError(f"no key with id {key_id!r}; `bakehouse keys list` shows them")
        return ApiKey(record["key_id"], record["workspace"], record["scope"], record.get("name", ""))

    def revoke(self, key_id: str) -> ApiKey:
        """Delete a key's record: its secret stops verifying (within CACHE_SECONDS in running servers)."""
        key = self.get(key_id)
        self.storage.delete_tree(self._path(key_id))
        self._verified = {digest: entry for digest, entry in self._verified.items() if entry[0].key_id != key_id}
        return key

    def list(self) -> list[ApiKey]:
        keys = []
        for name in self.storage.list_names(self.storage.path("keys")):
            record = self.storage.read_json(self.storage.path("keys", name))
            if record:
                keys.append(ApiKey(record["key_id"], record["workspace"], record["scope"], record.get("name", "")))
        return keys

    # -- usage -------------------------------------------------------------------------------------

    def _usage_path(self, key_id: str, *parts: str) -> str:
        return self.storage.path(USAGE_FOLDER, key_id, *parts)

    def record_usage(self, key_id: str, hour: str, process_id: str, count: HourlyCount) -> None:
        """Store `process_id`'s running total for `key_id` in `hour`, replacing its previous one."""
        record = {"requests": count.requests, "last_used": count.last_used}
        self.storage.write_json(self._usage_path(key_id, hour, f"{process_id}.json"), record)

    def read_usage(self, key_id: str, since: float) -> KeyUsage:
        """Requests per hour from the hour `since` falls in on, every process's files added up;
        `last_used` comes from the newest hour recorded, however old."""
        hours = self.storage.list_names(self._usage_path(key_id)) if key_id.isalnum() else []
        first = usage_hour(since)
        counts = {hour: self._hour_counts(key_id, hour) for hour in hours if hour >= first}
        requests = {hour: sum(c.requests for c in found) for hour, found in counts.items()}
        last_used = None
        if hours:
            newest = counts[hours[-1]] if hours[-1] in counts else self._hour_counts(key_id, hours[-1])
            last_used = max((c.last_used for c in newest), default=None)
        return KeyUsage(key_id, {hour: n for hour, n in requests.items() if n}, last_used)

    def _hour_counts(self, key_id: str, hour: str) -> list[HourlyCount]:
        counts = []
        for name in self.storage.list_names(self._usage_path(key_id, hour)):
            record = self.storage.read_json(self._usage_path(key_id, hour, name))
            if record is not None:
                counts.append(HourlyCount(record["requests"], record["last_used"]))
        return counts


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()
