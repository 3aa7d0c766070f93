"""Job runners for API tests that must not start worker processes."""

from __future__ import annotations

import threading

from repo_store import Cancelled, JobStatus, Store


def _as_worker(run):
    """`run` as a worker runs it: a cancelled job ends its worker, and the job itself says
    "cancelled", so the thread ends quietly (any other error still surfaces)."""

    def work(*args, **kwargs):
        try:
            run(*args, **kwargs)
        except Cancelled:
            pass

    return work


class RecordingRunner:
    """Records what the API asked to start or cancel; starts nothing."""

    def __init__(self):
        self.submitted = []
        self.cancelled = []

    def submit(self, ref, status: JobStatus) -> None:
        self.submitted.append(ref)

    def view(self, ref, status: JobStatus) -> JobStatus:
        return status

    def active(self, ref) -> bool:
        return ref in self.submitted and ref not in self.cancelled

    def cancel(self, ref) -> None:
        self.cancelled.append(ref)


class ThreadRunner(RecordingRunner):
    """Runs each started job in a thread of the server process on the job's own engine."""

    def __init__(self, store: Store):
        super().__init__()
        self.store = store
        self.threads: dict[object, threading.Thread] = {}  # the latest thread of each job

    def submit(self, ref, status: JobStatus) -> None:
        from flows.bake import run_bake
        from flows.rollout import run_rollout
        from flows.stim import run_stim

        super().submit(ref, status)
        run = {"stim": run_stim, "rollout": run_rollout, "bake": run_bake}[ref.kind]
        workspace = self.store.workspace(ref.workspace)
        thread = self.threads[ref] = threading.Thread(target=_as_worker(run), args=(workspace, ref.repo_name, ref.target_name))
        thread.start()

    def active(self, ref) -> bool:
        """Like LocalRunner: while the job's thread is starting or working."""
        return ref in self.threads and self.threads[ref].is_alive()


class SlowRunner(ThreadRunner):
    """ThreadRunner whose rollouts take `delay` seconds a request, in chunks of 2 stimuli: long
    enough to watch them move."""

    delay = 0.15

    def submit(self, ref, status: JobStatus) -> None:
        from flows.rollout import run_rollout
        from flows.runtime import Engines

        if ref.kind != "rollout":
            return super().submit(ref, status)
        self.submitted.append(ref)
        ws = self.store.workspace(ref.workspace)
        self.threads[ref] = threading.Thread(target=_as_worker(run_rollout), args=(ws, ref.repo_name, ref.target_name),
                                             kwargs={"engines": Engines(delay=self.delay), "chunk_size": 2})
        self.threads[ref].start()
