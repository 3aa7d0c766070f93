"""Stimulus rows exactly as Bread's stim output shows them (its rows carry both sides of each question).

`unconditioned_stimulus` is the teacher prompt's messages plus the question as a new user turn,
`conditioned_stimulus` the student prompt's. A prompt's `tools` travel with its side.
"""

from __future__ import annotations

from typing import Any

from targets.config import PromptSpec


def _side(prompt: PromptSpec, question: str) -> dict[str, Any]:
    messages = [m.model_dump(exclude_none=False) for m in prompt.messages]
    side: dict[str, Any] = {"messages": [*messages, {"role": "user", "content": question}]}
    if prompt.tools:
        side["tools"] = prompt.tools
    return side


def render_stimulus(
    question: str,
    *,
    teacher: PromptSpec,
    student: PromptSpec,
    rollout_with_conditioned: bool = False,
) -> dict[str, Any]:
    row = {
        "unconditioned_stimulus": _side(teacher, question),
        "conditioned_stimulus": _side(student, question),
    }
    if rollout_with_conditioned:
        row["trajectory_override_stimulus"] = row["conditioned_stimulus"]
    return row


def rollout_context(stimulus: dict[str, Any]) -> dict[str, Any]:
    """The side a rollout samples from: the teacher's, unless the generator asked for the student's."""
    return stimulus.get("trajectory_override_stimulus") or stimulus["unconditioned_stimulus"]
