"""train.unlikelihood in the trainer's objective: collate marks only the student-written repeats, at
the positions that predict them, and the loss adds weight x the unlikelihood."""
import pytest
import torch

from studyhall.unlikelihood import unlikelihood_loss
from train.objective import answer_loss, collate


def _record(tokens, from_teacher, prompt=(5, 6, 7), k=2):
    record = {"prompt_token_ids": list(prompt), "token_ids": tokens,
              "teacher_topk_ids": [[1, 2]] * len(tokens), "teacher_topk_logprobs": [[-0.5, -1.5]] * len(tokens)}
    if from_teacher is not None:
        record["from_teacher"] = from_teacher
    return record


def test_collate_marks_student_repeats_at_the_positions_that_predict_them():
    switch = _record([1, 2, 1, 2, 3], [False, False, False, True, False])  # the teacher wrote the second 2
    data = _record([1, 2, 1, 2], None)  # a reference answer, longer prompt
    batch = collate([switch, data], pad_id=0, with_teacher=True, repeat_ngram=1)
    # position i predicts token i + 1: the answer's token t sits at prompt_len - 1 + t
    assert batch.repeats.tolist() == [[False, False, False, False, True, False, False],
                                      [False] * 7]
    assert collate([switch], pad_id=0, with_teacher=True).repeats is None  # off unless asked for


def test_answer_loss_adds_weight_times_the_unlikelihood_and_nothing_at_weight_zero():
    torch.manual_seed(0)
    batch = collate([_record([1, 2, 1, 2, 1, 2], [False] * 6)], pad_id=0, with_teacher=True, repeat_ngram=2)
    logits = torch.randn(int(batch.loss_mask.sum()), 9)
    plain = answer_loss(logits, batch, "fkl", 0.5, 0.1, 1.0)
    assert answer_loss(logits, batch, "fkl", 0.5, 0.1, 1.0, unlikelihood=0.0).item() == plain.item()
    ul = unlikelihood_loss(logits, batch.targets[batch.loss_mask], batch.repeats[batch.loss_mask])
    assert ul.item() > 0
    assert answer_loss(logits, batch, "fkl", 0.5, 0.1, 1.0, unlikelihood=0.5).item() == pytest.approx(plain.item() + 0.5 * ul.item(), rel=1e-6)
