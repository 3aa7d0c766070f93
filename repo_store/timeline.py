"""A job's timeline, read from its protocol files: every start request, attempt, phase, cancel,
failure, lost lease and the completion, in time order.

Nothing is written for the timeline itself: it is what the claims, heartbeats (which carry the
attempt's phases), failures, cancels, start requests and the manifest already say, so it holds for
jobs run by any process, and for jobs that ran before it existed (with fewer phases).
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Literal

from repo_store.jobs import Job, JobState, lease_seconds
from repo_store.records import Claim

EventKind = Literal["status", "log"]

# The events of attempts that a newer attempt has replaced never change: read them once per Job.
_SETTLED: weakref.WeakKeyDictionary[Job, dict[int, list[JobEvent]]] = weakref.WeakKeyDictionary()


@dataclass(frozen=True)
class JobEvent:
    at: float
    status: JobState
    phase: str | None
    note: str | None = None
    kind: EventKind = "status"  # "status": the status or phase changed; "log": something happened

    def to_json(self) -> dict[str, Any]:
        event: dict[str, Any] = {"status": self.status, "phase": self.phase, "timestamp": iso_time(self.at)}
        if self.note:
            event["note"] = self.note
        return event


def iso_time(at: float | None) -> str | None:
    """Unix seconds as an ISO 8601 UTC timestamp (what every API field ending in `_at` carries)."""
    return None if at is None else datetime.fromtimestamp(at, tz=timezone.utc).isoformat(timespec="milliseconds")


def read_timeline(job: Job) -> list[JobEvent]:
    """Every event of the job so far, oldest first."""
    events = [JobEvent(at, "not_started", "queued", "start requested" if gen == 1 else f"start of attempt {gen} requested")
              for gen, at in job.start_requests().items()]
    claims = job.claims()
    settled = _SETTLED.setdefault(job, {})
    chunk_gens = None
    for index, claim in enumerate(claims):
        gen = claim.gen
        if gen in settled:
            events += settled[gen]
            continue
        if chunk_gens is None:
            chunk_gens = [record.gen for record in job.chunks().values()]
        next_claim_at = claims[index + 1].at if index + 1 < len(claims) else None
        attempt_events = _attempt_events(job, claim, next_claim_at, sum(1 for g in chunk_gens if g < gen))
        if next_claim_at is not None:
            settled[gen] = attempt_events
        events += attempt_events
    manifest = job.manifest()
    if manifest is not None:
        events.append(JobEvent(manifest.completed_at or 0.0, "complete", "complete", f"{manifest.lines} lines"))
    return sorted(events, key=lambda event: event.at)


def status_events(job: Job) -> list[dict[str, Any]]:
    """The timeline's status changes as the API shows them (`status_events`)."""
    return [event.to_json() for event in read_timeline(job) if event.kind == "status"]


def _attempt_events(job: Job, claim: Claim, next_claim_at: float | None, chunks_before: int) -> list[JobEvent]:
    gen, started = claim.gen, claim.at
    if gen == 1:
        note = "attempt 1 started"
    else:
        note = f"attempt {gen} resumed the job" + (f" ({chunks_before} chunks already committed)" if chunks_before else "")
    events = [JobEvent(started, "running", "starting", note)]
    beat = job.read_heartbeat(gen)
    events += [JobEvent(at, "running", phase) for phase, at in (beat.phases if beat else ())]
    cancel = job.read_cancel(gen)
    if cancel is not None:
        events.append(JobEvent(cancel.at, "running", None, f"cancel of attempt {gen} requested", kind="log"))
    manifest = job.manifest()
    if manifest is not None and manifest.gen == gen:
        return events
    failure = job.read_failure(gen)
    if failure is not None:
        events.append(JobEvent(failure.at, "failed", "failed", failure.error))
    elif beat is not None and beat.released:
        why = "cancelled" if cancel is not None else f"attempt {gen} stopped without finishing; a start resumes the job"
        events.append(JobEvent(beat.at, "failed", "failed", why))
    elif next_claim_at is not None or not job.claim_alive(claim, beat=beat):
        # Dated by the last heartbeat plus the lease (when a new claim could take over), or by the
        # last heartbeat itself when the worker is known dead early (same host, pid gone): a fixed
        # time either way, so the timeline reads the same on every look.
        last = beat.at if beat is not None else started
        lost_at = last + lease_seconds()
        if next_claim_at is not None:
            lost_at = min(lost_at, next_claim_at)
        elif lost_at > job.clock():
            lost_at = last
        events.append(JobEvent(lost_at, "failed", "failed",
                               f"attempt {gen} lost its lease (its worker is gone); a start resumes the job"))
    return events
