"""Where jobs run once the API has accepted them.

`LocalRunner` starts each job as a worker subprocess (`python -m bakehouse.worker`) that runs the
job's Prefect flow: a job outlives the request, can be killed without touching the server, and shows
up as a Prefect flow run. Duplicate starts are harmless (the job protocol lets one attempt own a job);
the runner only avoids starting a second process for a job whose first has not claimed it yet.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from dataclasses import dataclass, replace
from typing import Protocol

from repo_store import JobStatus
from repo_store.settings import get_settings


@dataclass(frozen=True)
class JobRef:
    workspace: str
    repo_name: str
    target_name: str  # the bake's name for a bake
    target_id: str  # a target (or bake) deleted and created again under its name is another one
    kind: str  # stim | rollout | bake


class Runner(Protocol):
    """Where the API sends the jobs it starts (LocalRunner, PrefectRunner, or a test's)."""

    def submit(self, ref: JobRef, status: JobStatus) -> None: ...

    def view(self, ref: JobRef, status: JobStatus) -> JobStatus: ...

    def active(self, ref: JobRef) -> bool: ...

    def cancel(self, ref: JobRef) -> None: ...


@dataclass
class Submission:
    process: subprocess.Popen
    attempt_before: int | None  # the job's attempt number when we submitted
    at: float
    cancelled: bool = False

    @property
    def alive(self) -> bool:
        return self.process.poll() is None


def start_timeout() -> float:
    """How long a started worker may take to claim its job before it is called failed."""
    return get_settings().start_timeout


class LocalRunner:
    def __init__(self, data_url: str):
        self.data_url = data_url
        self._submissions: dict[JobRef, Submission] = {}
        self._lock = threading.Lock()
        self.started = 0  # worker processes started so far

    def submit(self, ref: JobRef, status: JobStatus) -> None:
        with self._lock:
            self._reap()
            current = self._submissions.get(ref)
            if current is not None and current.alive and not _claimed_since(current, status):
                return  # already on its way
            command = [
                sys.executable, "-m", "bakehouse.worker", ref.kind,
                "--workspace", ref.workspace, "--repo", ref.repo_name,
                "--bake" if ref.kind == "bake" else "--target", ref.target_name, "--data", self.data_url,
            ]
            process = subprocess.Popen(command, stdin=subprocess.DEVNULL)
            self._submissions[ref] = Submission(process, status.attempt, time.monotonic())
            self.started += 1

    def view(self, ref: JobRef, status: JobStatus) -> JobStatus:
        """The job's status as a client should see it, given what this runner has started.

        Between a start and the worker's claim, storage still shows the previous attempt (or
        nothing); the job is queued, so it reads `not_started`. A worker that died, or did not claim
        its job in time, is reported as a failure instead of leaving the client polling forever.
        """
        with self._lock:
            self._reap()
            submission = self._submissions.get(ref)
            if submission is None or _claimed_since(submission, status) or status.status in ("running", "complete"):
                return status
            if submission.alive and time.monotonic() - submission.at > start_timeout():
                submission.process.kill()
                submission.process.wait()
            if submission.cancelled:
                return replace(status, status="failed", error="cancelled", phase="failed")
            if submission.alive:
                return queued(status)
            code = submission.process.returncode
            if code != 0:
                error = f"the worker exited with code {code} before starting the job; see the server log"
                return replace(status, status="failed", error=error, phase="failed")
            return status

    def active(self, ref: JobRef) -> bool:
        """Whether a worker for the job is starting or working."""
        with self._lock:
            submission = self._submissions.get(ref)
            return submission is not None and submission.alive and not submission.cancelled

    def cancel(self, ref: JobRef) -> None:
        """Stop the job's worker. One that owns the job releases it at once (the cancel request on
        storage makes the job read `failed`, "cancelled"); one still starting never takes it, and
        the job reads the same until it is started again."""
        with self._lock:
            submission = self._submissions.get(ref)
            if submission is not None and submission.alive:
                submission.cancelled = True
                submission.process.terminate()

    def _reap(self) -> None:
        """Forget workers that exited cleanly (collecting their exit status: no zombies). Failed
        ones stay until the job is started again, so `view` can say what happened."""
        for ref, submission in list(self._submissions.items()):
            if not submission.alive and submission.process.returncode == 0:
                del self._submissions[ref]

    def close(self) -> None:
        """Stop workers still running (their jobs resume on the next start)."""
        with self._lock:
            for submission in self._submissions.values():
                if submission.alive:
                    submission.process.terminate()
            for submission in self._submissions.values():
                try:
                    submission.process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    submission.process.kill()


def queued(status: JobStatus) -> JobStatus:
    """Started but not claimed yet: storage still shows the previous attempt (or nothing)."""
    return replace(status, status="not_started", error=None, phase="queued", stalled=False)


def _claimed_since(submission: Submission, status: JobStatus) -> bool:
    return status.attempt is not None and status.attempt != submission.attempt_before


class PrefectRunner:
    """Starts jobs as flow runs of the deployments in prefect.yaml (used by `bakehouse up`).

    The idempotency key names the attempt a start is for, so concurrent starts of one job, from any
    number of API processes, become one flow run.
    """

    def __init__(self, stimuli_per_shard: int = 2048):
        self.stimuli_per_shard = stimuli_per_shard
        self._runs: dict[JobRef, tuple[object, int | None, int]] = {}  # flow run id, attempt before, resubmits
        self._lock = threading.Lock()

    def submit(self, ref: JobRef, status: JobStatus) -> None:
        from prefect.deployments import run_deployment

        from flows.deployments import BAKE, FINAL_STATES, ROLLOUT, STIM, flow_run_state
        from flows.params import BakeJob, TargetJob

        with self._lock:
            previous = self._runs.get(ref)
            resubmits = 0
            if previous is not None and previous[1] == status.attempt:
                if flow_run_state(previous[0]) not in FINAL_STATES:
                    return  # queued or starting
                resubmits = previous[2] + 1  # that run ended without claiming: a new key
            if ref.kind == "bake":
                job = BakeJob(repo_name=ref.repo_name, bake_name=ref.target_name, workspace=ref.workspace)
            else:
                job = TargetJob(repo_name=ref.repo_name, target_name=ref.target_name, workspace=ref.workspace)
            parameters: dict = {"job": job.model_dump()}
            if ref.kind == "rollout":
                parameters["stimuli_per_shard"] = self.stimuli_per_shard
            attempt = (status.attempt or 0) + 1
            key = f"{ref.workspace}/{ref.repo_name}/{ref.target_name}/{ref.target_id}/{ref.kind}/{attempt}/{resubmits}"
            deployment = {"stim": STIM, "rollout": ROLLOUT, "bake": BAKE}[ref.kind]
            run = run_deployment(deployment, parameters=parameters, timeout=0, idempotency_key=key)
            self._runs[ref] = (run.id, status.attempt, resubmits)

    def view(self, ref: JobRef, status: JobStatus) -> JobStatus:
        from flows.deployments import FINAL_STATES, flow_run_state

        run = self._runs.get(ref)
        if run is None or status.attempt != run[1] or status.status in ("running", "complete"):
            return status
        state = flow_run_state(run[0])
        if state not in FINAL_STATES:
            return queued(status)
        error = f"the flow run ended {state} before starting the job; see it in the Prefect UI"
        return replace(status, status="failed", error=error, phase="failed")

    def active(self, ref: JobRef) -> bool:
        """Whether the job's flow run is queued or running."""
        from flows.deployments import FINAL_STATES, flow_run_state

        run = self._runs.get(ref)
        return run is not None and flow_run_state(run[0]) not in FINAL_STATES

    def cancel(self, ref: JobRef) -> None:
        """Cancel the job's flow run in Prefect too (the UI shows it; a queued run never starts)."""
        from prefect.client.orchestration import get_client
        from prefect.states import Cancelling

        from flows.deployments import FINAL_STATES, flow_run_state

        run = self._runs.get(ref)
        if run is not None and flow_run_state(run[0]) not in FINAL_STATES:
            with get_client(sync_client=True) as client:
                client.set_flow_run_state(run[0], Cancelling(), force=True)

    def close(self) -> None:
        """Flow runs belong to Prefect and outlive the API."""
