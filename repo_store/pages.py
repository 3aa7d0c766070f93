"""The page reader: rows [offset, offset + limit) of a job's output without scanning earlier parts.

Part row counts and row-group sizes come from the manifest (or chunk markers while running), so the
reader knows which row groups hold the page before it touches a byte. Each file is opened with its
known size and no read-ahead (`cache_type="none"`), and parsed footers are cached, so a warm page
costs one ranged read per part it spans.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from typing import Any

import pyarrow.parquet as pq
from cachetools import LRUCache

from repo_store.jobs import Job
from repo_store.parts import ROW_COLUMN, TOKEN_COLUMNS, PartInfo

MAX_PAGE_LIMIT = 1000


@dataclass
class Page:
    rows_json: list[str]  # each row as stored: JSON text, ready to send without re-encoding
    offset: int
    limit: int
    lines: int
    has_more: bool
    # With include_tokens: TOKEN_COLUMNS name -> one value per row (None where a part lacks it).
    tokens: dict[str, list[Any]] | None = None

    @property
    def rows(self) -> list[dict[str, Any]]:
        rows = [json.loads(text) for text in self.rows_json]
        for name, values in (self.tokens or {}).items():
            for row, value in zip(rows, values, strict=True):
                row[name] = value
        return rows

    def rows_json_with_tokens(self) -> list[str]:
        """Rows as JSON text with the token columns appended to each object (rows stay as stored)."""
        if not self.tokens:
            return self.rows_json
        columns = list(self.tokens.items())
        out = []
        for index, text in enumerate(self.rows_json):
            extra = ",".join(f'"{name}":{json.dumps(values[index], separators=(",", ":"))}' for name, values in columns)
            out.append(f"{text[:-1]},{extra}}}")
        return out


class FooterCache:
    """Parsed Parquet footers by path. Parts are immutable (attempt-scoped names), so never stale."""

    def __init__(self, capacity: int = 512):
        self._items: LRUCache[str, pq.FileMetaData] = LRUCache(maxsize=capacity)
        self._lock = threading.Lock()  # cachetools' caches are not thread-safe; API requests share this one

    def get(self, path: str) -> pq.FileMetaData | None:
        with self._lock:
            return self._items.get(path)

    def put(self, path: str, meta: pq.FileMetaData) -> None:
        with self._lock:
            self._items[path] = meta


def read_page(job: Job, *, offset: int, limit: int, footers: FooterCache, include_tokens: bool = False) -> Page:
    if offset < 0:
        raise ValueError("offset must be >= 0")
    if not 1 <= limit <= MAX_PAGE_LIMIT:
        raise ValueError(f"limit must be between 1 and {MAX_PAGE_LIMIT}")
    parts = job.committed_parts()
    lines = sum(p.rows for p in parts)
    rows: list[str] = []
    tokens: dict[str, list[Any]] | None = {name: [] for name in TOKEN_COLUMNS} if include_tokens else None
    end = min(offset + limit, lines)
    start_of_part = 0
    for part in parts:
        end_of_part = start_of_part + part.rows
        if end_of_part > offset and start_of_part < end:
            rows.extend(_read_rows(job, part, offset - start_of_part, end - start_of_part, footers, tokens))
        start_of_part = end_of_part
        if start_of_part >= end:
            break
    return Page(rows_json=rows, offset=offset, limit=limit, lines=lines, has_more=end < lines, tokens=tokens)


def _read_rows(
    job: Job, part: PartInfo, start: int, stop: int, footers: FooterCache, tokens: dict[str, list[Any]] | None
) -> list[str]:
    """Rows [start, stop) of one part (positions relative to the part, clipped to it); with `tokens`,
    their token columns are appended to its lists (None for a part that has none)."""
    start, stop = max(start, 0), min(stop, part.rows)
    groups, first_row, row = [], None, 0
    for index, size in enumerate(part.row_groups):
        if row + size > start and row < stop:
            groups.append(index)
            if first_row is None:
                first_row = row
        row += size
    if not groups:
        return []
    path = job.part_path(part)
    with job.storage.open_for_range_reads(path, part.bytes) as handle:
        meta = footers.get(path)
        # pre_buffer coalesces the needed column chunks (adjacent for consecutive groups) into one read.
        parquet = pq.ParquetFile(handle, metadata=meta, pre_buffer=True)
        if meta is None:
            footers.put(path, parquet.metadata)
        present = set(parquet.schema_arrow.names)
        wanted = [name for name in (tokens or {}) if name in present]
        table = parquet.read_row_groups(groups, columns=[ROW_COLUMN, *wanted])
    assert first_row is not None
    table = table.slice(start - first_row, stop - start)
    for name, values in (tokens or {}).items():
        values.extend(table.column(name).to_pylist() if name in wanted else [None] * table.num_rows)
    return table.column(ROW_COLUMN).to_pylist()
