"""A bake's files: its training job, checkpoints committed with a marker, and its metrics.

    bakes/<bake>/bake.json                          the definition (immutable, like target.json)
    bakes/<bake>/runs/<bake_id>/bake/               the training job (claims, heartbeats, plan,
                                                    manifest: see repo_store.jobs)
    .../checkpoints/<step>-g<gen>-<uid>/<file>      one checkpoint's files (a new folder every write)
    .../checkpoints/<step>.json                     its commit marker, written last
    .../live/<gen>.json                             the running attempt's latest step and loss
    .../train_log_metrics.jsonl                     every metrics row, written once the bake completes

A checkpoint exists once its marker does: files written by an attempt that died before its marker
are never read, so nothing half-written becomes a checkpoint. The marker also carries the metrics
rows logged since the previous checkpoint, so the metrics of a bake that resumed hold every step
once (rows an attempt logged after its last checkpoint are redone by the next attempt).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator, Mapping
from typing import Any

from repo_store.jobs import Job
from repo_store.records import CheckpointMarker, LiveStep, gen_name, numbered
from repo_store.storage import Storage


# The files of a checkpoint (the trainer writes them, downloads and resumes read them).
ADAPTER_FILES = ("adapter_model.safetensors", "adapter_config.json")  # as peft saves an adapter
ADAPTER_ARCHIVE = "adapter.tar.gz"  # both adapter files: what a download hands out
STATE_FILE = "training_state.pt"  # optimizer, RNGs and step: what a resume needs


STEP_DIGITS = 8


def _step_name(step: int) -> str:
    return f"{step:0{STEP_DIGITS}d}"


class BakeRun:
    """The files of one bake (one `bake_id`): its job and what the training committed."""

    def __init__(self, storage: Storage, folder: str, job: Job):
        self.storage = storage
        self.folder = folder
        self.job = job

    def _path(self, *parts: str) -> str:
        return "/".join([self.folder, *parts])

    # -- checkpoints ---------------------------------------------------------------------------

    def write_checkpoint(self, step: int, files: Mapping[str, bytes], *, gen: int, token: str,
                         metrics: list[dict[str, Any]]) -> CheckpointMarker:
        """Write a checkpoint's files, then its marker. If another attempt committed this step
        first, its checkpoint stands and is returned."""
        folder = f"{_step_name(step)}-g{gen:06d}-{uuid.uuid4().hex[:8]}"
        for name, data in files.items():
            self.storage.write_bytes(self._path("checkpoints", folder, name), data)
        record = CheckpointMarker(step=step, folder=folder, files={n: len(d) for n, d in files.items()}, gen=gen,
                                  token=token, metrics=metrics)
        self.storage.create_json(self._path("checkpoints", f"{_step_name(step)}.json"), record.to_json())
        committed = self.checkpoint(step)
        assert committed is not None, "a checkpoint marker just written cannot be missing"
        return committed

    def checkpoint(self, step: int) -> CheckpointMarker | None:
        path = self._path("checkpoints", f"{_step_name(step)}.json")
        data = self.storage.read_bytes(path)
        return None if data is None else CheckpointMarker.from_bytes(data, path=path)

    def checkpoints(self) -> list[CheckpointMarker]:
        """Every committed checkpoint, oldest first."""
        records = []
        for step in numbered(self.storage.list_names(self._path("checkpoints")), width=STEP_DIGITS):
            if record := self.checkpoint(step):
                records.append(record)
        return sorted(records, key=lambda r: r.step)

    def latest_checkpoint(self) -> CheckpointMarker | None:
        records = self.checkpoints()
        return records[-1] if records else None

    def checkpoint_file_path(self, record: CheckpointMarker, name: str) -> str:
        if name not in record.files:
            raise KeyError(f"checkpoint {record.step} has no file {name!r}")
        return self._path("checkpoints", record.folder, name)

    def read_checkpoint_file(self, record: CheckpointMarker, name: str) -> bytes:
        return self.storage.read_bytes(self.checkpoint_file_path(record, name))

    # -- metrics and live progress -------------------------------------------------------------

    def iter_metrics(self) -> Iterator[dict[str, Any]]:
        """Committed metrics rows, in step order (each step once)."""
        for record in self.checkpoints():
            yield from record.metrics

    def write_metrics_file(self) -> str:
        """`train_log_metrics.jsonl` (Bread's name) from the committed rows; returns its path."""
        path = self._path("train_log_metrics.jsonl")
        self.storage.write_bytes(path, "".join(json.dumps(row) + "\n" for row in self.iter_metrics()).encode())
        return path

    def write_live(self, gen: int, live: LiveStep) -> None:
        self.storage.write_json(self._path("live", gen_name(gen)), live.to_json())

    def read_live(self, gen: int) -> LiveStep | None:
        path = self._path("live", gen_name(gen))
        data = self.storage.read_bytes(path)
        return None if data is None else LiveStep.from_bytes(data, path=path)
