"""The rollout job: sample `num_traj_per_stimulus` trajectories per stimulus under the teacher prompt.

Every stimulus is one engine request with `n` = trajectories and a seed derived from (target seed,
stimulus id), so a rerun reproduces it. Stimuli are grouped into fixed chunks (the plan fixes their
size on the first attempt); results stream out of the engine in completion order, and a chunk is
written and committed the moment its last stimulus is back. A resumed rollout sends only the stimuli
of uncommitted chunks, so a crash costs at most the chunks in flight.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

from prefect import flow

from repo_store import JobStatus, Store, Workspace, rows_to_table
from targets import InvalidInput, TargetConfig, derive_seed
from targets.render import rollout_context

from flows.engines import ChatRequest, ChatResult, Sampling
from flows.runtime import Engines, Progress, logger

DEFAULT_MAX_TOKENS = 256


def chunk_size_from_env() -> int:
    return int(os.environ.get("BAKEHOUSE_ROLLOUT_CHUNK", "64"))


def run_rollout(
    workspace: Workspace,
    repo_name: str,
    target_name: str,
    *,
    engines: Engines | None = None,
    chunk_size: int | None = None,
    on_progress: Callable[[float], None] | None = None,
) -> JobStatus:
    """Run (or resume) the rollout job of a target; returns its status when done or owned elsewhere."""
    target = workspace.get_target(repo_name, target_name)
    config = target.config
    stim = workspace.job(repo_name, target_name, "stim")
    # Checked before claiming so that asking too early leaves no trace (the API answers 400).
    if stim.status().status != "complete":
        raise InvalidInput("Stim job must complete before running rollout")
    if not config.model_name:
        raise InvalidInput("model_name must be configured in target")
    job = workspace.job(repo_name, target_name, "rollout")
    attempt = job.claim(owner="rollout")
    if attempt is None:
        return job.status()
    attempt.keep_alive()
    own_engines = engines is None
    engines = engines or Engines()
    progress = Progress(f"rollout-{repo_name}-{target_name}", on_progress)
    try:
        stimuli = stim.status().lines
        n = config.num_traj_per_stimulus
        size = chunk_size or chunk_size_from_env()
        plan = job.create_plan(
            {
                "num_chunks": max(1, -(-stimuli // size)),
                "stimuli_per_chunk": size,
                "stimuli": stimuli,
                "total_expected": stimuli * n,
            }
        )
        size, num_chunks = plan["stimuli_per_chunk"], plan["num_chunks"]
        done = set(job.chunks())
        engine = engines(config.model_name)
        logger.info(
            "rollout %s/%s: %d stimuli x %d trajectories with %s, %d of %d chunks already done",
            repo_name, target_name, stimuli, n, config.model_name, len(done), num_chunks,
        )
        pending: dict[int, dict[int, tuple[dict[str, Any], ChatResult]]] = {}
        stimulus_rows: dict[int, dict[str, Any]] = {}
        counters = {"trajectories": 0, "errors": 0, "prompt_tokens": 0, "completion_tokens": 0}

        def requests() -> Iterator[ChatRequest]:
            for stimulus_id, row in enumerate(stim.iter_rows()):
                if stimulus_id // size in done:
                    continue
                stimulus_rows[stimulus_id] = row
                context = rollout_context(row)
                yield ChatRequest(
                    key=stimulus_id,
                    messages=context["messages"],
                    tools=context.get("tools"),
                    sampling=_sampling(config, stimulus_id),
                )

        if len(done) < num_chunks:
            for result in engine.generate(requests()):
                chunk = result.key // size
                pending.setdefault(chunk, {})[result.key] = (stimulus_rows.pop(result.key), result)
                expected = min(size, stimuli - chunk * size)
                if len(pending[chunk]) == expected:
                    rows = _trajectory_rows(pending.pop(chunk), config, counters)
                    attempt.commit_chunk(chunk, rows_to_table(rows, ["stimulus_id", "trajectory_id"]))
                    done.add(chunk)
                    progress.update(100.0 * len(done) / num_chunks)
        if stimuli == 0:
            attempt.commit_chunk(0, rows_to_table([], ["stimulus_id", "trajectory_id"]))
        summary = {
            "stimuli": stimuli,
            "trajectories_this_attempt": counters["trajectories"],
            "errors_this_attempt": counters["errors"],
            "prompt_tokens": counters["prompt_tokens"],
            "completion_tokens": counters["completion_tokens"],
            "seconds": round(progress.elapsed, 2),
            "trajectories_per_second": round(counters["trajectories"] / max(progress.elapsed, 1e-9), 1),
            "model": config.model_name,
        }
        attempt.complete(num_chunks, summary)
        progress.update(100.0)
        progress.summary(f"rollout {repo_name}/{target_name}", summary)
    except Exception as error:
        attempt.fail(getattr(error, "message", None) or f"{type(error).__name__}: {error}")
        raise
    except BaseException:
        attempt.release()  # interrupted (Ctrl-C, cancel): the next start resumes at once
        raise
    finally:
        if own_engines:
            engines.close()
    return job.status()


def _sampling(config: TargetConfig, stimulus_id: int) -> Sampling:
    return Sampling(
        n=config.num_traj_per_stimulus,
        temperature=config.temperature,
        max_tokens=config.max_tokens or DEFAULT_MAX_TOKENS,
        seed=derive_seed(config.seed, "rollout", stimulus_id),
        extra=dict(config.extra_kwargs),
    )


def _trajectory_rows(
    results: dict[int, tuple[dict[str, Any], ChatResult]], config: TargetConfig, counters: dict[str, int]
) -> list[dict[str, Any]]:
    """Bread's rollout row shape plus flat ids, one row per trajectory, in (stimulus, trajectory) order."""
    rows = []
    for stimulus_id in sorted(results):
        stimulus, result = results[stimulus_id]
        base = {
            "unconditioned_stimulus": stimulus["unconditioned_stimulus"],
            "conditioned_stimulus": stimulus["conditioned_stimulus"],
            **({"trajectory_override_stimulus": stimulus["trajectory_override_stimulus"]}
               if "trajectory_override_stimulus" in stimulus else {}),
            "stimulus_id": stimulus_id,
            "model": config.model_name,
            "temperature": config.temperature,
            "seed": derive_seed(config.seed, "rollout", stimulus_id),
        }
        counters["prompt_tokens"] += result.prompt_tokens
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
            })
    return rows


@flow(name="rollout", log_prints=True)
def rollout_flow(repo_name: str, target_name: str, workspace: str = "default", data_url: str | None = None) -> dict:
    """Sample the trajectories of a target (idempotent: a repeat returns the job, a crash resumes)."""
    status = run_rollout(Store(data_url).workspace(workspace), repo_name, target_name)
    return {"status": status.status, "lines": status.lines, "error": status.error}
