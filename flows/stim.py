"""The stim job: run a target's generators and write one stimulus row per distinct question.

Each generator is one chunk of the job (driven by flows.chunked_job): a resumed stim skips every
generator whose chunk is committed. Questions are deduplicated across generators in list order (the
first generator to ask a question keeps it) and the job summary says how many were dropped and why.
Which committed chunks still stand after one is redone is decided by `StimCursor`, a pure value.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from prefect import flow

from repo_store import JobStatus, Store, Workspace, rows_to_table
from repo_store.records import ChunkMarker, StimPlan
from targets import InvalidInput, PromptSpec, render_stimulus

from flows.chunked_job import ChunkedRun, run_chunked_job
from flows.generators import run_generator
from flows.models import engine_model
from flows.params import TargetJob
from flows.runtime import Engines, logger, mark_cancelled

Row = dict[str, Any]


@dataclass(frozen=True)
class StimCursor:
    """Where the next stim chunk starts: its first stimulus id, and every question before it."""

    next_id: int = 0
    seen: frozenset[str] = field(default_factory=frozenset)

    def after(self, rows: Iterable[Row]) -> StimCursor:
        """The cursor once `rows` (a chunk, in order) follow this one."""
        rows = list(rows)
        return StimCursor(self.next_id + len(rows), self.seen | {question_of(row) for row in rows})

    def lines_up(self, rows: list[Row]) -> bool:
        """Whether a chunk committed earlier can stay at this point: its ids follow on and it asks no
        question already asked. After a redone chunk comes out differently (a model answered
        otherwise the second time), the chunks after it no longer line up and are redone too."""
        return (not rows or rows[0]["stimulus_id"] == self.next_id) and not any(question_of(r) in self.seen for r in rows)

    def fresh(self, questions: Iterable[str]) -> list[str]:
        """`questions` in order, without repeats and without those asked before this point."""
        return [q for q in dict.fromkeys(questions) if q not in self.seen]


def question_of(row: Row) -> str:
    return row["conditioned_stimulus"]["messages"][-1]["content"]


def stim_summary(chunks: Mapping[int, ChunkMarker], seconds: float) -> dict[str, Any]:
    stats = [chunks[i].stats for i in sorted(chunks)]
    return {
        "stimuli": sum(c.part.rows for c in chunks.values()),
        "requested": sum(s.get("requested", 0) for s in stats),
        "made": sum(s.get("made", 0) for s in stats),
        "duplicates_dropped": sum(s.get("duplicates_of_earlier_generators", 0) for s in stats),
        "shortfalls": [n for s in stats for n in s.get("notes", [])],
        "seconds": round(seconds, 2),
    }


class StimKind:
    """The stim job as the chunked-job driver runs it: chunk i is generator i's stimuli."""

    def __init__(self, workspace: Workspace, repo_name: str, target_name: str):
        self.workspace, self.repo_name, self.target_name = workspace, repo_name, target_name
        self.config = workspace.get_target(repo_name, target_name).config  # NotFound before anything is written
        self.teacher: PromptSpec | None = None  # read by `plan`, inside the attempt
        self.student: PromptSpec | None = None
        self.default_model = ""

    def plan(self, engines: Engines) -> StimPlan:
        # Read inside the attempt: a target that cannot be stimmed fails the job with the reason.
        if not self.config.generators:
            raise InvalidInput("Target must have generators and teacher prompt configured")
        self.teacher = self.workspace.get_prompt(self.repo_name, self.config.teacher_prompt)
        self.student = self.workspace.get_prompt(self.repo_name, self.config.student_prompt)
        self.default_model = self.config.model_name or self.workspace.get_repo(self.repo_name).base_model
        return StimPlan(num_chunks=len(self.config.generators), total_expected=sum(g.count for g in self.config.generators))

    def produce(self, run: ChunkedRun) -> None:
        run.attempt.set_phase("generating")
        missing = run.missing()
        if not missing:
            return
        # Questions committed before the first missing generator: later ones must not repeat them
        # (read chunk by chunk, each checked against its marker: a damaged one is redone).
        cursor = StimCursor()
        for index in range(missing[0]):
            cursor = cursor.after(run.job.chunk_rows(index))
        for index in range(missing[0], run.plan.num_chunks):
            run.attempt.raise_if_cancelled()
            if index not in missing:  # committed after a chunk being redone: does it still line up?
                kept = run.job.chunk_rows(index)
                if cursor.lines_up(kept):
                    cursor = cursor.after(kept)
                    continue
                run.redo(index)
            rows, stats = self._stimuli(run, index, cursor)
            marker = run.commit(index, rows_to_table(rows, ["stimulus_id"]), stats)
            cursor = cursor.after(rows if run.won(marker) else run.job.chunk_rows(index))  # the winner's rows
            logger.info("stim %s/%s: generator %d (%s) wrote %d stimuli", self.repo_name, self.target_name, index,
                        self.config.generators[index].type, len(rows))

    def _stimuli(self, run: ChunkedRun, index: int, cursor: StimCursor) -> tuple[list[Row], dict[str, Any]]:
        generator = self.config.generators[index]
        output = run_generator(
            generator,
            index=index,
            teacher=self.teacher,
            target_seed=self.config.seed,
            engine_for=lambda model: run.engines(engine_model(self.workspace, model)),
            default_model=self.default_model,
            read_template=self.workspace.read_template,
            read_dataset=self.workspace.read_dataset_questions,
            check_cancel=lambda: (run.attempt.raise_if_cancelled(), run.attempt.touch()),
        )
        fresh = cursor.fresh(output.questions)
        rows = [
            {**render_stimulus(q, teacher=self.teacher, student=self.student,
                               rollout_with_conditioned=generator.rollout_with_conditioned),
             "stimulus_id": cursor.next_id + offset, "generator": index}
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

    def summary(self, run: ChunkedRun) -> dict[str, Any]:
        return stim_summary(run.job.chunks(), run.progress.elapsed)


def run_stim(
    workspace: Workspace,
    repo_name: str,
    target_name: str,
    *,
    engines: Engines | None = None,
    on_progress: Callable[[float], None] | None = None,
) -> JobStatus:
    """Run (or resume) the stim job of a target; returns its status when done or when owned elsewhere."""
    kind = StimKind(workspace, repo_name, target_name)
    return run_chunked_job(workspace.job(repo_name, target_name, "stim"), kind, owner="stim",
                           title=f"stim {repo_name}/{target_name}", engines=engines, on_progress=on_progress)


@flow(name="stim", log_prints=True, on_cancellation=[mark_cancelled("stim")])
def stim_flow(job: TargetJob) -> dict:
    """Write the stimuli of a target (idempotent: a repeat returns the existing job, a crash resumes)."""
    status = run_stim(Store(job.data_url).workspace(job.workspace), job.repo_name, job.target_name)
    return {"status": status.status, "lines": status.lines, "error": status.error}
