"""The rollout job: sample `num_traj_per_stimulus` trajectories per stimulus under the teacher prompt.

Every stimulus is one engine request with `n` = trajectories and a seed derived from (target seed,
stimulus id), so a rerun reproduces it. Stimuli are grouped into fixed chunks (the plan fixes their
size on the first attempt); results stream out of the engine in completion order, and a chunk is
written and committed the moment its last stimulus is back. A resumed rollout sends only the stimuli
of uncommitted chunks, so a crash costs at most the chunks in flight.

Large rollouts can be sharded: the job's attempt (the parent) splits the chunks into shards, launches
each shard as its own flow run (on a GPU work pool), relaunches shards whose owner died, and commits
the manifest when every chunk is there.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from prefect import flow

from repo_store import Job, JobStatus, Store, Workspace, rows_to_table
from repo_store.records import RolloutPlan
from repo_store.settings import get_settings
from repo_store.stats import RequestCounts, run_stats
from targets import InvalidInput, TargetConfig, derive_seed
from targets.render import rollout_context

from flows.engines import ChatRequest, ChatResult, Engine, EngineError, Sampling
from flows.chunked_job import ChunkedRun, run_chunked_job, run_chunked_shard
from flows.models import engine_model
from flows.params import TargetJob
from flows.runtime import Engines, logger, mark_cancelled

DEFAULT_MAX_TOKENS = 256
MAX_SHARD_LAUNCHES = 3
SUPERVISE_SECONDS = 1.0


class ShardLauncher(Protocol):
    """Starts one shard of a rollout somewhere (a Prefect deployment, a thread in tests)."""

    def launch(self, shard: int, job_gen: int, launch_number: int, attempt_token: str) -> Any:
        """Start shard `shard` for job attempt `job_gen` (whose unique token is `attempt_token`)."""

    def finished(self, handle: Any) -> bool: ...


class RolloutKind:
    """The rollout job as the chunked-job driver runs it: fixed chunks of stimuli, generated here or
    by shard runs that this attempt supervises (with a `launcher`)."""

    def __init__(self, workspace: Workspace, repo_name: str, target_name: str, *, chunk_size: int | None = None,
                 launcher: ShardLauncher | None = None, stimuli_per_shard: int = 0):
        self.workspace, self.repo_name, self.target_name = workspace, repo_name, target_name
        self.config = workspace.get_target(repo_name, target_name).config
        self.stim = workspace.job(repo_name, target_name, "stim")
        self.chunk_size, self.launcher, self.stimuli_per_shard = chunk_size, launcher, stimuli_per_shard
        self.launches: dict[int, int] = {}
        self.before = RequestCounts()

    def check_ready(self) -> None:
        """Checked before claiming, so that asking too early leaves no trace (the API answers 400)."""
        if self.stim.status().status != "complete":
            raise InvalidInput("Stim job must complete before running rollout")
        if not self.config.model_name:
            raise InvalidInput("model_name must be configured in target")

    def plan(self, engines: Engines) -> RolloutPlan:
        stimuli = self.stim.status().lines
        size = self.chunk_size or get_settings().rollout_chunk
        num_chunks = max(1, -(-stimuli // size))
        chunks_per_shard = max(1, -(-self.stimuli_per_shard // size)) if self.stimuli_per_shard else num_chunks
        return RolloutPlan(num_chunks=num_chunks, stimuli_per_chunk=size, chunks_per_shard=chunks_per_shard,
                           stimuli=stimuli, total_expected=stimuli * self.config.num_traj_per_stimulus)

    def produce(self, run: ChunkedRun) -> None:
        plan = run.plan
        logger.info("rollout %s/%s: %d stimuli x %d trajectories with %s in %d chunks, %d shards",
                    self.repo_name, self.target_name, plan.stimuli, self.config.num_traj_per_stimulus,
                    self.config.model_name, plan.num_chunks, len(plan.shards()))
        if self.launcher is not None:
            _supervise(run, self.launcher, self.launches)
        else:
            self.generate(run, range(plan.num_chunks), RequestCounts())

    def generate(self, run: ChunkedRun, chunks: range, counters: RequestCounts) -> None:
        config = self.config
        _generate(run, self.stim, config, chunks, lambda: run.engines(engine_model(self.workspace, config.model_name),
                                                                     max_concurrency=config.max_concurrency), counters)

    def summary(self, run: ChunkedRun) -> dict[str, Any]:
        totals = _chunk_totals(run.job)
        this_attempt = totals["trajectories"] - self.before["trajectories"]
        return {
            **run_stats(totals, seconds=run.progress.elapsed),
            "stimuli": run.plan.stimuli,
            "shards": len(run.plan.shards()),
            "trajectories_this_attempt": this_attempt,
            "errors_this_attempt": totals["errors"] - self.before["errors"],
            "trajectories_per_second": round(this_attempt / max(run.progress.elapsed, 1e-9), 1),
            "model": self.config.model_name,
            "teacher_top_k": self.config.teacher_top_k,
        }


def run_rollout(
    workspace: Workspace,
    repo_name: str,
    target_name: str,
    *,
    engines: Engines | None = None,
    chunk_size: int | None = None,
    on_progress: Callable[[float], None] | None = None,
    launcher: ShardLauncher | None = None,
    stimuli_per_shard: int = 0,
) -> JobStatus:
    """Run (or resume) the rollout job of a target; returns its status when done or owned elsewhere.

    With a `launcher` the chunks are generated by shard runs (of `stimuli_per_shard` stimuli; all in
    one shard when 0) and this attempt supervises them; otherwise it generates every chunk itself.
    """
    kind = RolloutKind(workspace, repo_name, target_name, chunk_size=chunk_size, launcher=launcher,
                       stimuli_per_shard=stimuli_per_shard)
    kind.check_ready()
    job = workspace.job(repo_name, target_name, "rollout")
    # Every committed chunk carries its own counts, so the totals hold whoever generated it (this
    # attempt, its shards, an earlier attempt); what was there before this attempt is subtracted
    # for this attempt's rate.
    kind.before = _chunk_totals(job)
    return run_chunked_job(job, kind, owner="rollout", title=f"rollout {repo_name}/{target_name}", engines=engines,
                           on_progress=on_progress)


def run_rollout_shard(
    workspace: Workspace,
    repo_name: str,
    target_name: str,
    *,
    shard: int,
    job_gen: int,
    engines: Engines | None = None,
) -> dict[str, Any]:
    """Generate the missing chunks of one shard for attempt `job_gen` of the rollout job."""
    kind = RolloutKind(workspace, repo_name, target_name)
    job = workspace.job(repo_name, target_name, "rollout")
    plan = job.plan()
    if plan is None:
        raise InvalidInput("the rollout has no plan yet: start the rollout, not a shard")
    chunks = plan.shards()[shard]
    counters = RequestCounts()

    def produce(run: ChunkedRun) -> None:
        logger.info("rollout %s/%s shard %d: chunks %d-%d with %s", repo_name, target_name, shard, chunks[0], chunks[-1],
                    kind.config.model_name)
        kind.generate(run, chunks, counters)

    if not run_chunked_shard(job, plan, produce, scope=shard_scope(shard), parent_gen=job_gen, owner=f"shard-{shard}",
                             title=f"rollout {repo_name}/{target_name} shard {shard}", engines=engines):
        return {"shard": shard, "status": "owned elsewhere or complete"}
    return {"shard": shard, "status": "done", **counters.values}


def shard_scope(shard: int) -> str:
    return f"shard-{shard:05d}"


def _chunk_totals(job: Job) -> RequestCounts:
    """The counts summed over every committed chunk's marker."""
    return RequestCounts.total(record.stats for record in job.chunks().values())


def _generate(
    run: ChunkedRun,
    stim: Job,
    config: TargetConfig,
    chunks: range,
    open_engine: Callable[[], Engine],
    counters: RequestCounts,
) -> None:
    """Generate and commit every chunk in `chunks` that is not committed yet (the engine is opened
    only when there is something to generate)."""
    size, stimuli = run.plan.stimuli_per_chunk, run.plan.stimuli
    wanted = set(run.missing(chunks))
    run.attempt.raise_if_cancelled()
    if not wanted:
        return
    attempt = run.attempt
    if stimuli == 0:  # nothing to sample: one empty chunk completes the job
        run.commit(0, rows_to_table([], ["stimulus_id", "trajectory_id"], token_columns=True))
        return
    pending: dict[int, dict[int, _Answered]] = {}  # chunk -> stimulus id -> its answer
    in_flight: dict[int, tuple[dict[str, Any], Sampling, float]] = {}  # stimulus id -> (row, sampling, sent at)
    attempt.set_phase("loading_model")
    engine = open_engine()
    attempt.set_phase("generating")
    last_commit = time.monotonic()  # a chunk's engine seconds: since the engine was ready or the last commit

    def requests() -> Iterator[ChatRequest]:
        for stimulus_id, row in enumerate(stim.iter_rows()):
            if stimulus_id // size not in wanted:
                continue
            context = rollout_context(row)
            # The teacher's top-K is recorded only where the rollout context is the teacher's.
            top_k = 0 if "trajectory_override_stimulus" in row else config.teacher_top_k
            sampling = _sampling(config, stimulus_id, top_k)
            in_flight[stimulus_id] = (row, sampling, time.monotonic())
            yield ChatRequest(key=stimulus_id, messages=context["messages"], tools=context.get("tools"), sampling=sampling)

    for result in engine.generate(requests()):
        attempt.touch()
        chunk = result.key // size
        row, sampling, sent_at = in_flight.pop(result.key)
        pending.setdefault(chunk, {})[result.key] = _Answered(row, sampling.seed, result, 1000 * (time.monotonic() - sent_at))
        if len(pending[chunk]) == min(size, stimuli - chunk * size):
            results = pending.pop(chunk)
            errors = [a.result.error for a in results.values() if a.result.error]
            if len(errors) == len(results):
                # The engine is down or refuses these settings: fail (and resume later) rather than
                # publish a chunk of nothing but errors.
                raise EngineError(f"every request of chunk {chunk} failed, e.g.: {errors[0]}")
            stats = RequestCounts()
            rows = _trajectory_rows(results, config, stats)
            stats.engine_seconds, last_commit = time.monotonic() - last_commit, time.monotonic()
            run.commit(chunk, rows_to_table(rows, ["stimulus_id", "trajectory_id"], token_columns=True), stats.to_json())
            counters.add(stats)
            attempt.raise_if_cancelled()


def _supervise(run: ChunkedRun, launcher: ShardLauncher, launches: dict[int, int]) -> None:
    """Launch every unfinished shard and relaunch those whose owner died, until all chunks are in.

    Storage decides who is working: a shard whose claim is live is left alone; one whose run was
    launched but has not claimed yet is waited for; anything else (never launched, owner dead, run
    ended without finishing) is launched again, at most MAX_SHARD_LAUNCHES times.
    """
    job, attempt, shards = run.job, run.attempt, run.plan.shards()
    launched: dict[int, tuple[Any, int | None]] = {}  # shard -> (handle, its latest claim at launch)
    attempt.set_phase("generating")  # in the shards
    while True:
        attempt.raise_if_cancelled()
        attempt.touch()  # supervising is progress; a stuck shard is judged by its own lease
        done = set(run.committed())
        run.progress.update(100.0 * len(done) / run.plan.num_chunks)
        unfinished = [i for i, chunks in enumerate(shards) if not set(chunks) <= done]
        if not unfinished:
            return
        for shard in unfinished:
            scope = shard_scope(shard)
            latest = job.latest_claim(scope)
            latest_gen = latest.gen if latest else None
            if launched.get(shard) and not launcher.finished(launched[shard][0]) and launched[shard][1] == latest_gen:
                continue  # launched, not claimed yet (queued for a worker)
            if job.owner_alive(scope):
                continue
            if set(shards[shard]) <= set(job.chunks()):
                continue  # its owner finished between our two looks
            if launches.get(shard, 0) >= MAX_SHARD_LAUNCHES:
                raise RuntimeError(f"shard {shard} did not finish after {MAX_SHARD_LAUNCHES} launches")
            launches[shard] = launches.get(shard, 0) + 1
            logger.info("rollout %s: launching shard %d (launch %d)", job.folder, shard, launches[shard])
            launched[shard] = (launcher.launch(shard, attempt.gen, launches[shard], attempt.token), latest_gen)
        time.sleep(SUPERVISE_SECONDS)


def _sampling(config: TargetConfig, stimulus_id: int, top_logprobs: int) -> Sampling:
    return Sampling(
        n=config.num_traj_per_stimulus,
        temperature=config.temperature,
        max_tokens=config.max_tokens or DEFAULT_MAX_TOKENS,
        seed=derive_seed(config.seed, "rollout", stimulus_id),
        top_logprobs=top_logprobs,
        extra=dict(config.extra_kwargs),
    )


@dataclass(frozen=True)
class _Answered:
    """A stimulus whose request came back: its row, the seed it was sampled with, the result."""

    stimulus: dict[str, Any]
    seed: int
    result: ChatResult
    latency_ms: float


def _trajectory_rows(results: dict[int, _Answered], config: TargetConfig, counters: RequestCounts) -> list[dict[str, Any]]:
    """Bread's rollout row shape plus flat ids, one row per trajectory, in (stimulus, trajectory) order."""
    rows = []
    for stimulus_id in sorted(results):
        stimulus, result = results[stimulus_id].stimulus, results[stimulus_id].result
        counters.record_request(latency_ms=results[stimulus_id].latency_ms, prompt_tokens=result.prompt_tokens,
                                cached_prompt_tokens=result.cached_prompt_tokens, error=result.error)
        base = {
            "unconditioned_stimulus": stimulus["unconditioned_stimulus"],
            "conditioned_stimulus": stimulus["conditioned_stimulus"],
            **({"trajectory_override_stimulus": stimulus["trajectory_override_stimulus"]}
               if "trajectory_override_stimulus" in stimulus else {}),
            "stimulus_id": stimulus_id,
            "model": config.model_name,
            "temperature": config.temperature,
            "seed": results[stimulus_id].seed,  # the one it was sampled with
        }
        for trajectory_id in range(config.num_traj_per_stimulus):
            if result.error is not None or trajectory_id >= len(result.completions):
                # A trajectory that failed is a row that says so, never a hole in the output.
                counters["errors"] += 1
                rows.append({**base, "trajectory_id": trajectory_id, "response": None, "finish_reason": None,
                             "error": result.error or "the engine returned fewer completions than requested"})
                continue
            completion = result.completions[trajectory_id]
            counters["trajectories"] += 1
            counters["completion_tokens"] += completion.completion_tokens
            usage = {
                "prompt_tokens": result.prompt_tokens,
                "completion_tokens": completion.completion_tokens,
                "total_tokens": result.prompt_tokens + completion.completion_tokens,
            }
            rows.append({
                **base,
                "trajectory_id": trajectory_id,
                "response": {"role": "assistant", "content": completion.text, "usage": usage},
                "finish_reason": completion.finish_reason,
                "tokens": completion.completion_tokens,
                # Typed token columns (repo_store.parts.TOKEN_COLUMNS), not part of the JSON row.
                "response_token_ids": completion.token_ids,
                "teacher_top_ids": completion.top_ids,
                "teacher_top_logprobs": completion.top_logprobs,
            })
    return rows


@flow(name="rollout", log_prints=True, on_cancellation=[mark_cancelled("rollout")])
def rollout_flow(job: TargetJob, stimuli_per_shard: int = 0) -> dict:
    """Sample the trajectories of a target. Idempotent: a repeat returns the job, a crash resumes.

    stimuli_per_shard > 0 (in a deployment): shards of that many stimuli run as separate
    `rollout-shard` flow runs on the GPU work pool; 0: this run generates everything.
    """
    from flows.deployments import DeploymentShardLauncher, in_deployment

    launcher = DeploymentShardLauncher(job) if stimuli_per_shard > 0 and in_deployment() else None
    status = run_rollout(Store(job.data_url).workspace(job.workspace), job.repo_name, job.target_name,
                         launcher=launcher, stimuli_per_shard=stimuli_per_shard)
    return {"status": status.status, "lines": status.lines, "error": status.error}


@flow(name="rollout-shard", log_prints=True, on_cancellation=[mark_cancelled("rollout")])
def rollout_shard_flow(job: TargetJob, shard: int, job_attempt: int) -> dict:
    """One shard of a sharded rollout (launched by the rollout flow; resumes its finished chunks)."""
    return run_rollout_shard(Store(job.data_url).workspace(job.workspace), job.repo_name, job.target_name,
                             shard=shard, job_gen=job_attempt)
