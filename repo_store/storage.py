"""The one place that touches bytes: an fsspec filesystem under a root URL, plus create-if-absent.

Create-if-absent is the only primitive the job protocol needs, and it must be atomic on every backend:
- local disk: write a temp file, fsync, then `os.link` it to the final name (link fails if the name
  exists). fsspec's local `pipe_file(mode="create")` checks then writes, so it is NOT atomic.
- S3: a conditional PUT (`If-None-Match: *`) through s3fs `pipe_file(..., mode="create")`. The object
  existing (412) is FileExistsError, also when it is our own PUT that landed before a retry of it;
  so "False" means "exists now", and callers that must know who won (claims, chunk markers) put a
  token in the content and read it back. Real S3 may answer a concurrent conditional write with 409
  (a plain OSError): then the stored content decides.

Local writes are fsynced before anything names them: a marker or manifest that survives a power cut
never names a part that did not.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, BinaryIO

import fsspec
from repo_store.settings import get_settings


def data_url_from_env() -> str:
    return get_settings().data


class Storage:
    def __init__(self, url: str | None = None):
        url = url or data_url_from_env()
        protocol, _, rest = url.partition("://")
        if not rest:
            protocol, rest = "file", os.path.abspath(url)
        self.url = url
        self.protocol = protocol
        self.is_local = protocol in ("file", "local")
        if self.is_local:
            self.fs = fsspec.filesystem("file", auto_mkdir=True)
        elif protocol in ("s3", "s3a"):
            # Listings decide job state: never trust a cached one. max_concurrency=1: otherwise every
            # whole-object read starts with a HEAD to decide whether to split it.
            self.fs = fsspec.filesystem("s3", use_listings_cache=False, skip_instance_cache=True, max_concurrency=1)
        else:
            self.fs = fsspec.filesystem(protocol)
        self.root = rest.rstrip("/")

    def path(self, *parts: str) -> str:
        return "/".join([self.root, *parts])

    def url_for(self, path: str) -> str:
        """A full URL (scheme included) for one of this storage's paths."""
        return path if self.is_local else f"{self.protocol}://{path}"

    # -- reads ---------------------------------------------------------------------------------

    def read_bytes(self, path: str) -> bytes | None:
        try:
            return self.fs.cat_file(path)
        except FileNotFoundError:
            return None

    def read_json(self, path: str) -> Any | None:
        data = self.read_bytes(path)
        return None if data is None else json.loads(data)

    def exists(self, path: str) -> bool:
        return self.fs.exists(path)

    def list_names(self, folder: str) -> list[str]:
        """Names directly inside `folder` (sorted); empty when it does not exist."""
        if self.is_local:
            return sorted(name for name, _ in self._scan_local(folder, stat=False))
        return sorted(self.list_versions(folder))

    def list_versions(self, folder: str) -> dict[str, str]:
        """Names directly inside `folder`, each with a tag that changes when the file is replaced
        (S3: the ETag; local: inode and mtime), from the same one listing."""
        if self.is_local:
            return dict(self._scan_local(folder, stat=True))
        try:
            entries = self.fs.ls(folder, detail=True, refresh=True)
        except FileNotFoundError:
            return {}
        versions = {}
        for entry in entries:
            name = entry["name"].rstrip("/").rsplit("/", 1)[-1]
            if name and not name.startswith("."):  # dot files are in-flight temp files
                versions[name] = str(entry.get("ETag"))
        return versions

    @staticmethod
    def _scan_local(folder: str, *, stat: bool) -> Iterator[tuple[str, str]]:
        # os.scandir rather than fsspec's ls: names without a stat call each (a job has thousands
        # of chunk markers); the stat only when versions are asked for.
        try:
            with os.scandir(folder) as entries:
                for entry in entries:
                    if not entry.name.startswith("."):  # dot files are in-flight temp files
                        info = entry.stat() if stat else None
                        yield entry.name, f"{info.st_ino}:{info.st_mtime_ns}" if info else ""
        except (FileNotFoundError, NotADirectoryError):
            return

    def list_files(self, folder: str) -> list[str]:
        """Paths of every file under `folder` at any depth, temp files included; empty when it
        does not exist."""
        try:
            return self.fs.find(folder)
        except FileNotFoundError:
            return []

    def open_for_range_reads(self, path: str, size: int):
        """A file handle that fetches only the byte ranges asked for (no read-ahead, no HEAD)."""
        if self.is_local:
            return open(path, "rb")
        handle = self.fs.open(path, "rb", cache_type="none", size=size)
        # s3fs fetches `details` (a HEAD request) on the first ranged read unless they are known;
        # parts are immutable, so the manifest's size is all the detail there is to know.
        handle._details = {"name": path, "size": size, "type": "file"}
        return handle

    # -- writes --------------------------------------------------------------------------------

    @contextmanager
    def open_for_write(self, path: str) -> Iterator[BinaryIO]:
        """A streaming writer for a file no reader looks at until something names it (a part
        before its marker or manifest exists): no temp-file dance needed."""
        if not self.is_local:
            with self.fs.open(path, "wb") as handle:
                yield handle
            return
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())

    def write_bytes(self, path: str, data: bytes) -> None:
        """Overwrite (for files only their single writer ever changes, e.g. a heartbeat)."""
        if self.is_local:
            os.replace(_synced_temp_beside(path, data), path)
        else:
            self.fs.pipe_file(path, data)

    def write_json(self, path: str, obj: Any) -> None:
        self.write_bytes(path, _dumps(obj))

    def create_bytes(self, path: str, data: bytes) -> bool:
        """Create `path` with `data` only if absent. True if this call created it.

        When it already exists with byte-identical content, that is also reported as False: callers
        that need to know *who* won put a unique token in the content and compare.
        """
        if self.is_local:
            return self._create_local(path, data)
        try:
            self.fs.pipe_file(path, data, mode="create")
            return True
        except FileExistsError:
            return False
        except OSError:
            # 409: a concurrent conditional write; the object's content says whether it is ours.
            existing = self.read_bytes(path)
            if existing is None:
                raise
            return existing == data

    def create_json(self, path: str, obj: Any) -> bool:
        return self.create_bytes(path, _dumps(obj))

    def _create_local(self, path: str, data: bytes) -> bool:
        tmp = _synced_temp_beside(path, data)
        try:
            os.link(tmp, path)
            return True
        except FileExistsError:
            return False
        finally:
            os.unlink(tmp)

    def delete_tree(self, path: str) -> None:
        try:
            self.fs.rm(path, recursive=True)
        except FileNotFoundError:
            pass

    def size(self, path: str) -> int:
        return self.fs.size(path)


def _synced_temp_beside(path: str, data: bytes) -> str:
    """`data` in a dot file (hidden from listings) next to `path`, on disk before it gets a name."""
    folder, name = os.path.split(path)
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".{name}.{uuid.uuid4().hex}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    return tmp


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode()
