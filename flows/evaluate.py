"""Before and after a bake: held-out questions answered by the parent model and by a checkpoint.

For each held-out question, greedy answers (transformers, in process) from:
- the parent model on the student context (what users got before the bake),
- the parent model on the teacher context (the behaviour asked for),
- the baked checkpoint on the student context (what they get now);
and the held-out KL(teacher ‖ student) per token of the teacher's own answer, before (adapter off)
and after (adapter on): the quantity the bake minimises, on questions it never saw.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from targets.bake import BakeConfig
from targets.bake_loss import forward_kl


@dataclass(frozen=True)
class HeldOutAnswer:
    question: str
    before: str  # parent, student context
    teacher: str  # parent, teacher context
    after: str  # checkpoint, student context


@dataclass(frozen=True)
class BeforeAfter:
    answers: list[HeldOutAnswer]
    kl_before: float
    kl_after: float


def compare_before_after(
    parent_path: str,
    parent_model: str,
    config: BakeConfig,
    checkpoint_files: dict[str, bytes],
    teacher_messages: list[dict[str, Any]],
    student_messages: list[dict[str, Any]],
    questions: list[str],
    *,
    max_new_tokens: int = 48,
) -> BeforeAfter:
    from flows.trainer import Trainer

    trainer = Trainer(parent_path, config, parent_model=parent_model)
    trainer.load_checkpoint(checkpoint_files)
    trainer.model.eval()
    model = trainer.model

    def context(messages: list[dict[str, Any]], question: str) -> list[int]:
        ids = trainer.tokenizer.apply_chat_template([*messages, {"role": "user", "content": question}],
                                                    add_generation_prompt=True, tokenize=True)
        return list(ids["input_ids"] if hasattr(ids, "keys") else ids)

    def greedy(ids: list[int]) -> list[int]:
        out = model.generate(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                             max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=trainer.tokenizer.pad_token_id)
        return out[0, len(ids):].tolist()

    def text(ids: list[int]) -> str:
        return trainer.tokenizer.decode(ids, skip_special_tokens=True).strip()

    answers, kl_sums, tokens = [], [0.0, 0.0], 0
    with torch.no_grad():
        for question in questions:
            teacher_ids, student_ids = context(teacher_messages, question), context(student_messages, question)
            with model.disable_adapter():
                before = greedy(student_ids)
                teacher_answer = greedy(teacher_ids)
                teacher_logits = trainer.response_logits([teacher_ids], [teacher_answer])
                student_before = trainer.response_logits([student_ids], [teacher_answer])
            after = greedy(student_ids)
            student_after = trainer.response_logits([student_ids], [teacher_answer])
            kl_sums[0] += forward_kl(teacher_logits, student_before).sum().item()
            kl_sums[1] += forward_kl(teacher_logits, student_after).sum().item()
            tokens += len(teacher_answer)
            answers.append(HeldOutAnswer(question, text(before), text(teacher_answer), text(after)))
    return BeforeAfter(answers, kl_sums[0] / max(tokens, 1), kl_sums[1] / max(tokens, 1))
