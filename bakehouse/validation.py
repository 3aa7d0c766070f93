"""Dry runs of a create: `POST .../targets/validate` and `.../bakes/validate`.

The body is resolved against its template and checked as far as a start would check it (prompts,
generators, models, datasets), without writing anything. Every fault is reported as {field,
message}, not only the first, with what the job would make.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from repo_store import Workspace
from targets import BakehouseError, NotFound, TargetConfig, TargetSpec, ValidationFailed, parse
from targets.bake import BakeConfig, BakeSpec
from targets.render import render_stimulus

SAMPLE_STIMULI = 3
CHARS_PER_TOKEN = 4  # a rough English average, for the prompt-token estimate only
DEFAULT_ROLLOUT_MAX_TOKENS = 256  # flows.rollout.DEFAULT_MAX_TOKENS


class Findings:
    """The faults found so far; `check` runs one step and keeps its fault instead of stopping."""

    def __init__(self) -> None:
        self.errors: list[dict[str, str]] = []

    def check(self, field: str, step: Callable[[], Any]) -> Any:
        try:
            return step()
        except ValidationFailed as error:
            self.errors += [{"field": where, "message": message} for where, message in error.fields] or [
                {"field": field, "message": error.message}]
        except BakehouseError as error:
            self.errors.append({"field": field, "message": error.message})
        return None


def validate_target(ws: Workspace, repo_name: str, body: dict[str, Any]) -> dict[str, Any]:
    findings = Findings()
    ws.get_repo(repo_name)  # a missing repo is a 404, not a finding
    spec = findings.check("target_name", lambda: parse(TargetSpec, body, "target"))
    config: TargetConfig | None = spec and findings.check("overrides", lambda: ws.merge_target_config(repo_name, spec))
    samples: list[dict[str, Any]] = []
    estimated = None
    if config is not None:
        teacher = findings.check("teacher_prompt", lambda: _prompt(ws, repo_name, config.teacher_prompt, "teacher_prompt"))
        student = findings.check("student_prompt", lambda: _prompt(ws, repo_name, config.student_prompt, "student_prompt"))
        if not config.generators:
            findings.errors.append({"field": "generators", "message": "a target needs at least one generator to run stim"})
        for role, model in (("model_name", config.model_name), *((f"generators.{i}.model", g.model) for i, g in enumerate(config.generators))):
            if model:
                findings.check(role, lambda m=model, r=role: _check_generation_model(ws, m, r))
        questions = [q for q in (findings.check(f"generators.{i}", lambda g=g: _sample_questions(ws, g))
                                 for i, g in enumerate(config.generators)) or [] for q in (q or [])]
        if teacher and student:
            samples = [render_stimulus(q, teacher=teacher, student=student) for q in questions[:SAMPLE_STIMULI]]
        estimated = _target_estimate(config, samples)
    return {"valid": not findings.errors, "errors": findings.errors,
            "resolved_config": config.model_dump(mode="json", exclude_none=True) if config else None,
            "sample_stimuli": samples, "estimated": estimated}


def validate_bake(ws: Workspace, repo_name: str, body: dict[str, Any]) -> dict[str, Any]:
    findings = Findings()
    repo = ws.get_repo(repo_name)
    spec = findings.check("bake_name", lambda: parse(BakeSpec, body, "bake"))
    config: BakeConfig | None = spec and findings.check("overrides", lambda: ws.resolve_bake(repo_name, spec))
    estimated = None
    if config is not None:
        parent = config.model.parent_model_name or repo.base_model
        findings.check("model.parent_model_name", lambda: _check_model(ws, parent, "parent model"))
        lines = findings.check("datasets", lambda: ws.bake_dataset_lines(repo_name, config))
        if lines is not None:
            trajectories = min(config.total_trajectories or sum(lines), sum(lines))
            per_step = config.micro_batch_size * config.gradient_accumulation_steps
            estimated = {"trajectories": trajectories, "steps": math.ceil(trajectories / per_step) * config.epochs}
    return {"valid": not findings.errors, "errors": findings.errors,
            "resolved_config": config.model_dump(mode="json", exclude_none=True) if config else None,
            "sample_stimuli": [], "estimated": estimated}


def _prompt(ws: Workspace, repo_name: str, name: str | None, field: str):
    if not name:
        raise ValidationFailed(f"{field} is not set")
    try:
        return ws.get_prompt(repo_name, name)
    except NotFound:
        raise NotFound(f"{field} '{name}' is not a prompt in repository '{repo_name}'") from None


def _check_model(ws: Workspace, name: str, role: str) -> None:
    from flows.models import check_model

    check_model(ws, name, role=role)


def _check_generation_model(ws: Workspace, name: str, role: str) -> None:
    """A model that generates is found where the engines would look: `fake` is built in, a served
    model lives behind BAKEHOUSE_OPENAI_BASE_URL (not checked from here), the rest on this machine."""
    from flows.models import BakedCheckpoint, served_remotely

    if name == "fake" or (served_remotely(name) and BakedCheckpoint.parse(name) is None):
        return
    _check_model(ws, name, role)


def _sample_questions(ws: Workspace, generator) -> list[str]:
    """A few questions the generator would ask, where that costs no model call."""
    if generator.type == "hardcoded":
        return list(generator.questions or [])[:SAMPLE_STIMULI]
    if generator.type == "from_dataset":
        return ws.read_dataset_questions(generator.dataset, generator.column)[:SAMPLE_STIMULI]
    return []  # written by a model when the stim runs


def _target_estimate(config: TargetConfig, samples: list[dict[str, Any]]) -> dict[str, Any]:
    """At most this many stimuli (duplicates are dropped) and completion tokens; the prompt tokens of
    the rollout (the teacher's side) from the samples' length."""
    stimuli = sum(g.count for g in config.generators)
    trajectories = stimuli * config.num_traj_per_stimulus
    prompt_chars = [sum(len(str(m.get("content") or "")) for m in s["unconditioned_stimulus"]["messages"]) for s in samples]
    per_prompt = round(sum(prompt_chars) / len(prompt_chars) / CHARS_PER_TOKEN) if prompt_chars else None
    return {
        "stimuli": stimuli,
        "trajectories": trajectories,
        "max_completion_tokens": trajectories * (config.max_tokens or DEFAULT_ROLLOUT_MAX_TOKENS),
        "prompt_tokens": stimuli * per_prompt if per_prompt is not None else None,
    }
