"""The job listing behind `GET /v1/jobs`: every stim, rollout and bake job of a workspace, in memory.

Reading every job folder per request would cost thousands of storage reads (and on S3 as many
round trips), so each API process keeps one entry per job: its names, its status as clients see it
and its status events. The listing reads storage only for entries that can still change:

- a workspace is scanned once, on its first listing (every repo, target and bake), then again in
  the background every `rescan_seconds` to find jobs started elsewhere (the CLI, the Prefect UI,
  another API process) and to drop deleted ones;
- jobs this process starts, cancels or deletes are re-read at once, and a job's status read by a
  client updates its entry (`Service` tells the index): the listing never shows less than that;
- on each listing, entries not `complete` that were read more than `refresh_seconds` ago are read
  again (a finished job never changes, so a workspace of finished jobs costs no reads at all).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

from repo_store import Job, JobStatus, Store, Workspace
from repo_store.bakes import BakeRun
from repo_store.timeline import JobEvent, read_timeline
from targets import NotFound

from bakehouse.runner import JobRef, Runner
from bakehouse.status import visible_status


@dataclass(frozen=True)
class JobEntry:
    ref: JobRef
    status: JobStatus
    events: tuple[JobEvent, ...]
    read_at: float  # time.monotonic() of the read

    @property
    def created_at(self) -> float:
        return self.status.created_at or 0.0


@dataclass(frozen=True)
class JobFilter:
    repo_name: str | None = None
    target_name: str | None = None
    bake_name: str | None = None
    kind: str | None = None
    status: str | None = None
    created_after: float | None = None
    created_before: float | None = None

    def admits(self, entry: JobEntry) -> bool:
        ref, status = entry.ref, entry.status
        return ((self.repo_name is None or ref.repo_name == self.repo_name)
                and (self.target_name is None or (ref.kind != "bake" and ref.target_name == self.target_name))
                and (self.bake_name is None or (ref.kind == "bake" and ref.target_name == self.bake_name))
                and (self.kind is None or ref.kind == self.kind)
                and (self.status is None or status.status == self.status)
                and (self.created_after is None or entry.created_at >= self.created_after)
                and (self.created_before is None or entry.created_at < self.created_before))


class JobIndex:
    def __init__(self, store: Store, runner: Runner, *, refresh_seconds: float = 1.0, rescan_seconds: float = 60.0):
        self.store, self.runner = store, runner
        self.refresh_seconds, self.rescan_seconds = refresh_seconds, rescan_seconds
        self._entries: dict[str, dict[JobRef, JobEntry]] = {}  # workspace -> its jobs
        self._scanned_at: dict[str, float] = {}
        self._rescanning: set[str] = set()
        self._lock = threading.Lock()

    def list(self, workspace: str, where: JobFilter, *, offset: int, limit: int) -> tuple[int, list[JobEntry]]:
        """(how many jobs match, the page of them), newest first."""
        self._ensure_scanned(workspace)
        now = time.monotonic()
        with self._lock:
            entries = list(self._entries[workspace].values())
        stale = [e.ref for e in entries if e.status.status != "complete" and now - e.read_at > self.refresh_seconds]
        for ref in stale:
            self.refresh(ref)
        with self._lock:
            matching = [e for e in self._entries[workspace].values() if where.admits(e)]
        matching.sort(key=lambda e: (e.created_at, e.ref.repo_name, e.ref.target_name, e.ref.kind), reverse=True)
        return len(matching), matching[offset:offset + limit]

    def refresh(self, ref: JobRef) -> None:
        """Read one job again (it was started, cancelled or deleted here, or may have moved on)."""
        self._put(ref, self._read(self.store.workspace(ref.workspace), ref))

    def record(self, ref: JobRef, status: JobStatus, events: list[JobEvent]) -> None:
        """What a client was just shown of one job: the listing says no less."""
        if status.created_at is not None or status.status != "not_started":
            self._put(ref, JobEntry(ref, status, tuple(e for e in events if e.kind == "status"), time.monotonic()))

    def _put(self, ref: JobRef, entry: JobEntry | None) -> None:
        with self._lock:
            jobs = self._entries.get(ref.workspace)
            if jobs is None:
                return  # not listed yet: the first listing scans it
            if entry is None:
                jobs.pop(ref, None)
            else:
                jobs[ref] = entry

    def _ensure_scanned(self, workspace: str) -> None:
        if workspace not in self._scanned_at:
            self._scan(workspace)
        elif time.monotonic() - self._scanned_at[workspace] > self.rescan_seconds and workspace not in self._rescanning:
            self._rescanning.add(workspace)
            threading.Thread(target=self._scan, args=(workspace,), name=f"job-index-{workspace}", daemon=True).start()

    def _scan(self, workspace: str) -> None:
        started = time.monotonic()
        try:
            ws = self.store.workspace(workspace)
            found = {}
            for ref in _job_refs(ws):
                entry = self._read(ws, ref)
                if entry is not None:
                    found[ref] = entry
            with self._lock:
                known = self._entries.get(workspace, {})
                # An entry re-read during the scan (a start here) is newer than the scan's own read.
                self._entries[workspace] = {ref: max(entry, known.get(ref, entry), key=lambda e: e.read_at)
                                            for ref, entry in found.items()}
                self._scanned_at[workspace] = started
        finally:
            self._rescanning.discard(workspace)

    def _read(self, ws: Workspace, ref: JobRef) -> JobEntry | None:
        """The job's entry, None when it does not exist (never asked for, or deleted)."""
        try:
            job, bake = _job_of(ws, ref)
        except NotFound:
            return None
        status = visible_status(self.runner, ref, job, bake).status
        if status.created_at is None and status.status == "not_started":
            return None
        events = tuple(e for e in read_timeline(job) if e.kind == "status")
        return JobEntry(ref, status, events, time.monotonic())


def _job_of(ws: Workspace, ref: JobRef) -> tuple[Job, BakeRun | None]:
    """The job, and its bake run for a bake."""
    if ref.kind == "bake":
        bake = ws.get_bake(ref.repo_name, ref.target_name)
        if bake.bake_id != ref.target_id:
            raise NotFound("a newer bake of that name")
        run = ws.bake_run(ref.repo_name, bake)
        return run.job, run
    target = ws.get_target(ref.repo_name, ref.target_name)
    if target.target_id != ref.target_id:
        raise NotFound("a newer target of that name")
    return ws.job_of(ref.repo_name, target, ref.kind), None


def _job_refs(ws: Workspace) -> Iterator[JobRef]:
    """Every job that may exist in the workspace (the targets' stim and rollout, every bake)."""
    for repo_name in ws.list_repos():
        for target_name in ws.list_targets(repo_name):
            try:
                target = ws.get_target(repo_name, target_name)
            except NotFound:
                continue  # deleted while we looked
            for kind in ("stim", "rollout"):
                yield JobRef(ws.name, repo_name, target_name, target.target_id, kind)
        for bake_name in ws.list_bakes(repo_name):
            try:
                bake = ws.get_bake(repo_name, bake_name)
            except NotFound:
                continue
            yield JobRef(ws.name, repo_name, bake_name, bake.bake_id, "bake")
