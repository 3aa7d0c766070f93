"""Parquet parts: how output rows are laid out in a file.

A part has id columns (`stimulus_id`, and `trajectory_id` for rollouts) for people who query the
Parquet directly, and a `row` column holding the row as Bread sends it, as JSON text. Bread rows are
free-form chat structures (content may be a string, a list of parts or null; messages carry extra
keys), which nested Parquet types would force into one rigid schema. The page reader reads `row`.

Beside `row`, parts carry typed copies of its fields for tools that read Parquet (polars, DuckDB,
`datasets`): ROW_COLUMNS. Chat messages are `list<struct<role, content, content_parts, extra>>`:
`content` holds string content; `content_parts` (list content) and `extra` (other keys: `tool_calls`,
`name`, ...) hold JSON text, so every message round-trips exactly (`messages_from_column`). `row`
stays the wire form: a page is served from it by one ranged read, with no per-row encoding.

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


MESSAGE = pa.struct([("role", pa.string()), ("content", pa.string()), ("content_parts", pa.string()),
                     ("extra", pa.string())])
USAGE = pa.struct([("prompt_tokens", pa.int64()), ("completion_tokens", pa.int64()), ("total_tokens", pa.int64())])
RESPONSE = pa.struct([("role", pa.string()), ("content", pa.string()), ("usage", USAGE)])


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def message_to_column(message: dict[str, Any]) -> dict[str, Any]:
    """A chat message as a MESSAGE value: string content typed, the open parts as JSON text."""
    content = message.get("content")
    extra = {k: v for k, v in message.items() if k not in ("role", "content")}
    return {
        "role": message.get("role"),
        "content": content if isinstance(content, str) else None,
        "content_parts": None if content is None or isinstance(content, str) else _json(content),
        "extra": _json(extra) if extra else None,
    }


def messages_from_column(values: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
    """The messages exactly as the row had them, from a typed message column's value."""
    if values is None:
        return None
    messages = []
    for value in values:
        message: dict[str, Any] = {"role": value["role"]}
        if value["content"] is not None:
            message["content"] = value["content"]
        elif value["content_parts"] is not None:
            message["content"] = json.loads(value["content_parts"])
        if value["extra"] is not None:
            message.update(json.loads(value["extra"]))
        if "content" not in message:
            message["content"] = None
        messages.append(message)
    return messages


def _messages_of(side: str) -> Any:
    """Reads one side's messages (`unconditioned_stimulus`: the teacher's) as typed column values."""
    def read(row: dict[str, Any]) -> list[dict[str, Any]] | None:
        stimulus = row.get(side)
        return None if stimulus is None else [message_to_column(m) for m in stimulus.get("messages", [])]

    return read


def _question(row: dict[str, Any]) -> str | None:
    """The last user turn's text (what the stim generator asked)."""
    for message in reversed((row.get("conditioned_stimulus") or {}).get("messages", [])):
        if message.get("role") == "user":
            content = message.get("content")
            return content if isinstance(content, str) else None
    return None


# Typed copies of a row's fields: name -> (type, how to read it from the row).
ROW_COLUMNS: dict[str, tuple[pa.DataType, Any]] = {
    "question": (pa.string(), _question),
    "teacher_messages": (pa.list_(MESSAGE), _messages_of("unconditioned_stimulus")),
    "student_messages": (pa.list_(MESSAGE), _messages_of("conditioned_stimulus")),
    "response": (RESPONSE, lambda r: r.get("response")),
    "model": (pa.string(), lambda r: r.get("model")),
    "temperature": (pa.float64(), lambda r: r.get("temperature")),
    "seed": (pa.int64(), lambda r: r.get("seed")),
    "finish_reason": (pa.string(), lambda r: r.get("finish_reason")),
    "error": (pa.string(), lambda r: r.get("error")),
}


def rows_to_table(rows: Sequence[dict[str, Any]], id_columns: Sequence[str], *, token_columns: bool = False) -> pa.Table:
    """One chunk's rows as a table: int64 id columns, typed ROW_COLUMNS, `row` (JSON text) and, with
    `token_columns`, the TOKEN_COLUMNS taken out of each row (missing or None: null)."""
    columns: dict[str, Any] = {name: pa.array([r[name] for r in rows], pa.int64()) for name in id_columns}
    for name, (kind, read) in ROW_COLUMNS.items():
        columns[name] = pa.array([read(r) for r in rows], kind)
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


def write_part_to(tables: Iterable[pa.Table], sink: Any, *, schema: pa.Schema | None = None) -> list[int]:
    """Stream tables (one schema) into `sink` as one Parquet file of full-size row groups; returns
    the row-group sizes. Small input tables (one per chunk) are re-grouped so that a compacted part
    has ROW_GROUP_ROWS-row groups, and at most about one row group is held in memory. With `schema`,
    tables of other schemas are conformed to it (missing columns null)."""
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
            if schema is not None:
                table = conform(table, schema)
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


def conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """`table` with `schema`'s columns in its order: its own where it has them, nulls elsewhere."""
    columns = [table.column(f.name).cast(f.type) if f.name in table.column_names else pa.nulls(table.num_rows, f.type)
               for f in schema]
    return pa.Table.from_arrays(columns, schema=schema)


def decode_rows(table: pa.Table) -> list[dict[str, Any]]:
    return [json.loads(text) for text in table.column(ROW_COLUMN).to_pylist()]
