"""The one status a client sees of a job: storage's truth (`Job.status()`) with what the runner knows
laid over it (queued, a worker that never claimed its job) and, for a running bake, its trainer's
latest step. Every route that shows a status (a job's or a bake's status, its event stream, the job
listing, the repo tree) reads it here, so no two of them can disagree. Statuses are only ever
derived with `dataclasses.replace`: no field is lost on the way.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from repo_store import Job, JobStatus
from repo_store.bakes import BakeRun
from repo_store.records import BakePlan, LiveStep

from bakehouse.runner import JobRef, Runner


@dataclass(frozen=True)
class Visible:
    status: JobStatus
    live: LiveStep | None = None  # a running bake's latest step and loss, written by its trainer
    total_steps: int | None = None  # a bake's, from its plan


def visible_status(runner: Runner, ref: JobRef, job: Job, bake: BakeRun | None = None) -> Visible:
    """The job's status as clients see it (`bake`: the job's bake run, whose training progress counts)."""
    stored = job.status()
    status = runner.view(ref, stored)
    if status.status == "failed" and stored.status != "failed":
        # The runner saw its run end after we read storage: the run may have finished the job.
        status = runner.view(ref, job.status())
    if bake is None:
        return Visible(status)
    plan = job.plan()
    total_steps = plan.total_steps if isinstance(plan, BakePlan) else None
    live = bake.read_live(status.attempt) if status.attempt and status.status == "running" else None
    if live:
        status = replace(status, progress_percent=round(100.0 * live.step / max(total_steps or 1, 1), 2))
    return Visible(status, live, total_steps)
