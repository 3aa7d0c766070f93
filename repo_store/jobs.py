"""The job protocol: claims, chunks and a manifest on storage. Storage is the only source of truth.

A job (one stim or one rollout of one target) lives in one folder:

    plan.json                  created once by the first attempt: how the work splits into chunks
    claims/000003.json         create-if-absent; the highest generation owns the job
    heartbeats/000003.json     overwritten by that owner only; a claim is live while this is fresh
    failures/000003.json       the owner gave up: the job is `failed` with this error
    parts/000012-g000003-<uid>.parquet   chunk 12 as written by attempt 3 (a new name every write)
    chunks/000012.json         create-if-absent commit marker for chunk 12, pointing at its part
    manifest.json              create-if-absent commit point of the whole job: `complete`
    cancels/000003.json        someone asked attempt 3 to stop; it fails with "cancelled"
    starts/000003.json         someone asked for attempt 3 (the API queued it): the job's timeline
    (a chunk whose part turns out damaged when the job completes loses its marker and is redone)
    shards/<scope>/{claims,heartbeats,failures}/   the same claim protocol for one shard of a job

Resuming is the normal path: a new attempt claims the next generation, skips every chunk that has a
marker, and does the rest. A crashed attempt's parts without a marker are never read. Two attempts
racing on one chunk (a lease that ran out under a slow owner) is harmless: the first marker wins,
the other attempt continues from the winner's rows, and only the newest attempt may complete.
At completion the chunk parts are compacted into large parts (full row groups) so pages of a finished
job cost one ranged read.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any, Literal, TypeVar

import pyarrow as pa
import pyarrow.parquet as pq

from repo_store.parts import ROW_COLUMN, PartInfo, decode_rows, write_part, write_part_to
from repo_store.records import (PLAN_BY_KIND, ChunkMarker, Claim, Failure, Heartbeat, JobLayout, Manifest, Plan,
                                Record, Stamp, gen_name, numbered)
from repo_store.storage import Storage
from repo_store.settings import get_settings

JobKind = Literal["stim", "rollout", "bake"]
JobState = Literal["not_started", "running", "complete", "failed"]

COMPACTED_PART_ROWS = 25_000
_ENDED_IN_THIS_PROCESS: set[str] = set()  # tokens of attempts this process has finished with


def lease_seconds() -> float:
    return get_settings().lease_seconds


def stall_seconds() -> float:
    """How long work may show no progress before its attempt stops heartbeating (model loading
    counts: keep it well above the slowest engine start)."""
    return get_settings().stall_seconds
R = TypeVar("R", bound=Record)
Clock = Callable[[], float]


@dataclass
class JobStatus:
    status: JobState
    lines: int = 0
    total_expected: int | None = None
    progress_percent: float | None = None
    error: str | None = None
    attempt: int | None = None
    summary: dict[str, Any] = field(default_factory=dict)
    phase: str | None = None  # what the running attempt is doing (Attempt.set_phase); "queued" before
    created_at: float | None = None  # first asked for (a start request, else the first claim)
    started_at: float | None = None  # the first attempt's claim
    completed_at: float | None = None
    stalled: bool = False  # running, but no progress for BAKEHOUSE_STALL_SECONDS


class Job:
    def __init__(self, storage: Storage, folder: str, kind: JobKind, *, clock: Clock = time.time):
        self.storage = storage
        self.folder = folder
        self.kind = kind
        self.layout = JobLayout(folder)
        self.clock = clock  # wall-clock seconds for every time written and every lease judged
        # The manifest and the plan never change once written, nor does a claim, so parsed copies
        # stay true. A chunk marker only changes when its owner repairs a damaged chunk, so parsed
        # markers are kept with the version tag their listing showed and read again when it changes.
        self._chunk_cache: dict[int, tuple[str | None, ChunkMarker]] = {}
        self._manifest: Manifest | None = None
        self._plan: Plan | None = None
        self._claim_cache: dict[tuple[str, int], Claim] = {}
        self._created: float | None = None

    def _read(self, record: type[R], path: str) -> R | None:
        """The record at `path`, validated (RecordError if unreadable); None when there is none."""
        data = self.storage.read_bytes(path)
        return None if data is None else record.from_bytes(data, path=path)

    # -- reading state -------------------------------------------------------------------------

    def manifest(self) -> Manifest | None:
        if self._manifest is None:
            self._manifest = self._read(Manifest, self.layout.manifest)
        return self._manifest

    def plan(self) -> Plan | None:
        if self._plan is None:  # written once, never changed: read until it exists, then keep it
            self._plan = self._read(PLAN_BY_KIND[self.kind], self.layout.plan)
        return self._plan

    def chunks(self) -> dict[int, ChunkMarker]:
        """Every committed chunk (one listing; markers already seen are not re-read)."""
        found: dict[int, ChunkMarker] = {}
        versions = self.storage.list_versions(self.layout.chunks)
        for index in numbered(list(versions)):
            version = versions[gen_name(index)]
            cached = self._chunk_cache.get(index)
            if cached is None or cached[0] != version:
                marker = self._read(ChunkMarker, self.layout.chunk(index))
                if marker is None:
                    continue
                cached = self._chunk_cache[index] = (version, marker)
            found[index] = cached[1]
        return found

    def chunk(self, index: int) -> ChunkMarker | None:
        """One committed chunk's marker (one read, none once seen), None when it is not committed."""
        if index not in self._chunk_cache:
            marker = self._read(ChunkMarker, self.layout.chunk(index))
            if marker is None:
                return None
            self._chunk_cache[index] = (None, marker)  # the next listing tags it with its version
        return self._chunk_cache[index][1]

    def committed_parts(self) -> list[PartInfo]:
        """Parts in output order: the manifest's when complete, else the unbroken prefix of chunks.

        Only the prefix is shown while running so that a page, once read, never changes: a chunk that
        finishes early (another shard) appears when every chunk before it is there.
        """
        manifest = self.manifest()
        if manifest is not None:
            return list(manifest.parts)
        chunks = self.chunks()
        parts = []
        index = 0
        while index in chunks:
            parts.append(chunks[index].part)
            index += 1
        return parts

    def _claim_gens(self, scope: str = "") -> list[int]:
        return numbered(self.storage.list_names(self.layout.claims_folder(scope)))

    def read_claim(self, gen: int, scope: str = "") -> Claim | None:
        """A claim never changes once created: each is read once per Job object."""
        key = (scope, gen)
        if key not in self._claim_cache:
            claim = self._read(Claim, self.layout.claim(gen, scope))
            if claim is None:
                return None
            self._claim_cache[key] = claim
        return self._claim_cache[key]

    def latest_claim(self, scope: str = "") -> Claim | None:
        """The newest claim of the job (or of one shard); None before any. A claim listed but not
        readable (deleted under the listing) reads as one whose lease has long run out."""
        gens = self._claim_gens(scope)
        if not gens:
            return None
        return self.read_claim(gens[-1], scope) or Claim(gen=gens[-1], token="", at=0.0)

    def claims(self, scope: str = "") -> list[Claim]:
        """Every claim of the job (or of one shard), oldest first."""
        return [claim for gen in self._claim_gens(scope) if (claim := self.read_claim(gen, scope)) is not None]

    def read_heartbeat(self, gen: int, scope: str = "") -> Heartbeat | None:
        return self._read(Heartbeat, self.layout.heartbeat(gen, scope))

    def read_failure(self, gen: int, scope: str = "") -> Failure | None:
        """Why attempt `gen` gave up, None if it did not."""
        return self._read(Failure, self.layout.failure(gen, scope))

    def read_cancel(self, gen: int) -> Stamp | None:
        return self._read(Stamp, self.layout.cancel(gen))

    def start_requests(self) -> dict[int, float]:
        """When each attempt was asked for (attempt number -> time), by `request_start`."""
        requests = {}
        for gen in numbered(self.storage.list_names(self.layout.starts)):
            if (stamp := self._read(Stamp, self.layout.start(gen))) is not None:
                requests[gen] = stamp.at
        return requests

    def request_start(self) -> None:
        """Note that the next attempt was asked for (queued); the first request of it stands."""
        latest = self.latest_claim()
        gen = (latest.gen + 1) if latest else 1
        self.storage.create_json(self.layout.start(gen), Stamp(at=self.clock()).to_json())

    def claim_alive(self, claim: Claim, scope: str = "", beat: Heartbeat | None = None) -> bool:
        """Whether the attempt of `claim` still owns its job (or shard): its lease is fresh and, on
        this machine, its process is alive."""
        beat = beat or self.read_heartbeat(claim.gen, scope)
        if beat is not None and beat.released:
            return False
        last = beat.at if beat is not None else claim.at
        if self.clock() - last > lease_seconds():
            return False
        # Same machine: a dead pid frees the job at once instead of after the lease; so does an
        # attempt of this very process that has ended (even if storage refused to record it).
        if claim.token in _ENDED_IN_THIS_PROCESS:
            return False
        if claim.host == socket.gethostname() and claim.pid:
            return process_alive(claim.pid)
        return True

    def owner_alive(self, scope: str = "") -> bool | None:
        """Whether the latest claim (of the job or of a shard) is live; None when never claimed."""
        latest = self.latest_claim(scope)
        return None if latest is None else self.claim_alive(latest, scope)

    def status(self) -> JobStatus:
        plan = self.plan()
        total = plan.total_expected if plan is not None else None
        manifest = self.manifest()
        if manifest is None:
            status = self._unfinished_status(plan, total)
            # The owner may have published the manifest and exited between our reads: look once
            # more before calling a finished job failed.
            manifest = self.manifest()
            if manifest is None:
                return status
        first = self.read_claim(1)
        return JobStatus(
            "complete",
            lines=manifest.lines,
            total_expected=total,
            progress_percent=100.0,
            attempt=manifest.gen,
            summary=manifest.summary,
            phase="complete",
            created_at=self._created_at(first),
            started_at=first.at if first else None,
            completed_at=manifest.completed_at,
        )

    def _created_at(self, first_claim: Claim | None) -> float | None:
        """The first start request, or the first claim for a job started without the API."""
        if self._created is None:
            requests = self.start_requests()
            self._created = min(requests.values()) if requests else (first_claim.at if first_claim else None)
        return self._created

    def _unfinished_status(self, plan: Plan | None, total: int | None) -> JobStatus:
        claim = self.latest_claim()
        if claim is None:
            requests = self.start_requests()
            created = min(requests.values()) if requests else None
            return JobStatus("not_started", total_expected=total, created_at=created,
                             phase="queued" if requests else None)
        first = self.read_claim(1)
        chunks = self.chunks()
        base = JobStatus("running", lines=sum(p.rows for p in self.committed_parts()), total_expected=total,
                         progress_percent=_progress(chunks, plan), attempt=claim.gen,
                         created_at=self._created_at(first), started_at=first.at if first else None)
        failure = self.read_failure(claim.gen)
        if failure is not None:
            return replace(base, status="failed", error=failure.error, summary=failure.summary, phase="failed")
        beat = self.read_heartbeat(claim.gen)
        if not self.claim_alive(claim, beat=beat):
            if self.cancel_requested(claim.gen):
                return replace(base, status="failed", error="cancelled", phase="failed")
            error = "the job stopped without finishing (its worker is gone); start it again to resume"
            return replace(base, status="failed", error=error, phase="failed")
        last_sign = (beat.progress_at or beat.at) if beat is not None else claim.at
        return replace(base, phase=(beat.phase if beat else None) or "starting",
                       stalled=self.clock() - last_sign > stall_seconds())

    # -- taking part ---------------------------------------------------------------------------

    def claim(self, owner: str = "", scope: str = "", parent_gen: int | None = None) -> Attempt | None:
        """Become the owner of the job (or of shard `scope` of it).

        Returns None when the job is complete or someone live owns it. A shard attempt carries the
        generation of the job attempt it works for, so cancelling that attempt stops it too.
        """
        if self.manifest() is not None:
            return None
        latest = self.latest_claim(scope)
        if latest is not None and self.claim_alive(latest, scope):
            return None
        gen = (latest.gen + 1) if latest else 1
        claim = Claim(gen=gen, owner=owner, token=uuid.uuid4().hex, host=socket.gethostname(), pid=os.getpid(),
                      at=self.clock())
        path = self.layout.claim(gen, scope)
        if not self.storage.create_json(path, claim.to_json()):
            # Lost the race, or our own PUT landed and its retry was refused: the token decides.
            stored = self._read(Claim, path)
            if stored is None or stored.token != claim.token:
                return None
        attempt = Attempt(self, gen, claim.token, scope, gen if not scope else parent_gen)
        attempt.heartbeat()
        return attempt

    def request_cancel(self) -> int | None:
        """Ask the current attempt (and its shards) to stop; returns its generation, None if idle."""
        latest = self.latest_claim()
        if latest is None or self.manifest() is not None:
            return None
        self.storage.create_json(self.layout.cancel(latest.gen), Stamp(at=self.clock()).to_json())
        return latest.gen

    def cancel_requested(self, gen: int | None) -> bool:
        return gen is not None and self.storage.exists(self.layout.cancel(gen))

    def create_plan(self, plan: Plan) -> Plan:
        """The first attempt fixes the plan; later ones must follow it (chunk boundaries must not move)."""
        self.storage.create_json(self.layout.plan, plan.to_json())
        return self.plan() or plan

    # -- reading parts -------------------------------------------------------------------------

    def part_path(self, part: PartInfo) -> str:
        return self.layout.part(part.path)

    def parquet_urls(self) -> list[str]:
        """Full URLs (`s3://…` or local paths) of the committed parts in output order, for
        `pl.scan_parquet`, DuckDB or `datasets`: read from the manifest, nothing is listed."""
        return [self.storage.url_for(self.part_path(part)) for part in self.committed_parts()]

    def iter_rows(self) -> Iterator[dict[str, Any]]:
        """Every committed row in output order, one row group in memory at a time."""
        for part in self.committed_parts():
            with self.storage.open_for_range_reads(self.part_path(part), part.bytes) as handle:
                parquet = pq.ParquetFile(handle)
                for index in range(parquet.num_row_groups):
                    yield from decode_rows(parquet.read_row_group(index, columns=[ROW_COLUMN]))

    def chunk_rows(self, index: int) -> list[dict[str, Any]]:
        marker = self.chunk(index)
        if marker is None:
            raise KeyError(f"chunk {index} of {self.folder} is not committed")
        return decode_rows(self.read_chunk_table(marker))

    def read_chunk_table(self, marker: ChunkMarker) -> pa.Table:
        """A committed chunk's rows, checked against its marker (bytes, row count, readable)."""
        index = marker.index
        data = self.storage.read_bytes(self.part_path(marker.part))
        if data is None or len(data) != marker.part.bytes:
            raise DamagedChunks([index], f"chunk {index}: part missing or of the wrong size")
        try:
            table = pq.read_table(pa.BufferReader(data))
        except (pa.ArrowException, OSError) as error:
            raise DamagedChunks([index], f"chunk {index}: unreadable part ({error})") from None
        if table.num_rows != marker.part.rows:
            raise DamagedChunks([index], f"chunk {index}: {table.num_rows} rows, marker says {marker.part.rows}")
        return table

    def forget_chunk(self, index: int) -> None:
        """Drop a parsed marker that was just removed from storage (a repair)."""
        self._chunk_cache.pop(index, None)


class Cancelled(Exception):
    """The attempt was asked to stop (`Job.request_cancel`)."""


class Superseded(Exception):
    """A newer attempt owns the job (this one's lease ran out while it was still working)."""


class DamagedChunks(Exception):
    """Committed chunks whose parts are missing, truncated or corrupt; they must be generated again."""

    def __init__(self, indices: list[int], detail: str):
        super().__init__(detail)
        self.indices = indices


class Attempt:
    """One owner's run of a job or of one shard of it. Everything it writes is scoped by its generation."""

    def __init__(self, job: Job, gen: int, token: str, scope: str = "", job_gen: int | None = None):
        self.job = job
        self.gen = gen
        self.token = token
        self.scope = scope
        self.job_gen = job_gen  # the job-level attempt this works for (itself, for a job attempt)
        self._stop_beating = threading.Event()
        self._beater: threading.Thread | None = None
        self._last_progress_at = job.clock()
        self.phases: list[tuple[str, float]] = []

    def heartbeat(self) -> None:
        beat = Heartbeat(at=self.job.clock(), token=self.token, progress_at=self._last_progress_at,
                         phase=self.phases[-1][0] if self.phases else None, phases=tuple(self.phases))
        self.job.storage.write_json(self.job.layout.heartbeat(self.gen, self.scope), beat.to_json())

    def set_phase(self, phase: str) -> None:
        """Say what the attempt is doing now (`loading_model`, `generating`, `training`, ...): the
        job's status and timeline show it at once (one heartbeat written)."""
        if self.phases and self.phases[-1][0] == phase:
            return
        self.phases.append((phase, self.job.clock()))
        self.touch()
        try:
            self.heartbeat()
        except Exception:  # noqa: BLE001 - the next beat carries it; a phase is not worth failing for
            pass

    def raise_if_cancelled(self) -> None:
        if self.job.cancel_requested(self.job_gen):
            raise Cancelled("cancelled")

    def keep_alive(self) -> Attempt:
        """Heartbeat from a background thread until the attempt ends, its process dies, or its work
        stops making progress (no `touch()` for BAKEHOUSE_STALL_SECONDS): a hung attempt then loses
        its lease like a dead one, and a restart takes over (a late wake-up cannot publish: see
        `complete`)."""
        self.touch()

        def beat() -> None:
            while not self._stop_beating.wait(lease_seconds() / 4):
                try:
                    self.beat_if_progressing()
                except Exception:  # noqa: BLE001 - a missed beat is retried; the lease has slack
                    pass

        self._beater = threading.Thread(target=beat, name=f"heartbeat-{self.gen}", daemon=True)
        self._beater.start()
        return self

    def beat_if_progressing(self) -> bool:
        """One heartbeat, unless the work has not moved for BAKEHOUSE_STALL_SECONDS (what the
        keep-alive thread does each time it wakes). Returns whether it beat."""
        if self.job.clock() - self._last_progress_at > stall_seconds():
            return False
        self.heartbeat()
        return True

    def touch(self) -> None:
        """The work moved on (a result came back, a chunk was committed)."""
        self._last_progress_at = self.job.clock()

    def _stop(self) -> None:
        _ENDED_IN_THIS_PROCESS.add(self.token)
        self._stop_beating.set()
        # Wait out a beat in flight, so it cannot land after (and undo) a `released` heartbeat.
        if self._beater is not None and self._beater is not threading.current_thread():
            self._beater.join()

    def commit_chunk(self, index: int, table: pa.Table, stats: dict[str, Any] | None = None) -> ChunkMarker:
        """Write chunk `index` and commit it; returns the committed marker. If another attempt
        committed it first, theirs stands (`marker.token != attempt.token`): callers that derive
        later chunks from this one must continue from the committed rows, not their own."""
        data, row_groups = write_part([table])
        name = JobLayout.chunk_part_name(index, self.gen, _unique())
        part = PartInfo(path=name, rows=table.num_rows, bytes=len(data), row_groups=row_groups)
        self.job.storage.write_bytes(self.job.part_path(part), data)
        marker = ChunkMarker(index=index, part=part, gen=self.gen, token=self.token, stats=stats or {},
                             at=self.job.clock())
        self.job.storage.create_json(self.job.layout.chunk(index), marker.to_json())
        committed = self.job.chunk(index)  # read back: whoever's token is in it won
        if committed is None:
            raise RuntimeError(f"chunk {index} of {self.job.folder}: its marker is not readable after creating it")
        return committed

    def complete(self, num_chunks: int, summary: dict[str, Any] | None = None) -> Manifest:
        """Compact every chunk into large parts and create the manifest (the job's commit point)."""
        latest = self.job.latest_claim(self.scope)
        if latest is None or latest.gen != self.gen:
            raise Superseded(f"attempt {self.gen} was superseded by attempt {latest and latest.gen}; it stops")
        chunks = self.job.chunks()
        missing = [i for i in range(num_chunks) if i not in chunks]
        if missing:
            raise RuntimeError(f"cannot complete {self.job.folder}: chunks {missing[:10]} are not committed")
        # A damaged chunk raises DamagedChunks before anything is published; the caller discards
        # it and generates it again (flows.chunked_job).
        if num_chunks:
            self.set_phase("compacting")
        parts = list(self._compact([chunks[i] for i in range(num_chunks)]))
        manifest = Manifest(kind=self.job.kind, gen=self.gen, lines=sum(p.rows for p in parts), parts=parts,
                            summary=summary or {}, completed_at=self.job.clock())
        self.job.storage.create_json(self.job.layout.manifest, manifest.to_json())
        self._stop()
        return self.job.manifest() or manifest

    def _compact(self, markers: list[ChunkMarker]) -> Iterator[PartInfo]:
        group: list[ChunkMarker] = []
        rows = 0
        for marker in markers:
            if not marker.part.rows:
                continue
            group.append(marker)
            rows += marker.part.rows
            if rows >= COMPACTED_PART_ROWS:
                yield self._write_compacted(group)
                group, rows = [], 0
        if group:
            yield self._write_compacted(group)

    def _write_compacted(self, group: list[ChunkMarker]) -> PartInfo:
        """One large part from consecutive chunks, streamed to storage one row group at a time.

        Chunks written by different versions of bakehouse (a job resumed across an upgrade that
        added columns) do not share a schema: then the part is written again with the union of
        their columns, null where a chunk has none."""
        try:
            return self._write_compacted_as(group, schema=None)
        except (pa.ArrowInvalid, ValueError) as mismatch:
            if "schema" not in str(mismatch).lower():
                raise
        schema = pa.unify_schemas([self.job.read_chunk_table(marker).schema for marker in group])
        return self._write_compacted_as(group, schema=schema)

    def _write_compacted_as(self, group: list[ChunkMarker], schema: pa.Schema | None) -> PartInfo:
        name = JobLayout.compacted_part_name(group[0].index, self.gen, _unique())
        path = self.job.layout.part(name)

        def tables() -> Iterator[pa.Table]:
            for marker in group:
                yield self.job.read_chunk_table(marker)
                self.touch()  # compacting a large job takes a while: it is progress, keep the lease

        try:
            with self.job.storage.open_for_write(path) as sink:
                row_groups = write_part_to(tables(), sink, schema=schema)
        except Exception:
            self.job.storage.delete_tree(path)  # no part file that no marker will ever name
            raise
        return PartInfo(path=name, rows=sum(m.part.rows for m in group), bytes=self.job.storage.size(path),
                        row_groups=row_groups)

    def discard_chunk(self, index: int) -> None:
        """Repair: remove a damaged chunk's marker (only the job's owner does this) so it is redone."""
        self.job.storage.delete_tree(self.job.layout.chunk(index))
        self.job.forget_chunk(index)

    def fail(self, error: str, summary: dict[str, Any] | None = None) -> None:
        """Record why this attempt ended. Best effort: if storage itself is failing, the stopped
        heartbeat still frees the job when the lease runs out, and status reports it resumable."""
        self._stop()
        try:
            failure = Failure(error=error, at=self.job.clock(), summary=summary or {})
            self.job.storage.create_json(self.job.layout.failure(self.gen, self.scope), failure.to_json())
            self.release()
        except Exception:  # noqa: BLE001 - any storage client error; the attempt is over either way
            pass

    def release(self) -> None:
        """Stop heartbeating without finishing: the next claim resumes at once."""
        self._stop()
        beat = Heartbeat(at=self.job.clock(), token=self.token, released=True)
        try:
            self.job.storage.write_json(self.job.layout.heartbeat(self.gen, self.scope), beat.to_json())
        except Exception:  # noqa: BLE001 - any storage client error: the lease runs out instead
            pass


def _progress(chunks: dict[int, ChunkMarker], plan: Plan | None) -> float | None:
    num_chunks = plan.num_chunks if plan is not None else 0
    if not num_chunks:
        return None
    return round(100.0 * len(chunks) / num_chunks, 2)


def _unique() -> str:
    """Part files are written once under a name never used before, so no reader's cache of a path
    (parsed footers, sizes) can go stale, even when a damaged chunk is written again."""
    return uuid.uuid4().hex[:8]


def process_alive(pid: int) -> bool:
    """Whether process `pid` of this machine runs (the same-host shortcut of a claim's liveness)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
