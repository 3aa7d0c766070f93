"""The service layer behind the API: resources, job starts and status, over one workspace.

Route functions stay thin: they parse the request, call one function here and shape the response.
"""

from __future__ import annotations

from typing import Any, Protocol

from repo_store import Job, JobStatus, StoredTarget, Workspace
from targets import BakehouseError, InvalidInput, PromptSpec, RepoSpec, TargetSpec, parse

from bakehouse.runner import JobRef


class Runner(Protocol):
    def submit(self, ref: JobRef, status: JobStatus) -> None: ...

    def view(self, ref: JobRef, status: JobStatus) -> JobStatus: ...

    def active(self, ref: JobRef) -> bool: ...

    def cancel(self, ref: JobRef) -> None: ...


class Service:
    def __init__(self, workspace: Workspace, runner: Runner):
        self.ws = workspace
        self.runner = runner

    # -- resources -----------------------------------------------------------------------------

    def create_repo(self, repo_name: str, base_model: str | None) -> tuple[RepoSpec, bool]:
        return self.ws.create_repo(parse(RepoSpec, {"repo_name": repo_name, "base_model": base_model}, "repo"))

    def create_prompt(self, repo_name: str, prompt_name: str, messages: list, tools: list | None) -> tuple[PromptSpec, bool]:
        spec = parse(PromptSpec, {"prompt_name": prompt_name, "messages": messages, "tools": tools}, "prompt")
        return self.ws.create_prompt(repo_name, spec)

    def create_target(self, repo_name: str, target_name: str, template: str, overrides: dict | None):
        spec = parse(TargetSpec, {"target_name": target_name, "template": template, "overrides": overrides}, "target")
        return self.ws.create_target(repo_name, spec)

    def create_prompts(self, repo_name: str, prompts: dict[str, list]) -> dict[str, Any]:
        return self._each(repo_name, [(name, lambda m=messages, n=name: self.create_prompt(repo_name, n, m, None))
                                      for name, messages in prompts.items()])

    def create_targets(self, repo_name: str, targets: list[dict[str, Any]]) -> dict[str, Any]:
        # In order, so that a later target may use an earlier one as its template.
        return self._each(repo_name, [(t["target_name"], lambda t=t: self.create_target(repo_name, **t)) for t in targets])

    def _each(self, repo_name: str, creates: list[tuple[str, Any]]) -> dict[str, Any]:
        """Bread's batch semantics: every item is tried in order; failures are reported per name
        (an item repeating an earlier name is created or refused like any other)."""
        self.ws.get_repo(repo_name)
        created, failed = [], {}
        for name, create in creates:
            try:
                create()
                created.append(name)
            except BakehouseError as error:
                failed[name] = error.message
        return {"created": created, "failed": failed}

    # -- jobs ----------------------------------------------------------------------------------

    def _ref(self, repo_name: str, target: StoredTarget, kind: str) -> JobRef:
        return JobRef(self.ws.name, repo_name, target.target_name, target.target_id, kind)

    def job_status(self, repo_name: str, target_name: str, kind: str) -> tuple[JobStatus, dict[str, Any]]:
        status, config, _ = self._job(repo_name, target_name, kind)
        return status, config

    def _job(self, repo_name: str, target_name: str, kind: str) -> tuple[JobStatus, dict[str, Any], Job]:
        """The job's status as clients see it, its config echo, and the job (one read of target.json)."""
        target = self.ws.get_target(repo_name, target_name)
        job, ref = self.ws.job_of(repo_name, target, kind), self._ref(repo_name, target, kind)
        status = job.status()
        viewed = self.runner.view(ref, status)
        if viewed.status == "failed" and status.status != "failed":
            # The runner saw its run end after we read storage: the run may have finished the job.
            viewed = self.runner.view(ref, job.status())
        config = target.config.stim_part() if kind == "stim" else target.config.rollout_part()
        return viewed, config, job

    def start_job(self, repo_name: str, target_name: str, kind: str) -> tuple[JobStatus, dict[str, Any]]:
        """Start (or resume) a job. Repeating it while the job runs or after it completed changes nothing."""
        target = self.ws.get_target(repo_name, target_name)
        if kind == "rollout":
            if self.ws.job(repo_name, target_name, "stim").status().status != "complete":
                raise InvalidInput("Stim job must complete before running rollout")
            if not target.config.model_name:
                raise InvalidInput("model_name must be configured in target")
        elif not target.config.generators:
            raise InvalidInput("Target must have generators and teacher prompt configured")
        status = self.ws.job_of(repo_name, target, kind).status()
        if status.status not in ("running", "complete"):
            self.runner.submit(self._ref(repo_name, target, kind), status)
        return self.job_status(repo_name, target_name, kind)

    def cancel_job(self, repo_name: str, target_name: str, kind: str) -> tuple[JobStatus, dict[str, Any]]:
        """Ask the running attempt to stop; it keeps its committed rows and a later start resumes."""
        target = self.ws.get_target(repo_name, target_name)
        self.ws.job_of(repo_name, target, kind).request_cancel()
        self.runner.cancel(self._ref(repo_name, target, kind))
        return self.job_status(repo_name, target_name, kind)

    def read_output(self, repo_name: str, target_name: str, kind: str, offset: int, limit: int):
        status, config, job = self._job(repo_name, target_name, kind)
        return status, config, self.ws.store.read_page(job, offset=offset, limit=limit)

    def delete_target(self, repo_name: str, target_name: str) -> None:
        """Storage refuses while a job runs; a job only queued counts too, since its worker may be
        about to claim it inside the target's folder."""
        target = self.ws.get_target(repo_name, target_name)
        for kind in ("stim", "rollout"):
            if self.runner.active(self._ref(repo_name, target, kind)):
                raise InvalidInput(f"Target '{target_name}' has a running {kind} job; wait for it or cancel it first")
        self.ws.delete_target(repo_name, target_name)
