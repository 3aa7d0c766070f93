"""The bake loss: forward KL(teacher ‖ student) per response token (Prompt Baking, arXiv 2409.13697).

Pure tensor maths, no model and no I/O: the trainer (`flows/bake.py`) gathers the logits of the
response positions only and hands them here. Every function takes `[tokens, vocab]` rows, one row
per response token, and returns one value per row; the trainer averages over tokens.

Two teacher forms, one quantity:
- full distribution (the teacher's logits): the exact per-token KL;
- top-K (ids and log-probabilities, as a rollout stores them): the K tokens plus one tail bucket
  holding the mass outside them, for teacher and student alike. That is the KL between two proper
  distributions over K + 1 outcomes, so it is ≥ 0, 0 when they agree, and never above the full KL.
"""

from __future__ import annotations

import torch

# log(0) guard for a tail that rounds to nothing (float32 can give 1 - sum(p) slightly below 0).
_TINY = 1e-12


def forward_kl(teacher_logits: torch.Tensor, student_logits: torch.Tensor) -> torch.Tensor:
    """KL(teacher ‖ student) over the whole vocabulary, per row. The teacher gets no gradient."""
    teacher = torch.log_softmax(teacher_logits.detach().float(), dim=-1)
    student = torch.log_softmax(student_logits.float(), dim=-1)
    return (teacher.exp() * (teacher - student)).sum(-1)


def top_k_forward_kl(
    teacher_top_ids: torch.Tensor, teacher_top_logprobs: torch.Tensor, student_logits: torch.Tensor
) -> torch.Tensor:
    """KL(teacher ‖ student) over the teacher's top-K tokens plus a tail bucket, per row.

    `teacher_top_ids` [N, K] (int) and `teacher_top_logprobs` [N, K] are the teacher's K most likely
    tokens and their log-probabilities under the full softmax (not renormalised over K).
    """
    teacher_top = teacher_top_logprobs.detach().float()
    student = torch.log_softmax(student_logits.float(), dim=-1)
    student_top = student.gather(-1, teacher_top_ids.long())
    teacher_tail = torch.log((1 - teacher_top.exp().sum(-1)).clamp_min(_TINY))
    student_tail = torch.log((1 - student_top.exp().sum(-1)).clamp_min(_TINY))
    head = (teacher_top.exp() * (teacher_top - student_top)).sum(-1)
    return head + teacher_tail.exp() * (teacher_tail - student_tail)


def teacher_top_k(teacher_logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The teacher's top-K ids and full-softmax log-probabilities per row (the stored form)."""
    logprobs = torch.log_softmax(teacher_logits.detach().float(), dim=-1)
    values, ids = logprobs.topk(k, dim=-1)
    return ids, values


def top1_agreement(teacher_top_ids: torch.Tensor, student_logits: torch.Tensor) -> torch.Tensor:
    """1.0 per row where the student's most likely token is the teacher's, else 0.0."""
    return (student_logits.argmax(-1) == teacher_top_ids[..., 0]).float()
