"""train.unlikelihood in the trainer's objective: the student's own greedy answers (OWN_GREEDY records)
become unlikelihood rows with their repeats marked and no distillation loss; the method's records
keep exactly the loss they had; the micro-batch count stays the method's."""
import pytest
import torch

from studyhall.record import Record
from studyhall.unlikelihood import OWN_GREEDY
from train.objective import answer_loss, collate, distill_loss, micro_batches, with_own_greedy


def _record(tokens, source="switch", prompt=(5, 6, 7)):
    g = torch.Generator().manual_seed(len(tokens) * 31 + len(prompt))
    logp = torch.log_softmax(torch.randn(len(tokens), 9, generator=g), -1).topk(3, -1)
    return Record("p", list(prompt), list(tokens), source, from_teacher=[source == "teacher"] * len(tokens),
                  teacher_topk_ids=logp.indices.tolist(), teacher_topk_logprobs=logp.values.tolist())


def test_own_greedy_rows_are_marked_and_outside_the_distillation_loss():
    method = _record([1, 2, 1, 2, 3])  # repeats, but a method's record: never marked
    own = _record([1, 2, 1, 2, 3], source=OWN_GREEDY, prompt=(5, 6))
    batch = collate([method, own], pad_id=0, with_teacher=True, repeat_ngram=1)
    # position i predicts token i + 1: the answer's token t sits at prompt_len - 1 + t
    assert batch.loss_mask.tolist() == [[False, False, True, True, True, True, True], [False] * 7]
    assert batch.repeats.tolist() == [[False] * 7, [False, False, False, True, True, False, False]]
    assert batch.own_answer_tokens == 5
    assert collate([method], pad_id=0, with_teacher=True).repeats is None  # no own rows: as before


def test_the_method_rows_keep_their_exact_loss_and_the_unlikelihood_is_added_with_its_weight():
    torch.manual_seed(0)
    method = [_record([1, 2, 3, 4]), _record([4, 3, 2, 1, 8], prompt=(6, 5, 4, 3))]
    own = [_record([1, 2, 3, 1, 2, 3, 1, 2], source=OWN_GREEDY), _record([7, 7, 7, 7], source=OWN_GREEDY, prompt=(2,))]
    alone, joined = collate(method, 0, True), collate(method + own, 0, True, repeat_ngram=2)
    full = torch.randn(*joined.input_ids.shape, 9)  # [B, L, V] as a student would give
    # the method rows alone, padded to the joined batch's width: the same rows' logits
    plain = distill_loss(full[:2, :alone.input_ids.shape[1]], alone, "fkl", 0.5, 0.1, 1.0)
    # tokens 3-7 of the first answer repeat 2-grams seen at 0-2; (7,7) ends at tokens 2 and 3 of the second, so 1-3
    assert int(joined.repeats.sum()) == 5 + 3
    assert joined.own_answer_tokens == 8 + 4
    marked_logp = torch.log_softmax(full[:, :-1][joined.repeats], -1).gather(-1, joined.targets[joined.repeats][:, None])[:, 0]
    expected_ul = -torch.log1p(-marked_logp.exp()).sum() / 12  # Welleck et al.: per answer token, marked or not
    for weight in (0.0, 0.5):
        got = distill_loss(full, joined, "fkl", 0.5, 0.1, 1.0, unlikelihood=weight)
        assert got.item() == pytest.approx(plain.item() + weight * expected_ul.item(), rel=1e-6)
    # the flat answer-logits path reads the same positions in the same order
    flat = full[joined.logit_positions]
    assert answer_loss(flat, joined, "fkl", 0.5, 0.1, 1.0, 0.5).item() == pytest.approx(
        distill_loss(full, joined, "fkl", 0.5, 0.1, 1.0, 0.5).item(), rel=1e-6)


def test_with_the_teacher_scores_own_rows_are_distilled_too_and_the_term_still_added():
    """train.unlikelihood_teacher: the own rows' answer positions join the distillation loss, their
    marks stay, and the loss is the method's over both kinds of row plus the weighted term."""
    method, own = _record([1, 2, 3, 4]), _record([1, 2, 1, 2, 3], source=OWN_GREEDY, prompt=(5, 6))
    batch = collate([method, own], 0, True, repeat_ngram=1, distill_own=True)
    assert batch.loss_mask.tolist() == [[False, False, True, True, True, True], [False, True, True, True, True, True]]
    assert batch.repeats.tolist() == [[False] * 6, [False, False, False, True, True, False]]
    assert batch.teacher_ids[1, 1:].tolist() == own.teacher_topk_ids
    # as distillation rows alone, the two give the same distillation loss; the term is added on top
    as_method = collate([method, _record([1, 2, 1, 2, 3], prompt=(5, 6))], 0, True)
    full = torch.randn(*batch.input_ids.shape, 9)
    marked_logp = torch.log_softmax(full[:, :-1][batch.repeats], -1).gather(-1, batch.targets[batch.repeats][:, None])[:, 0]
    expected_ul = -torch.log1p(-marked_logp.exp()).sum() / 5
    assert distill_loss(full, batch, "skew_fkl", 0.5, 0.1, 1.0, unlikelihood=2.0).item() == pytest.approx(
        distill_loss(full, as_method, "skew_fkl", 0.5, 0.1, 1.0).item() + 2.0 * expected_ul.item(), rel=1e-6)
    # cross-entropy methods (sft) never train on the student's own greedy answers
    assert not collate([method, own], 0, False, repeat_ngram=1, distill_own=True).loss_mask[1].any()


def test_own_greedy_records_spread_over_the_methods_micro_batches():
    method = [_record([i + 1]) for i in range(8)]
    own = [_record([i + 1], source=OWN_GREEDY) for i in range(8)]
    parts = with_own_greedy(micro_batches(method, 4), method + own)
    assert len(parts) == 2
    assert [sum(r.source == OWN_GREEDY for r in p) for p in parts] == [4, 4]
    assert sorted(id(r) for p in parts for r in p) == sorted(id(r) for r in method + own)
    assert with_own_greedy(micro_batches(method, 4), method) == micro_batches(method, 4)
