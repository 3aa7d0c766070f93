"""Parquet parts: how output rows are laid out in a file.

A part has id columns (`stimulus_id`, and `trajectory_id` for rollouts) for people who query the
Parquet directly, and a `row` column holding the row as Bread sends it, as JSON text. Bread rows are
free-form chat structures (content may be a string, a list of parts or null; messages carry extra
keys), which nested Parquet types would force into one rigid schema. The page reader reads `row`.

Rollout parts also carry the token columns (TOKEN_COLUMNS), typed and outside `row`: the sampled
response's token ids and, per response token, the teacher's top-K ids and log-probabilities. They are
not part of Bread's row, they are most of a part's bytes, and the bake reads them as arrays; pages
include them only when asked. Parts written before them simply lack the columns (read as null).
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

ROW_COLUMN = "row"
# A page is at most 1000 rows; row groups of that size mean an aligned page touches one row group.
ROW_GROUP_ROWS = 1000


@dataclass(frozen=True)
class PartInfo:
    """What the manifest knows of a part, so readers never list or stat."""

    path: str  # relative to the job folder
    rows: int
    bytes: int
    row_groups: list[int]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PartInfo:
        return cls(path=data["path"], rows=data["rows"], bytes=data["bytes"], row_groups=list(data["row_groups"]))


# Typed columns beside `row` in rollout parts; a row's values for them never go into its JSON.
TOKEN_COLUMNS: dict[str, pa.DataType] = {
    "response_token_ids": pa.list_(pa.int32()),
    "teacher_top_ids": pa.list_(pa.list_(pa.int32())),
    "teacher_top_logprobs": pa.list_(pa.list_(pa.float32())),
}


def rows_to_table(rows: Sequence[dict[str, Any]], id_columns: Sequence[str], *, token_columns: bool = False) -> pa.Table:
    """One chunk's rows as a table: int64 id columns, `row` (JSON text) and, with `token_columns`,
    the TOKEN_COLUMNS taken out of each row (missing or None: null)."""
    columns: dict[str, Any] = {name: pa.array([r[name] for r in rows], pa.int64()) for name in id_columns}
    if token_columns:
        for name, kind in TOKEN_COLUMNS.items():
            columns[name] = pa.array([r.get(name) for r in rows], kind)
        rows = [{k: v for k, v in r.items() if k not in TOKEN_COLUMNS} for r in rows]
    columns[ROW_COLUMN] = pa.array(
        [json.dumps(r, ensure_ascii=False, separators=(",", ":")) for r in rows], pa.large_string()
    )
    return pa.table(columns)


def write_part(tables: Iterable[pa.Table]) -> tuple[bytes, list[int]]:
    """Serialise tables (one schema) into one Parquet file in memory: its bytes and row-group sizes."""
    buffer = io.BytesIO()
    row_groups = write_part_to(tables, buffer)
    return buffer.getvalue(), row_groups


def write_part_to(tables: Iterable[pa.Table], sink: Any) -> list[int]:
    """Stream tables (one schema) into `sink` as one Parquet file of full-size row groups; returns
    the row-group sizes. Small input tables (one per chunk) are re-grouped so that a compacted part
    has ROW_GROUP_ROWS-row groups, and at most about one row group is held in memory."""
    writer: pq.ParquetWriter | None = None
    pending: list[pa.Table] = []
    pending_rows = 0

    row_groups: list[int] = []

    def flush(final: bool) -> None:
        nonlocal pending, pending_rows
        table = pa.concat_tables(pending)
        cut = pending_rows if final else pending_rows - pending_rows % ROW_GROUP_ROWS
        if cut:
            writer.write_table(table.slice(0, cut), row_group_size=ROW_GROUP_ROWS)
            # The writer cuts a table into groups of exactly ROW_GROUP_ROWS, the last one shorter.
            row_groups.extend([ROW_GROUP_ROWS] * (cut // ROW_GROUP_ROWS) + ([cut % ROW_GROUP_ROWS] if cut % ROW_GROUP_ROWS else []))
        rest = table.slice(cut)
        pending, pending_rows = ([rest] if rest.num_rows else []), rest.num_rows

    try:
        for table in tables:
            if writer is None:
                writer = pq.ParquetWriter(sink, table.schema, compression="zstd")
            pending.append(table)
            pending_rows += table.num_rows
            if pending_rows >= ROW_GROUP_ROWS:
                flush(final=False)
        if writer is None:
            raise ValueError("write_part needs at least one table")
        if pending_rows:
            flush(final=True)
    finally:
        if writer is not None:  # also when the input failed midway: never leave a writer open
            writer.close()
    return row_groups


def decode_rows(table: pa.Table) -> list[dict[str, Any]]:
    return [json.loads(text) for text in table.column(ROW_COLUMN).to_pylist()]
