"""Live job events over Server-Sent Events: one watcher per job, shared by every stream on it.

A stream replays the job's timeline (repo_store.timeline: `status` events for status and phase
changes, `log` events for the rest), then sends a `progress` event whenever the lines, percentage,
phase or training step move, and new timeline events as they happen. It ends after the job's final
status (`complete` or `failed`) has been sent. Timeline events carry their position in the timeline
as the SSE id, so a client that reconnects with `Last-Event-ID` gets only what it has not seen.

However many clients watch one job, storage is read by one poller per API process (the job pays
nothing per client); the poller stops when its last client leaves.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from repo_store.timeline import JobEvent, iso_time

POLL_SECONDS = 0.25
FINAL = ("complete", "failed")


@dataclass(frozen=True)
class Snapshot:
    """What one look at a job shows: where it is now (`progress`) and everything that happened."""

    progress: dict[str, Any]
    timeline: list[JobEvent] = field(default_factory=list)
    error: str | None = None

    @property
    def final(self) -> bool:
        return self.progress.get("status") in FINAL


class JobWatch:
    """Polls one job while anyone listens; listeners wait for the next snapshot."""

    def __init__(self, read: Callable[[], Snapshot], on_idle: Callable[[], None]):
        self._read = read
        self._on_idle = on_idle
        self.snapshot: Snapshot | None = None
        self.version = 0
        self._changed = asyncio.Event()
        self._listeners = 0
        self._task: asyncio.Task | None = None

    async def _poll(self) -> None:
        try:
            while self._listeners:
                snapshot = await asyncio.to_thread(self._read)
                if snapshot != self.snapshot:
                    self.snapshot, self.version = snapshot, self.version + 1
                    self._changed.set()
                    self._changed = asyncio.Event()
                await asyncio.sleep(POLL_SECONDS)
        finally:
            self._task = None
            self._on_idle()

    async def next(self, seen_version: int) -> tuple[int, Snapshot]:
        """The first snapshot newer than `seen_version` (waits for one)."""
        while self.version <= seen_version or self.snapshot is None:
            if self._task is None:
                self._task = asyncio.create_task(self._poll())
            await self._changed.wait()
        return self.version, self.snapshot

    def __enter__(self) -> JobWatch:
        self._listeners += 1
        return self

    def __exit__(self, *exc: Any) -> None:
        self._listeners -= 1


class JobWatches:
    """The watchers of one API process, by job."""

    def __init__(self) -> None:
        self._watches: dict[tuple, JobWatch] = {}

    def watch(self, key: tuple, read: Callable[[], Snapshot]) -> JobWatch:
        if key not in self._watches:
            self._watches[key] = JobWatch(read, on_idle=lambda: self._forget(key))
        return self._watches[key]

    def _forget(self, key: tuple) -> None:
        watch = self._watches.get(key)
        if watch is not None and not watch._listeners:
            del self._watches[key]


async def job_events(watch: JobWatch, last_event_id: int | None) -> AsyncIterator[dict[str, Any]]:
    """The SSE events of one stream (dicts for sse-starlette: event, id, data)."""
    sent = -1 if last_event_id is None else last_event_id  # timeline positions already delivered
    version, last_progress = 0, None
    with watch:
        while True:
            version, snapshot = await watch.next(version)
            if snapshot.progress != last_progress:
                last_progress = snapshot.progress
                yield {"event": "progress", "data": json.dumps(snapshot.progress)}
            for position in range(sent + 1, len(snapshot.timeline)):
                event = snapshot.timeline[position]
                data = event.to_json() if event.kind == "status" else {"message": event.note, "timestamp": iso_time(event.at)}
                yield {"event": event.kind, "id": str(position), "data": json.dumps(data)}
                sent = position
            if snapshot.final:
                last = snapshot.timeline[-1] if snapshot.timeline else None
                if last is None or last.status != snapshot.progress["status"]:
                    # The final word came from the runner (a worker that never claimed the job).
                    yield {"event": "status", "data": json.dumps({"status": snapshot.progress["status"], "phase": "failed",
                                                                  "note": snapshot.error})}
                return
