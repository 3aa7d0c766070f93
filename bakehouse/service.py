"""The service layer behind the API: resources, job starts and status, over one workspace.

Route functions stay thin: they parse the request, call one function here and shape the response.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from repo_store import Job, JobStatus, StoredTarget, Workspace
from repo_store.bakes import ADAPTER_ARCHIVE
from repo_store.records import LiveStep
from repo_store.stats import job_stats
from repo_store.timeline import JobEvent, read_timeline
from repo_store.store import DeletedOutput, StoredBake
from targets import BakehouseError, InvalidInput, NotFound, PromptSpec, RepoSpec, TargetSpec, parse
from targets.bake import BakeSpec

from bakehouse.events import Snapshot
from bakehouse.job_index import JobEntry, JobFilter, JobIndex
from bakehouse.lineage import Lineage, RecreationPlan, TreeBake, plan_recreation, read_lineage, repo_tree
from bakehouse.runner import JobRef, Runner
from bakehouse.status import visible_status

if TYPE_CHECKING:
    from bakehouse.serving import ChatServing, Route


@dataclass(frozen=True)
class JobReport:
    """A job as clients see it: its status, the config it runs with, its timeline and statistics."""

    status: JobStatus
    config: dict[str, Any]
    events: list[JobEvent] = field(default_factory=list)
    stats: dict[str, Any] | None = None


class Service:
    def __init__(self, workspace: Workspace, runner: Runner, index: JobIndex | None = None):
        self.ws = workspace
        self.runner = runner
        self.index = index  # told about every job this service starts, cancels or deletes

    def _changed(self, ref: JobRef) -> None:
        if self.index is not None:
            self.index.refresh(ref)

    def _seen(self, ref: JobRef, status: JobStatus, events: list[JobEvent]) -> None:
        if self.index is not None:
            self.index.record(ref, status, events)

    def list_jobs(self, where: JobFilter, *, offset: int, limit: int) -> tuple[int, list[JobEntry]]:
        if self.index is None:
            raise RuntimeError("this service has no job index")
        return self.index.list(self.ws.name, where, offset=offset, limit=limit)

    # -- resources -----------------------------------------------------------------------------

    def list_repos(self) -> list[str]:
        return self.ws.list_repos()

    def get_repo(self, repo_name: str) -> RepoSpec:
        return self.ws.get_repo(repo_name)

    def list_prompts(self, repo_name: str) -> list[str]:
        return self.ws.list_prompts(repo_name)

    def get_prompt(self, repo_name: str, prompt_name: str) -> PromptSpec:
        return self.ws.get_prompt(repo_name, prompt_name)

    def list_targets(self, repo_name: str) -> list[str]:
        return self.ws.list_targets(repo_name)

    def get_target(self, repo_name: str, target_name: str) -> StoredTarget:
        return self.ws.get_target(repo_name, target_name)

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

    def validate_target(self, repo_name: str, body: dict[str, Any]) -> dict[str, Any]:
        """What creating this target would make, or why it cannot be made; creates nothing."""
        from bakehouse.validation import validate_target

        return validate_target(self.ws, repo_name, body)

    def validate_bake(self, repo_name: str, body: dict[str, Any]) -> dict[str, Any]:
        from bakehouse.validation import validate_bake

        return validate_bake(self.ws, repo_name, body)

    # -- jobs ----------------------------------------------------------------------------------

    def _ref(self, repo_name: str, target: StoredTarget, kind: str) -> JobRef:
        return JobRef(self.ws.name, repo_name, target.target_name, target.target_id, kind)

    def job_status(self, repo_name: str, target_name: str, kind: str) -> JobReport:
        target = self.ws.get_target(repo_name, target_name)
        status, config, job = self._job_of(repo_name, target, kind)
        stats = job_stats(kind, (record.stats for record in job.chunks().values()), status.summary, status.lines)
        events = read_timeline(job)
        self._seen(self._ref(repo_name, target, kind), status, events)
        return JobReport(status, config, events, stats)

    def _job(self, repo_name: str, target_name: str, kind: str) -> tuple[JobStatus, dict[str, Any], Job]:
        """The job's status as clients see it, its config echo, and the job (one read of target.json)."""
        return self._job_of(repo_name, self.ws.get_target(repo_name, target_name), kind)

    def _job_of(self, repo_name: str, target: StoredTarget, kind: str) -> tuple[JobStatus, dict[str, Any], Job]:
        job = self.ws.job_of(repo_name, target, kind)
        status = visible_status(self.runner, self._ref(repo_name, target, kind), job).status
        config = target.config.stim_part() if kind == "stim" else target.config.rollout_part()
        return status, config, job

    def job_watch_key(self, repo_name: str, target_name: str, kind: str) -> JobRef:
        """Names the job for watchers (a target deleted and created again is another job)."""
        return self._ref(repo_name, self.ws.get_target(repo_name, target_name), kind)

    def job_snapshot(self, repo_name: str, target_name: str, kind: str) -> Snapshot:
        """One look at a job for its event stream: where it is, and its timeline."""
        status, _, job = self._job(repo_name, target_name, kind)
        progress = {"status": status.status, "phase": status.phase, "lines": status.lines,
                    "total_expected": status.total_expected, "progress_percent": status.progress_percent,
                    "stalled": status.stalled}
        return Snapshot(progress, read_timeline(job), status.error)

    def start_job(self, repo_name: str, target_name: str, kind: str) -> JobReport:
        """Start (or resume) a job. Repeating it while the job runs or after it completed changes nothing."""
        target = self.ws.get_target(repo_name, target_name)
        if kind == "rollout":
            if self.ws.job(repo_name, target_name, "stim").status().status != "complete":
                raise InvalidInput("Stim job must complete before running rollout")
            if not target.config.model_name:
                raise InvalidInput("model_name must be configured in target")
            from flows.models import BakedCheckpoint, check_model

            if BakedCheckpoint.parse(target.config.model_name):  # a baked model: it must exist here
                check_model(self.ws, target.config.model_name, role="model_name")
        elif not target.config.generators:
            raise InvalidInput("Target must have generators and teacher prompt configured")
        job = self.ws.job_of(repo_name, target, kind)
        status = job.status()
        if status.status not in ("running", "complete"):
            job.request_start()
            self.runner.submit(self._ref(repo_name, target, kind), status)
            self._changed(self._ref(repo_name, target, kind))
        return self.job_status(repo_name, target_name, kind)

    def cancel_job(self, repo_name: str, target_name: str, kind: str) -> JobReport:
        """Ask the running attempt to stop; it keeps its committed rows and a later start resumes."""
        target = self.ws.get_target(repo_name, target_name)
        self.ws.job_of(repo_name, target, kind).request_cancel()
        self.runner.cancel(self._ref(repo_name, target, kind))
        self._changed(self._ref(repo_name, target, kind))
        return self.job_status(repo_name, target_name, kind)

    def read_output(self, repo_name: str, target_name: str, kind: str, offset: int, limit: int, *, include_tokens: bool = False):
        status, config, job = self._job(repo_name, target_name, kind)
        return status, config, self.ws.store.read_page(job, offset=offset, limit=limit, include_tokens=include_tokens)

    def parquet_urls(self, repo_name: str, target_name: str, kind: str) -> tuple[JobStatus, list[str]]:
        status, _, job = self._job(repo_name, target_name, kind)
        return status, job.parquet_urls()

    def delete_target(self, repo_name: str, target_name: str) -> None:
        """Storage refuses while a job runs; a job only queued counts too, since its worker may be
        about to claim it inside the target's folder."""
        target = self.ws.get_target(repo_name, target_name)
        for kind in ("stim", "rollout"):
            if self.runner.active(self._ref(repo_name, target, kind)):
                raise InvalidInput(f"Target '{target_name}' has a running {kind} job; wait for it or cancel it first")
        self.ws.delete_target(repo_name, target_name)
        for kind in ("stim", "rollout"):
            self._changed(self._ref(repo_name, target, kind))

    def delete_job_output(self, repo_name: str, target_name: str, kind: str) -> DeletedOutput:
        """Remove a stim or rollout job's output so that it can be made anew. A queued job counts as
        running (its worker may be about to claim it in the folder being deleted), and so does a
        queued rollout for the stim (it reads the stimuli when it starts)."""
        target = self.ws.get_target(repo_name, target_name)
        for blocking in (kind, "rollout") if kind == "stim" else (kind,):
            if self.runner.active(self._ref(repo_name, target, blocking)):
                raise InvalidInput(f"The {blocking} job of target '{target_name}' is running or queued; "
                                   "wait for it or cancel it first")
        deleted = self.ws.delete_job(repo_name, target_name, kind)
        self._changed(self._ref(repo_name, target, kind))
        return deleted

    # -- bakes ---------------------------------------------------------------------------------

    def create_bake(self, repo_name: str, bake_name: str, template: str, overrides: dict | None) -> tuple[StoredBake, bool]:
        spec = parse(BakeSpec, {"bake_name": bake_name, "template": template, "overrides": overrides}, "bake")
        return self.ws.create_bake(repo_name, spec)

    def create_bakes(self, repo_name: str, bakes: list[dict[str, Any]]) -> dict[str, Any]:
        return self._each(repo_name, [(b["bake_name"], lambda b=b: self.create_bake(repo_name, **b)) for b in bakes])

    def list_bakes(self, repo_name: str) -> list[str]:
        return self.ws.list_bakes(repo_name)

    def _bake_ref(self, repo_name: str, bake: StoredBake) -> JobRef:
        return JobRef(self.ws.name, repo_name, bake.bake_name, bake.bake_id, "bake")

    def bake_status(self, repo_name: str, bake_name: str) -> tuple[StoredBake, JobStatus, dict[str, Any]]:
        """The bake, its job status as clients see it, and its training figures so far."""
        bake = self.ws.get_bake(repo_name, bake_name)
        run = self.ws.bake_run(repo_name, bake)
        visible = visible_status(self.runner, self._bake_ref(repo_name, bake), run.job, run)
        status, live, total_steps = visible.status, visible.live, visible.total_steps
        metrics = list(run.iter_metrics())
        losses = [row["loss"] for row in metrics] + ([live.loss] if live else [])
        loss = None
        if losses:  # keys without a value yet are left out (Bread's SDK reads loss as str -> float)
            loss = {"latest_loss": losses[-1], "min_loss": min(losses), "max_loss": max(losses)}
            if status.status == "complete":
                loss["final_loss"] = losses[-1]
        names = None
        if status.status == "complete":  # index 0 is the latest checkpoint, as Bread lists them
            names = [f"{self.ws.name}/{repo_name}/{bake_name}/{c.step}" for c in reversed(run.checkpoints())]
        events = read_timeline(run.job)
        self._seen(self._bake_ref(repo_name, bake), status, events)
        figures = {"loss": loss, "model_name": names, "status_events": [e.to_json() for e in events if e.kind == "status"],
                   "stats": _bake_stats(metrics, live, total_steps)}
        return bake, status, figures

    def bake_watch_key(self, repo_name: str, bake_name: str) -> JobRef:
        return self._bake_ref(repo_name, self.ws.get_bake(repo_name, bake_name))

    def bake_snapshot(self, repo_name: str, bake_name: str) -> Snapshot:
        """One look at a bake for its event stream: status, step and loss, and its timeline."""
        bake = self.ws.get_bake(repo_name, bake_name)
        run = self.ws.bake_run(repo_name, bake)
        visible = visible_status(self.runner, self._bake_ref(repo_name, bake), run.job, run)
        status, live, total_steps = visible.status, visible.live, visible.total_steps
        progress = {"status": status.status, "phase": status.phase, "progress_percent": status.progress_percent,
                    "stalled": status.stalled, "step": live.step if live else None, "total_steps": total_steps,
                    # shaped as in the bake's status, so a client can lay one over the other
                    "loss": {"latest_loss": live.loss} if live else None}
        return Snapshot(progress, read_timeline(run.job), status.error)

    def start_bake(self, repo_name: str, bake_name: str) -> tuple[StoredBake, JobStatus, dict[str, Any]]:
        """Start (or resume) a bake; repeating it while it runs or after it completed changes nothing."""
        from flows.models import check_model

        bake = self.ws.get_bake(repo_name, bake_name)
        self.ws.bake_dataset_lines(repo_name, bake.config)  # the trainer's own checks, before queueing
        check_model(self.ws, bake.config.model.parent_model_name or self.ws.get_repo(repo_name).base_model,
                    role="parent model")
        job = self.ws.bake_run(repo_name, bake).job
        status = job.status()
        if status.status not in ("running", "complete"):
            job.request_start()
            self.runner.submit(self._bake_ref(repo_name, bake), status)
            self._changed(self._bake_ref(repo_name, bake))
        return self.bake_status(repo_name, bake_name)

    def cancel_bake(self, repo_name: str, bake_name: str) -> tuple[StoredBake, JobStatus, dict[str, Any]]:
        """Stop a running bake; its checkpoints stay and a later start resumes from the last one."""
        bake = self.ws.get_bake(repo_name, bake_name)
        self.ws.bake_run(repo_name, bake).job.request_cancel()
        self.runner.cancel(self._bake_ref(repo_name, bake))
        self._changed(self._bake_ref(repo_name, bake))
        return self.bake_status(repo_name, bake_name)

    def bake_metrics(self, repo_name: str, bake_name: str) -> list[dict[str, Any]]:
        bake = self.ws.get_bake(repo_name, bake_name)
        return list(self.ws.bake_run(repo_name, bake).iter_metrics())

    def bake_download(self, repo_name: str, bake_name: str, checkpoint: int | None, expires_in: int,
                      link_base: str) -> dict[str, Any]:
        """An expiring URL of a checkpoint's adapter archive (`checkpoint` is its step; default the
        latest): S3's presigned URL, or on local storage a signed link this API serves."""
        bake = self.ws.get_bake(repo_name, bake_name)
        run = self.ws.bake_run(repo_name, bake)
        records = {c.step: c for c in run.checkpoints()}
        if not records:
            raise InvalidInput(f"Bake '{bake_name}' has no checkpoint yet")
        step = max(records) if checkpoint is None else checkpoint
        if step not in records:
            raise NotFound(f"Bake '{bake_name}' has no checkpoint {step}; it has {sorted(records)}")
        path = run.checkpoint_file_path(records[step], ADAPTER_ARCHIVE)
        signer = self.ws.store.downloads
        url = signer.presigned_url(path, expires_in) or f"{link_base.rstrip('/')}/v1/downloads/{signer.token(path, expires_in)}"
        return {"url": url, "bake_name": bake_name, "checkpoint": step, "expires_in": expires_in}

    def delete_bake(self, repo_name: str, bake_name: str) -> None:
        bake = self.ws.get_bake(repo_name, bake_name)
        finished = self.ws.bake_run(repo_name, bake).job.status().status == "complete"
        # A worker may still be exiting after it completed the bake; it writes nothing more.
        if not finished and self.runner.active(self._bake_ref(repo_name, bake)):
            raise InvalidInput(f"Bake '{bake_name}' is running; wait for it or cancel it first")
        self.ws.delete_bake(repo_name, bake_name)
        self._changed(self._bake_ref(repo_name, bake))

    # -- lineage -------------------------------------------------------------------------------

    def dependency_graph(self, repo_name: str, bake_name: str) -> Lineage:
        return read_lineage(self.ws, repo_name, bake_name)

    def recreation_plan(self, repo_name: str, bake_name: str) -> RecreationPlan:
        return plan_recreation(read_lineage(self.ws, repo_name, bake_name))

    def repo_tree(self, repo_name: str) -> list[TreeBake]:
        """Every bake of the repo, its status as `bake_status` reports it, and its parent bake."""
        def status_of(bake: StoredBake) -> str:
            return visible_status(self.runner, self._bake_ref(repo_name, bake), self.ws.bake_run(repo_name, bake).job).status.status

        return repo_tree(self.ws, repo_name, status_of)

    # -- chat ----------------------------------------------------------------------------------

    def model_cards(self, serving: ChatServing) -> list[dict[str, Any]]:
        """The models of this workspace that chat can serve (storage reads: call it off the event loop)."""
        return serving.list_models(self.ws)

    def ready_chat_route(self, serving: ChatServing, model: str) -> Route | None:
        """Where the model is served, when that is known without I/O."""
        return serving.ready_route(self.ws, model)

    def chat_route(self, serving: ChatServing, model: str) -> Route:
        """Where the model is served, starting its server if need be (blocks: call it off the event loop)."""
        return serving.route(self.ws, model)


def _bake_stats(metrics: list[dict[str, Any]], live: LiveStep | None, total_steps: int | None) -> dict[str, Any]:
    """A bake's run statistics from its committed metrics rows. Only every
    `train_log_iter_interval`-th step is logged, so time and cost are the logged steps' mean times
    the steps done."""
    from repo_store.stats import estimated_cost_usd

    timed = [row for row in metrics if row.get("tokens_per_s")]
    seconds_per_step = sum(row["tokens"] / row["tokens_per_s"] for row in timed) / len(timed) if timed else None
    step = max([row["iter"] for row in metrics] + [live.step if live else 0])
    seconds = step * seconds_per_step if seconds_per_step else None
    return {
        "step": step,
        "total_steps": total_steps,
        "seconds_per_step": round(seconds_per_step, 4) if seconds_per_step else None,
        "tokens_per_second": round(sum(r["tokens_per_s"] for r in timed) / len(timed), 1) if timed else None,
        "estimated_training_seconds": round(seconds, 1) if seconds else None,
        "estimated_cost_usd": estimated_cost_usd(engine_seconds=seconds or 0.0, tokens=0, priced_by_tokens=False),
    }
