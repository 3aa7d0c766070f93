"""The stim job: run a target's generators and write one stimulus row per distinct question.

Each generator is one chunk of the job (see repo_store.jobs): a resumed stim skips every generator
whose chunk is committed. Questions are deduplicated across generators in list order (the first
generator to ask a question keeps it) and the job summary says how many were dropped and why.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prefect import flow

from repo_store import JobStatus, Store, Workspace, rows_to_table
from targets import Generator, InvalidInput, render_stimulus

from flows.generators import run_generator
from flows.params import TargetJob
from flows.models import engine_model
from flows.runtime import Engines, Progress, complete_repairing, logger, mark_cancelled, running


def run_stim(
    workspace: Workspace,
    repo_name: str,
    target_name: str,
    *,
    engines: Engines | None = None,
    on_progress: Callable[[float], None] | None = None,
) -> JobStatus:
    """Run (or resume) the stim job of a target; returns its status when done or when owned elsewhere."""
    target = workspace.get_target(repo_name, target_name)  # NotFound before anything is written
    job = workspace.job(repo_name, target_name, "stim")
    attempt = job.claim(owner="stim")
    if attempt is None:
        return job.status()
    progress = Progress(f"stim-{repo_name}-{target_name}", on_progress)
    with running(attempt, engines) as engines:
        repo = workspace.get_repo(repo_name)
        config = target.config
        if not config.generators:
            raise InvalidInput("Target must have generators and teacher prompt configured")
        teacher = workspace.get_prompt(repo_name, config.teacher_prompt)
        student = workspace.get_prompt(repo_name, config.student_prompt)
        plan = job.create_plan(
            {"num_chunks": len(config.generators), "total_expected": sum(g.count for g in config.generators)}
        )

        def stimuli(generator: Generator, index: int, first_id: int, seen: set[str]) -> tuple[list[dict], dict]:
            output = run_generator(
                generator,
                index=index,
                teacher=teacher,
                target_seed=config.seed,
                engine_for=lambda model: engines(engine_model(workspace, model)),
                default_model=config.model_name or repo.base_model,
                read_template=workspace.read_template,
                read_dataset=workspace.read_dataset_questions,
                check_cancel=lambda: (attempt.raise_if_cancelled(), attempt.touch()),
            )
            fresh = list(dict.fromkeys(q for q in output.questions if q not in seen))
            rows = [
                {
                    **render_stimulus(q, teacher=teacher, student=student,
                                      rollout_with_conditioned=generator.rollout_with_conditioned),
                    "stimulus_id": first_id + offset,
                    "generator": index,
                }
                for offset, q in enumerate(fresh)
            ]
            stats = {
                "generator": generator.type,
                "requested": output.requested,
                "made": len(output.questions),
                "duplicates_of_earlier_generators": len(output.questions) - len(fresh),
                "notes": output.notes,
            }
            return rows, stats

        def produce() -> None:
            attempt.set_phase("generating")
            done = job.chunks()
            missing = [i for i in range(plan["num_chunks"]) if i not in done]
            if not missing:
                return
            # Questions committed before the first missing generator: later ones must not repeat them
            # (read chunk by chunk, each checked against its marker: a damaged one is redone).
            seen = {_question(row) for index in range(missing[0]) for row in job.chunk_rows(index)}
            next_id = sum(done[i].part.rows for i in range(missing[0]))
            for index in range(missing[0], plan["num_chunks"]):
                attempt.raise_if_cancelled()
                if index in done:
                    # Committed after a chunk being redone: it stands if it still lines up (ids follow
                    # on, no question the redone chunks now hold). A model that answered differently
                    # the second time shifts it, and then it is redone too.
                    kept = job.chunk_rows(index)
                    if (not kept or kept[0]["stimulus_id"] == next_id) and not any(_question(r) in seen for r in kept):
                        seen.update(_question(row) for row in kept)
                        next_id += len(kept)
                        continue
                    attempt.discard_chunk(index)
                rows, stats = stimuli(config.generators[index], index, next_id, set(seen))
                attempt.touch()
                record = attempt.commit_chunk(index, rows_to_table(rows, ["stimulus_id"]), stats)
                committed = rows if record.token == attempt.token else job.chunk_rows(index)
                seen.update(_question(row) for row in committed)  # the winner's rows, if not ours
                next_id += len(committed)
                progress.update(100.0 * len(job.chunks()) / plan["num_chunks"])
                logger.info("stim %s/%s: generator %d (%s) wrote %d stimuli", repo_name, target_name, index,
                            config.generators[index].type, len(rows))

        complete_repairing(attempt, plan["num_chunks"], produce, lambda: _summary(job.chunks(), progress.elapsed))
        progress.update(100.0)
        progress.summary(f"stim {repo_name}/{target_name}", job.status().summary)
    return job.status()


def _question(row: dict[str, Any]) -> str:
    return row["conditioned_stimulus"]["messages"][-1]["content"]


def _summary(chunks, seconds: float) -> dict[str, Any]:
    stats = [chunks[i].stats for i in sorted(chunks)]
    return {
        "stimuli": sum(c.part.rows for c in chunks.values()),
        "requested": sum(s.get("requested", 0) for s in stats),
        "made": sum(s.get("made", 0) for s in stats),
        "duplicates_dropped": sum(s.get("duplicates_of_earlier_generators", 0) for s in stats),
        "shortfalls": [n for s in stats for n in s.get("notes", [])],
        "seconds": round(seconds, 2),
    }


@flow(name="stim", log_prints=True, on_cancellation=[mark_cancelled("stim")])
def stim_flow(job: TargetJob) -> dict:
    """Write the stimuli of a target (idempotent: a repeat returns the existing job, a crash resumes)."""
    status = run_stim(Store(job.data_url).workspace(job.workspace), job.repo_name, job.target_name)
    return {"status": status.status, "lines": status.lines, "error": status.error}
