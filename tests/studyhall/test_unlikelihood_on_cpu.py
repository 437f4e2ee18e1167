"""Sequence-level unlikelihood: which tokens are marked, the loss's value, and that it lowers the
probability of what it marks."""
import math

import pytest
import torch

from studyhall.unlikelihood import repeat_marks, unlikelihood_loss


def test_marks_every_student_token_of_a_repeated_ngram():
    # "a b c a b c a b d": the 2-grams ending at positions 4..7 are (a,b) (b,c) (c,a) (a,b), all seen
    # before, so tokens 3..7 are marked (each repeat's first token too, as Welleck et al. mark them)
    tokens = [1, 2, 3, 1, 2, 3, 1, 2, 4]
    student = [False] * len(tokens)
    assert repeat_marks(tokens, student, 2) == [False, False, False, True, True, True, True, True, False]
    # n = 3: (a,b,c) ending at 5, (b,c,a) at 6 and (c,a,b) at 7 repeat earlier ones: tokens 3..7
    assert repeat_marks(tokens, student, 3) == [False] * 3 + [True] * 5 + [False]
    # n = 4: (a,b,c,a) ending at 6 and (b,c,a,b) at 7 repeat those at 0-3 and 1-4: tokens 3..7
    assert repeat_marks(tokens, student, 4) == [False] * 3 + [True] * 5 + [False]
    assert repeat_marks(tokens, student, 5) == [False] * 3 + [True] * 5 + [False]  # (a,b,c,a,b) at 3-7
    assert repeat_marks(tokens, student, 6) == [False] * len(tokens)  # no 6-gram comes twice
    # n = 1: any token seen earlier in the answer
    assert repeat_marks(tokens, student, 1) == [False, False, False, True, True, True, True, True, False]
    assert repeat_marks([5, 6], student[:2], 3) == [False, False]  # shorter than n: nothing to repeat


def test_teacher_tokens_and_unknown_writers_are_never_marked():
    tokens = [1, 2, 3, 1, 2, 3, 1, 2, 4]
    teacher_at_5_and_6 = [False] * 5 + [True, True] + [False] * 2
    assert repeat_marks(tokens, teacher_at_5_and_6, 2) == [False, False, False, True, True, False, False, True, False]
    assert repeat_marks(tokens, [True] * len(tokens), 2) == [False] * len(tokens)
    assert repeat_marks(tokens, None, 2) == [False] * len(tokens)  # a reference answer: no one knows who wrote it


def test_loss_sums_minus_log_one_minus_p_over_the_marked_rows_per_answer_token():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 0.0, 0.0], [1.0, 3.0, 0.5]])
    tokens = torch.tensor([0, 2, 1])
    marked = torch.tensor([True, False, True])

    def p(row, tok):
        return math.exp(logits[row, tok]) / sum(math.exp(x) for x in logits[row].tolist())

    # 2 marked tokens out of answers 10 tokens long: the term is 2/10 of their mean
    expected = (-math.log(1 - p(0, 0)) - math.log(1 - p(2, 1))) / 10
    assert unlikelihood_loss(logits, tokens, marked, answer_tokens=10).item() == pytest.approx(expected, rel=1e-6)
    with pytest.raises(ValueError, match="answer_tokens=1"):
        unlikelihood_loss(logits, tokens, marked, answer_tokens=1)


def test_nothing_marked_gives_zero_with_a_gradient_path():
    logits = torch.randn(4, 7, requires_grad=True)
    loss = unlikelihood_loss(logits, torch.zeros(4, dtype=torch.long), torch.zeros(4, dtype=torch.bool), answer_tokens=4)
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(logits.grad, torch.zeros_like(logits))


def test_a_step_on_the_loss_lowers_the_marked_tokens_probability_and_stays_finite_near_one():
    logits = torch.tensor([[12.0, 0.0, 0.0, 0.0]], requires_grad=True)  # p(token 0) ~ 1 - 2e-5
    tokens, marked = torch.tensor([0]), torch.tensor([True])
    before = torch.softmax(logits, -1)[0, 0].item()
    loss = unlikelihood_loss(logits, tokens, marked, answer_tokens=1)
    assert math.isfinite(loss.item())
    loss.backward()
    with torch.no_grad():
        after = torch.softmax(logits - 0.1 * logits.grad, -1)[0, 0].item()
    assert after < before
