"""The bake job: train a LoRA adapter so the model under the student prompt acts as under the teacher's.

    run_bake(workspace, repo, bake)   claim the bake's job, train (or resume), commit checkpoints

Data comes from the dataset targets' rollouts through the same page reader the API serves (pages
of at most 1000 rows, one page per dataset held at a time). A bake is a job like stim and rollout
(claims, lease, heartbeat, manifest: repo_store.jobs): a second start returns the running bake, a
killed one resumes from its last checkpoint with optimizer, schedule, RNGs and data position, so the steps
after the resume point are the steps an uninterrupted bake takes, and no step is logged twice.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any

from prefect import flow

from repo_store import MAX_PAGE_LIMIT, JobStatus, Store, Workspace
from repo_store.bakes import BakeRun
from repo_store.records import BakePlan, LiveStep
from targets.bake import BakeConfig, epoch_order, select_trajectories

from flows.data_parallel import data_parallel, init_group, share_flag, share_int
from flows.models import model_folder
from flows.params import BakeJob
from flows.runtime import Progress, logger, mark_cancelled, running


def run_bake(
    workspace: Workspace,
    repo_name: str,
    bake_name: str,
    *,
    processes: int = 1,
    stop_after_step: int | None = None,
    on_progress: Callable[[float], None] | None = None,
) -> JobStatus:
    """Run (or resume) a bake; returns its job status when done or when owned elsewhere.

    `processes` > 1 trains data-parallel on this machine (flows.data_parallel), with the same
    steps as one process. `stop_after_step` ends the attempt after that step as a crash would (its
    claim released, the job resumable): tests use it to compare a resumed bake with a whole one.
    """
    bake = workspace.get_bake(repo_name, bake_name)
    run = workspace.bake_run(repo_name, bake)
    attempt = run.job.claim(owner="bake")
    if attempt is None:
        return run.job.status()
    progress = Progress(f"bake-{repo_name}-{bake_name}", on_progress)
    follower_args = (workspace.store.url, workspace.name, repo_name, bake_name)
    with running(attempt, engines=None), data_parallel(processes, follow_bake, follower_args) as group:
        attempt.set_phase("loading_model")
        training = _Training.prepare(workspace, repo_name, bake_name, rank=0, world=processes)
        plan = run.job.create_plan(BakePlan(total_steps=training.total_steps, trajectories=len(training.selection),
                                            parent_model=training.parent))
        latest = run.latest_checkpoint()
        done = share_int(latest.step if latest else 0) if processes > 1 else (latest.step if latest else 0)
        if latest is not None:
            training.trainer.load_checkpoint({name: run.read_checkpoint_file(latest, name) for name in latest.files})
            logger.info("bake %s/%s resumes after step %d of %d", repo_name, bake_name, done, plan.total_steps)
        pending: list[dict[str, Any]] = []
        attempt.set_phase("training")
        for step, micro_batches in training.batches(done):
            attempt.raise_if_cancelled()
            group.go_on(True)
            result = training.trainer.step(micro_batches)
            attempt.touch()
            if step % bake.config.train_log_iter_interval == 0 or step == training.total_steps:
                pending.append(_metrics_row(step, step / training.steps_per_epoch, result))
                run.write_live(attempt.gen, LiveStep(step=step, total_steps=training.total_steps, loss=result.loss))
            progress.update(100.0 * step / training.total_steps)
            if _checkpoint_due(bake.config, step, training.total_steps):
                attempt.set_phase("checkpointing")
                run.write_checkpoint(step, training.trainer.checkpoint_files(step, training.parent), gen=attempt.gen,
                                     token=attempt.token, metrics=pending)
                pending = []
                attempt.set_phase("training")
            if stop_after_step is not None and stop_after_step <= step < training.total_steps:
                attempt.release()
                return run.job.status()
        run.write_metrics_file()
        summary = bake_summary(run)
        attempt.complete(0, summary)
        progress.summary(f"bake {repo_name}/{bake_name}", summary)
    return run.job.status()


def follow_bake(rank: int, world: int, port: int, data_url: str, workspace_name: str, repo_name: str, bake_name: str) -> None:
    """A data-parallel follower (rank > 0): the leader's steps on its slice, writing nothing."""
    init_group(rank, world, port)
    workspace = Store(data_url).workspace(workspace_name)
    training = _Training.prepare(workspace, repo_name, bake_name, rank=rank, world=world)
    done = share_int()
    if done:
        run = workspace.bake_run(repo_name, workspace.get_bake(repo_name, bake_name))
        record = run.checkpoint(done)
        training.trainer.load_checkpoint({name: run.read_checkpoint_file(record, name) for name in record.files})
    for _, micro_batches in training.batches(done):
        if not share_flag():
            break
        training.trainer.step(micro_batches)
    else:
        share_flag()  # the leader's final "stop"
    import torch.distributed as dist

    dist.destroy_process_group()


class _Training:
    """What every rank derives alike from the bake: the trajectories, their order, the trainer."""

    def __init__(self, workspace: Workspace, repo_name: str, config: BakeConfig, parent: str, lines: list[int],
                 rank: int, world: int):
        from flows.trainer import Trainer

        self.workspace, self.repo_name, self.config, self.parent = workspace, repo_name, config, parent
        self.selection = select_trajectories(lines, [d.weight for d in config.datasets], config.total_trajectories, config.seed)
        self.steps_per_epoch = math.ceil(len(self.selection) / (config.micro_batch_size * config.gradient_accumulation_steps))
        self.total_steps = self.steps_per_epoch * config.epochs
        self.trainer = Trainer(model_folder(workspace, parent), config, parent_model=parent,
                               total_steps=self.total_steps, rank=rank, world=world)

    @classmethod
    def prepare(cls, workspace: Workspace, repo_name: str, bake_name: str, *, rank: int, world: int) -> _Training:
        config = workspace.get_bake(repo_name, bake_name).config
        lines = workspace.bake_dataset_lines(repo_name, config)
        parent = config.model.parent_model_name or workspace.get_repo(repo_name).base_model
        return cls(workspace, repo_name, config, parent, lines, rank, world)

    def batches(self, done: int) -> Iterator[tuple[int, list[list]]]:
        """(step, micro-batches of examples) for every step after `done`, in the bake's order."""
        config = self.config
        per_step = config.micro_batch_size * config.gradient_accumulation_steps
        pages = _PageReader(self.workspace, self.repo_name, [d.target for d in config.datasets])
        for epoch in range(config.epochs):
            if (epoch + 1) * self.steps_per_epoch <= done:
                continue  # a resumed bake skips whole epochs without reading them
            order = epoch_order(self.selection, epoch, config.seed, MAX_PAGE_LIMIT)
            for index in range(self.steps_per_epoch):
                step = epoch * self.steps_per_epoch + index + 1
                if step <= done:
                    continue
                picked = order[index * per_step:(index + 1) * per_step]
                examples = [self.trainer.example(pages.row(dataset, row)) for dataset, row in picked]
                yield step, [examples[i:i + config.micro_batch_size] for i in range(0, len(examples), config.micro_batch_size)]


def bake_summary(run: BakeRun) -> dict[str, Any]:
    losses = [row["loss"] for row in run.iter_metrics()]
    return {
        "steps": max((c.step for c in run.checkpoints()), default=0),
        "checkpoints": [c.step for c in run.checkpoints()],
        "final_loss": losses[-1] if losses else None,
        "min_loss": min(losses, default=None),
        "max_loss": max(losses, default=None),
    }


class _PageReader:
    """Rows by (dataset, index), read a page (≤ 1000 rows) at a time; one page per dataset kept."""

    def __init__(self, workspace: Workspace, repo_name: str, targets: list[str]):
        self.workspace, self.repo_name, self.targets = workspace, repo_name, targets
        self.pages: dict[int, tuple[int, list[dict[str, Any]]]] = {}

    def row(self, dataset: int, index: int) -> dict[str, Any]:
        number = index // MAX_PAGE_LIMIT
        if self.pages.get(dataset, (None,))[0] != number:
            page = self.workspace.read_page(self.repo_name, self.targets[dataset], "rollout",
                                            offset=number * MAX_PAGE_LIMIT, limit=MAX_PAGE_LIMIT, include_tokens=True)
            self.pages[dataset] = (number, page.rows)
        return self.pages[dataset][1][index % MAX_PAGE_LIMIT]


def _metrics_row(step: int, epoch: float, result) -> dict[str, Any]:
    return {"iter": step, "loss": result.loss, "train_loss": result.loss, "kl_per_token": result.loss,
            "top1_agreement": result.top1_agreement, "lr": result.learning_rate, "epoch": epoch,
            "tokens": result.tokens, "tokens_per_s": result.tokens / max(result.seconds, 1e-9),
            "grad_norm": result.grad_norm}


def _checkpoint_due(config: BakeConfig, step: int, total_steps: int) -> bool:
    every = config.save_every_n_steps
    return step == total_steps or (every is not None and step % every == 0)


@flow(name="bake", log_prints=True, on_cancellation=[mark_cancelled("bake")])
def bake_flow(job: BakeJob) -> dict:
    """Train (or resume) one bake; Prefect shows its progress artifact and loss table."""
    status = run_bake(Store(job.data_url).workspace(job.workspace), job.repo_name, job.bake_name, processes=job.processes)
    return {"status": status.status, "error": status.error, "summary": status.summary}
