"""Prompt Pursuit (arXiv 2409.13697): bake a prompt, then again on top of what was baked.

Round 1 is a target and a bake as they are defined. Each later round k rolls the same stimuli out
with the previous round's checkpoint as the model, under the same teacher prompt (target
`<target>-r<k>`, the first target as its template), and bakes that on top of the same checkpoint
(bake `<bake>-r<k>`, the first bake as its template). The teacher of round k is the prompted model
of round k - 1, so the behaviour is pushed further each round, past what one bake of the prompt gives.

Every step is the ordinary job (stim, rollout, bake with their markers), so a pursuit that stops
half-way resumes where it stopped when run again.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from repo_store import Workspace
from targets import TargetSpec
from targets.bake import BakeSpec

from flows.bake import run_bake
from flows.rollout import run_rollout
from flows.runtime import Engines
from flows.stim import run_stim


@dataclass(frozen=True)
class PursuitRound:
    number: int
    target_name: str
    bake_name: str
    rollout_model: str  # the model whose answers this round's bake learns
    checkpoint: str  # what this round baked: `<workspace>/<repo>/<bake>/<step>`


def run_pursuit(ws: Workspace, repo_name: str, *, target_name: str, bake_name: str, rounds: int,
                engines: Engines | None = None,
                on_round: Callable[[PursuitRound], None] | None = None) -> list[PursuitRound]:
    """Run `rounds` rounds (1 = just the bake); returns each round's names and checkpoint."""
    done: list[PursuitRound] = []
    previous: str | None = None
    for number in range(1, rounds + 1):
        target, bake = _round_resources(ws, repo_name, target_name, bake_name, number, previous)
        for job, run in (("stim", run_stim), ("rollout", run_rollout)):
            status = run(ws, repo_name, target, **({"engines": engines} if engines else {}))
            if status.status != "complete":
                raise RuntimeError(f"round {number}: the {job} of '{target}' ended {status.status}: {status.error}")
        status = run_bake(ws, repo_name, bake)
        if status.status != "complete":
            raise RuntimeError(f"round {number}: bake '{bake}' ended {status.status}: {status.error}")
        latest = ws.bake_run(repo_name, ws.get_bake(repo_name, bake)).latest_checkpoint()
        checkpoint = f"{ws.name}/{repo_name}/{bake}/{latest.step}"
        done.append(PursuitRound(number, target, bake, ws.get_target(repo_name, target).config.model_name, checkpoint))
        if on_round:
            on_round(done[-1])
        previous = checkpoint
    return done


def _round_resources(ws: Workspace, repo_name: str, target_name: str, bake_name: str, number: int,
                     previous: str | None) -> tuple[str, str]:
    """The target and bake of round `number` (created for rounds after the first; creating is idempotent)."""
    if previous is None:
        return target_name, bake_name
    target, bake = f"{target_name}-r{number}", f"{bake_name}-r{number}"
    ws.create_target(repo_name, TargetSpec(target_name=target, template=target_name, overrides={"model_name": previous}))
    ws.create_bake(repo_name, BakeSpec(bake_name=bake, template=bake_name, overrides={
        "datasets": [{"target": target}], "model": {"parent_model_name": previous}}))
    return target, bake
