"""Files users point their generators at: datasets (Parquet, JSONL/JSON, CSV) and question templates.

Such a path is chosen by whoever holds a write key, and read with the worker's credentials, so it is
checked first: never inside bakehouse's own storage (another workspace's data lives there), and, when
BAKEHOUSE_SOURCE_ROOTS is set (comma-separated URL or folder prefixes), only under one of those.
"""

from __future__ import annotations

import os
import posixpath

import fsspec
import polars as pl

from targets import InvalidInput
from repo_store.settings import get_settings

# Bread's named datasets and the column their questions are in. bakehouse reads them from
# BAKEHOUSE_DATASETS_URL/<name>.parquet (for example a bucket the team filled once); the names are
# kept so Bread configs work unchanged where such a copy exists.
NAMED_DATASET_COLUMNS = {
    "gsm8k": "question",
    "squad": "question",
    "mmlu": "question",
    "hellaswag": "ctx",
    "code_contests": "description",
    "math_problems": "problem",
}
QUESTION_COLUMNS = ("question", "prompt", "text", "input", "query", "instruction")


def check_source(url: str, data_url: str) -> str:
    """`url` if users may read it, else InvalidInput saying why."""
    location = _normalise(url)
    if location.startswith(_normalise(data_url).rstrip("/") + "/"):
        raise InvalidInput(f"{url}: files inside bakehouse's own storage cannot be used as a source")
    roots = get_settings().source_root_list
    if roots and not any(location.startswith(_normalise(root).rstrip("/") + "/") for root in roots):
        raise InvalidInput(f"{url}: sources must be under one of BAKEHOUSE_SOURCE_ROOTS ({', '.join(roots)})")
    return url


# Protocol names fsspec serves with one filesystem: compared as one, or `s3a://` would pass for
# somewhere other than `s3://`.
_SAME_BACKEND = {"s3a": "s3", "gs": "gcs", "local": "file"}


def _normalise(url: str) -> str:
    if "::" in url:  # fsspec URL chaining (`simplecache::s3://...`) hides the real location
        raise InvalidInput(f"{url}: chained URLs cannot be used as a source")
    protocol, _, rest = url.partition("://")
    if not rest:  # a local path: resolve `..` and links so it cannot sneak out of a root
        return "file://" + os.path.realpath(url)
    protocol = _SAME_BACKEND.get(protocol.lower(), protocol.lower())
    if protocol == "file":
        return "file://" + os.path.realpath(rest)
    return f"{protocol}://{posixpath.normpath(rest)}"


def named_dataset_column(dataset: str) -> str | None:
    """The question column of one of Bread's named datasets (None for a file URL or unknown name)."""
    return NAMED_DATASET_COLUMNS.get(dataset)


def read_questions(url: str, column: str | None = None) -> list[str]:
    """All non-empty questions of one column of a dataset file, in file order (without `column`,
    the first of QUESTION_COLUMNS the file has)."""
    reader = _reader_for(url)
    try:
        with fsspec.open(url, "rb") as handle:
            frame = reader(handle)
    except FileNotFoundError:
        raise InvalidInput(f"dataset file not found: {url}") from None
    except (OSError, pl.exceptions.PolarsError) as error:
        raise InvalidInput(f"cannot read dataset {url}: {error}") from None
    if column is None:
        column = next((c for c in QUESTION_COLUMNS if c in frame.columns), None)
        if column is None:
            raise InvalidInput(f"dataset {url} has no question column; set 'column' to one of {frame.columns}")
    if column not in frame.columns:
        raise InvalidInput(f"dataset {url} has no column '{column}'; it has {frame.columns}")
    values = frame.get_column(column).cast(pl.String, strict=False).drop_nulls().to_list()
    return [v.strip() for v in values if v and v.strip()]


def _reader_for(url: str):
    path = url.split("?", 1)[0].lower()
    if path.endswith(".parquet"):
        return pl.read_parquet
    if path.endswith((".jsonl", ".ndjson")):
        return pl.read_ndjson
    if path.endswith(".json"):
        return pl.read_json
    if path.endswith(".csv"):
        return pl.read_csv
    raise InvalidInput(f"dataset {url}: unknown format (use .parquet, .jsonl, .json or .csv)")


def dataset_url(dataset: str) -> str:
    """A file URL as given, or the local copy of one of Bread's named datasets."""
    if "://" in dataset or "/" in dataset or "." in dataset:
        return dataset
    if dataset not in NAMED_DATASET_COLUMNS:
        raise InvalidInput(f"unknown dataset '{dataset}': give a file URL or one of {sorted(NAMED_DATASET_COLUMNS)}")
    root = get_settings().datasets_url
    if not root:
        raise InvalidInput(
            f"dataset '{dataset}' is not available on this machine: set BAKEHOUSE_DATASETS_URL to a folder "
            f"holding {dataset}.parquet, or give the file's URL as 'dataset'"
        )
    return f"{root.rstrip('/')}/{dataset}.parquet"


def read_text(url: str) -> str:
    """A small text file (a question template) from any fsspec URL."""
    try:
        with fsspec.open(url, "rt", encoding="utf-8") as handle:
            return handle.read()
    except FileNotFoundError:
        raise InvalidInput(f"template file not found: {url}") from None
