"""What the benchmarks share: one way to set up a target whose stim needs no model."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from targets import PromptSpec, RepoSpec, TargetSpec  # noqa: E402


def make_target(ws, repo: str, target: str, *, model: str, questions: list[str], system: str = "You are a pirate.",
                **overrides) -> None:
    """Repo `repo` (base model `model`), a teacher prompt with `system`, an empty student prompt, and
    target `target` with a hardcoded generator over `questions`; `overrides` are further target
    settings (num_traj_per_stimulus, max_tokens, seed, ...). Idempotent."""
    ws.create_repo(RepoSpec(repo_name=repo, base_model=model))
    ws.create_prompt(repo, PromptSpec(prompt_name="teacher", messages=[{"role": "system", "content": system}]))
    ws.create_prompt(repo, PromptSpec(prompt_name="student", messages=[]))
    ws.create_target(repo, TargetSpec(target_name=target, overrides={
        "teacher_prompt": "teacher", "student_prompt": "student", "model_name": model,
        "generators": [{"type": "hardcoded", "questions": questions}], **overrides,
    }))
