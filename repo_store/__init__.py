"""Every byte on storage: resources, the job protocol (claims, chunks, manifest) and the page reader."""

from repo_store.jobs import Attempt, Cancelled, ChunkMarker, DamagedChunks, Job, JobStatus, Superseded
from repo_store.keys import ApiKey, KeyStore
from repo_store.pages import MAX_PAGE_LIMIT, Page
from repo_store.parts import rows_to_table
from repo_store.storage import Storage
from repo_store.store import DEFAULT_WORKSPACE, Store, StoredTarget, Workspace

__all__ = [
    "DEFAULT_WORKSPACE",
    "MAX_PAGE_LIMIT",
    "ApiKey",
    "Attempt",
    "Cancelled",
    "ChunkMarker",
    "DamagedChunks",
    "Job",
    "JobStatus",
    "KeyStore",
    "Page",
    "Storage",
    "Superseded",
    "Store",
    "StoredTarget",
    "Workspace",
    "rows_to_table",
]
