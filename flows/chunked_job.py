"""The one driver of chunked jobs (stim, rollout, a rollout's shards): a job kind says how its work
splits into chunks and how to produce the missing ones; this module does the rest.

    claim the job (or a shard of it) -> plan (the first attempt fixes it) -> produce every chunk not
    committed yet -> complete: compact and publish the manifest, redoing chunks found damaged -> summary

Resuming is the normal path, not a special case: every attempt starts by asking storage what is
already committed (`ChunkedRun.committed`), so a first run and the tenth resume are the same code.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import pyarrow as pa

from repo_store import Attempt, DamagedChunks, Job, JobStatus
from repo_store.records import ChunkMarker, Plan

from flows.runtime import Engines, Progress, logger, running


@dataclass
class ChunkedRun:
    """One attempt at a chunked job (or one shard of it), as a job kind's `produce` sees it."""

    job: Job
    attempt: Attempt
    plan: Plan
    engines: Engines
    progress: Progress
    _committed_count: int | None = field(default=None, repr=False)

    def committed(self) -> dict[int, ChunkMarker]:
        """The chunks committed so far, by whichever attempt or shard (one listing)."""
        markers = self.job.chunks()
        self._committed_count = len(markers)
        return markers

    def missing(self, within: range | None = None) -> list[int]:
        """The chunks still to produce, in order (of the whole plan, or of `within`)."""
        done = self.committed()
        return [index for index in (range(self.plan.num_chunks) if within is None else within) if index not in done]

    def commit(self, index: int, table: pa.Table, stats: dict[str, Any] | None = None) -> ChunkMarker:
        """Commit chunk `index` and show the progress. The returned marker is the winner's: when
        another attempt committed it first (`won` is False), later chunks must follow its rows."""
        marker = self.attempt.commit_chunk(index, table, stats)
        self.attempt.touch()
        if self._committed_count is None:
            self.committed()
        else:  # counted, not listed: listing every marker after each commit grows with the job
            self._committed_count += 1
        self.progress.update(min(100.0, 100.0 * self._committed_count / max(self.plan.num_chunks, 1)))
        return marker

    def won(self, marker: ChunkMarker) -> bool:
        return marker.token == self.attempt.token

    def redo(self, index: int) -> None:
        """Drop committed chunk `index` (it no longer fits the chunks before it) so it is produced again."""
        self.attempt.discard_chunk(index)
        if self._committed_count is not None:
            self._committed_count -= 1


class ChunkedKind(Protocol):
    """What one kind of chunked job supplies to the driver."""

    def plan(self, engines: Engines) -> Plan:
        """How the work splits into chunks (only the first attempt's plan is kept)."""

    def produce(self, run: ChunkedRun) -> None:
        """Commit every chunk that is not committed yet (`run.missing()`, `run.commit()`)."""

    def summary(self, run: ChunkedRun) -> dict[str, Any]:
        """The job's summary once every chunk is in."""


def run_chunked_job(job: Job, kind: ChunkedKind, *, owner: str, title: str, engines: Engines | None = None,
                    on_progress: Callable[[float], None] | None = None) -> JobStatus:
    """Run (or resume) `job`; returns its status when done, or at once when someone else owns it."""
    attempt = job.claim(owner=owner)
    if attempt is None:
        return job.status()
    progress = Progress(title.replace("/", "-").replace(" ", "-"), on_progress)
    with running(attempt, engines) as engines:
        plan = job.create_plan(kind.plan(engines))
        run = ChunkedRun(job, attempt, plan, engines, progress)
        complete_repairing(run, lambda: kind.produce(run), lambda: kind.summary(run))
        progress.update(100.0)
        progress.summary(title, job.status().summary)
    return job.status()


def run_chunked_shard(job: Job, plan: Plan, produce: Callable[[ChunkedRun], None], *, scope: str, parent_gen: int,
                      owner: str, title: str, engines: Engines | None = None) -> bool:
    """Produce the missing chunks of one shard (`scope`) for attempt `parent_gen` of the job, which
    planned it and completes it. Returns False when the shard is owned elsewhere or the job is done."""
    attempt = job.claim(owner=owner, scope=scope, parent_gen=parent_gen)
    if attempt is None:
        return False
    with running(attempt, engines) as engines:
        produce(ChunkedRun(job, attempt, plan, engines, Progress(title.replace("/", "-").replace(" ", "-"))))
        attempt.release()
    return True


def complete_repairing(run: ChunkedRun, produce: Callable[[], None], summary: Callable[[], dict[str, Any]]) -> None:
    """Produce the missing chunks and complete the job. Chunks found damaged on the way (read back
    while producing, or while completing) lose their markers and are produced again; a chunk that
    comes back damaged a second time means the storage itself is failing, and the job says so."""
    repaired: set[int] = set()
    while True:
        try:
            produce()
            run.attempt.complete(run.plan.num_chunks, summary())
            return
        except DamagedChunks as damaged:
            if repaired & set(damaged.indices):
                raise RuntimeError(f"stored output keeps coming back damaged ({damaged}); check the storage") from None
            repaired.update(damaged.indices)
            for index in damaged.indices:
                run.attempt.discard_chunk(index)
            logger.info("regenerating damaged output: %s", damaged)
