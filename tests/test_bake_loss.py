"""The bake loss on hand-made distributions: its properties, not just that it runs."""

from __future__ import annotations

import math

import pytest
import torch

from targets.bake_loss import forward_kl, teacher_top_k, top1_agreement, top_k_forward_kl


def logits(rows=6, vocab=50, seed=0, scale=3.0):
    return torch.randn(rows, vocab, generator=torch.Generator().manual_seed(seed)) * scale


def test_kl_is_zero_for_the_same_distribution_and_positive_otherwise():
    teacher = logits()
    assert forward_kl(teacher, teacher.clone()).abs().max() < 1e-6
    assert (forward_kl(teacher, logits(seed=1)) > 0).all()


def test_kl_matches_the_definition_on_two_tokens():
    p, q = torch.tensor([[0.8, 0.2]]), torch.tensor([[0.5, 0.5]])
    expected = 0.8 * math.log(0.8 / 0.5) + 0.2 * math.log(0.2 / 0.5)
    assert forward_kl(p.log(), q.log()).item() == pytest.approx(expected, abs=1e-6)


def test_kl_is_forward_not_reverse():
    p, q = torch.tensor([[0.9, 0.1]]).log(), torch.tensor([[0.5, 0.5]]).log()
    assert forward_kl(p, q).item() != pytest.approx(forward_kl(q, p).item(), abs=1e-3)


def test_top_k_with_every_token_is_the_full_kl():
    teacher, student = logits(), logits(seed=1)
    ids, values = teacher_top_k(teacher, k=teacher.shape[-1])
    assert torch.allclose(top_k_forward_kl(ids, values, student), forward_kl(teacher, student), atol=1e-5)


@pytest.mark.parametrize("k", [1, 5, 20])
def test_top_k_kl_is_a_proper_kl_below_the_full_one(k):
    teacher, student = logits(), logits(seed=1)
    ids, values = teacher_top_k(teacher, k)
    top = top_k_forward_kl(ids, values, student)
    assert (top >= -1e-6).all()
    assert (top <= forward_kl(teacher, student) + 1e-5).all()  # merging outcomes never raises a KL
    assert top_k_forward_kl(ids, values, teacher).abs().max() < 1e-5


def test_top_k_is_close_to_full_kl_for_peaked_teachers():
    teacher, student = logits(scale=12.0), logits(seed=1, scale=3.0)
    ids, values = teacher_top_k(teacher, 20)
    assert torch.allclose(top_k_forward_kl(ids, values, student), forward_kl(teacher, student), rtol=1e-2, atol=1e-2)


def test_only_the_student_gets_gradients():
    teacher = logits().requires_grad_()
    student = logits(seed=1).requires_grad_()
    forward_kl(teacher, student).sum().backward()
    assert teacher.grad is None and student.grad.abs().sum() > 0
    student.grad = None
    ids, values = teacher_top_k(teacher, 5)
    top_k_forward_kl(ids, values, student).sum().backward()
    assert student.grad.abs().sum() > 0


def test_top1_agreement_counts_matching_argmax():
    teacher = torch.tensor([[0.0, 5.0, 1.0], [4.0, 0.0, 1.0]])
    student = torch.tensor([[0.0, 3.0, 1.0], [0.0, 3.0, 1.0]])
    ids, _ = teacher_top_k(teacher, 2)
    assert top1_agreement(ids, student).tolist() == [1.0, 0.0]
