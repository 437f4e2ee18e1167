"""Cross-tokenizer distillation's wiring without Ray: the teacher's reading of a student answer, its
top-k carried to student positions, the trainer's loss over them, and the one-line refusal."""
import pytest
import torch
from other_tokenizer import build_other_student

from actors.models import load_tokenizer
from cluster.cli import main
from studyhall.cross_tokenizer import NO_TEXT, token_strings
from studyhall.record import Record
from train.cross_vocab import answer_spans, bridge, carry_over, teacher_reading
from train.objective import Cross, MicroBatch, answer_loss, collate

TEXT = "Bees make honey from the nectar of flowers, and store it in wax combs."


@pytest.fixture(scope="module")
def teacher_tok():
    return load_tokenizer("embedded:teacher")


@pytest.fixture(scope="module")
def other(tmp_path_factory):
    folder = tmp_path_factory.mktemp("other_student")
    return folder, build_other_student(folder)


def test_answer_spans_cover_the_decoded_text_token_by_token(teacher_tok):
    ids = teacher_tok(TEXT, add_special_tokens=False)["input_ids"]
    text, spans = answer_spans(teacher_tok, ids)
    assert text == TEXT and len(spans) == len(ids)
    assert spans[0][0] == 0 and spans[-1][1] == len(TEXT)
    assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))  # contiguous
    assert [text[s:e] for s, e in spans] == [teacher_tok.decode([i]) for i in ids]


def test_with_one_tokenizer_the_teacher_reads_the_same_tokens_and_every_position_aligns(teacher_tok):
    eos = teacher_tok.eos_token_id
    ids = teacher_tok(TEXT, add_special_tokens=False)["input_ids"] + [eos]
    teacher_ids, pairs = teacher_reading(teacher_tok, teacher_tok, ids, {eos}, eos)
    assert teacher_ids == ids
    assert pairs == [(i, i) for i in range(len(ids))]
    # An answer cut before its end of turn is read without one.
    teacher_ids, pairs = teacher_reading(teacher_tok, teacher_tok, ids[:-1], {eos}, eos)
    assert teacher_ids == ids[:-1] and pairs == [(i, i) for i in range(len(ids) - 1)]


def test_across_tokenizers_aligned_tokens_start_after_the_same_text(teacher_tok, other):
    _, student_tok = other
    ids = student_tok(TEXT, add_special_tokens=False)["input_ids"] + [student_tok.eos_token_id]
    teacher_ids, pairs = teacher_reading(student_tok, teacher_tok, ids, {student_tok.eos_token_id}, teacher_tok.eos_token_id)
    assert len(teacher_ids) != len(ids)  # truly different tokenizations
    assert pairs[-1] == (len(teacher_ids) - 1, len(ids) - 1)  # the two ends of turn
    for t, s in pairs[:-1]:
        assert teacher_tok.decode(teacher_ids[:t]) == student_tok.decode(ids[:s])
    assert len(pairs) > len(TEXT.split()) // 2


def test_bridge_maps_same_text_one_to_one_and_the_end_of_turn(teacher_tok, other):
    _, student_tok = other
    teacher_vocab, student_vocab = len(teacher_tok) + 64, len(student_tok)  # an embedding table larger than the tokenizer
    b = bridge(teacher_tok, student_tok, teacher_vocab, student_vocab, teacher_tok.eos_token_id, student_tok.eos_token_id)
    assert b.id_map.shape == (teacher_vocab,) and b.unreached.shape == (student_vocab,)
    assert (b.id_map[len(teacher_tok):] == -1).all()
    assert b.id_map[teacher_tok.eos_token_id] == student_tok.eos_token_id
    mapped = b.id_map[b.id_map >= 0]
    assert len(set(mapped.tolist())) == len(mapped) == b.shared > 100  # one-to-one
    assert not b.unreached[mapped].any() and int(b.unreached.sum()) == student_vocab - b.shared
    t_strings, s_strings = token_strings(teacher_tok), token_strings(student_tok)
    for t in (b.id_map >= 0).nonzero()[:, 0].tolist():
        if t != teacher_tok.eos_token_id:
            assert t_strings[t] == s_strings[b.id_map[t]] != NO_TEXT


def test_carry_over_puts_the_teachers_top_k_at_aligned_student_positions():
    scored = {"teacher_logprob": [-0.1, -0.2, -0.3], "teacher_topk_ids": [[0, 1], [2, 3], [4, 0]],
              "teacher_topk_logprobs": [[-0.1, -2.0], [-0.2, -3.0], [-0.3, -1.5]]}
    id_map = torch.tensor([7, -1, 5, 6, -1])
    got = carry_over(scored, [(0, 0), (2, 3)], n_student=4, id_map=id_map)
    assert got["aligned"] == [True, False, False, True]
    assert got["teacher_topk_ids"] == [[7, -1], [-1, -1], [-1, -1], [-1, 7]]
    assert got["teacher_topk_logprobs"][3] == [-0.3, -1.5] and got["teacher_logprob"] == scored["teacher_logprob"]


def _records(seed, vocab=50, k=5, n=6):
    g = torch.Generator().manual_seed(seed)
    records = []
    for row in range(2):
        logp = torch.log_softmax(torch.randn(n, vocab, generator=g) * 2, -1).topk(k, -1)
        records.append(Record("p", [1, 2, 3 + row], torch.randint(0, vocab, (n,), generator=g).tolist(),
                              teacher_topk_ids=logp.indices.tolist(), teacher_topk_logprobs=logp.values.tolist()))
    return records


@pytest.mark.parametrize("loss", ["fkl", "jsd", "skew_fkl", "rkl"])
@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_the_cross_loss_with_one_vocabulary_is_the_plain_loss_exactly(loss, temperature):
    batch = collate(_records(seed=3), pad_id=0, with_teacher=True)
    logits = torch.randn(int(batch.loss_mask.sum()), 50, generator=torch.Generator().manual_seed(4)) * 2
    plain = answer_loss(logits, batch, loss, beta=0.5, alpha=0.1, temperature=temperature)
    cross = answer_loss(logits, batch, loss, beta=0.5, alpha=0.1, temperature=temperature,
                        cross=Cross(torch.zeros(50, dtype=torch.bool), uld_weight=1.0))  # the identity map reaches every id
    assert plain.item() > 0.01 and torch.equal(cross, plain)


def test_only_aligned_positions_carry_the_loss_and_unmatched_entries_add_uld():
    records = _records(seed=5)
    records[0].aligned = [True, False, True, False, False, True]
    records[1].aligned = [False] * 6
    batch = collate(records, pad_id=0, with_teacher=True)
    assert int(batch.loss_mask.sum()) == 3 and batch.loss_mask[0, 2:8].tolist() == records[0].aligned
    unmatched = MicroBatch(batch.input_ids, batch.attention_mask, batch.targets, batch.loss_mask,
                           batch.teacher_ids.masked_fill(batch.teacher_ids % 3 == 0, -1), batch.teacher_logp)
    logits = torch.randn(3, 50, generator=torch.Generator().manual_seed(6), requires_grad=True)
    unreached = torch.zeros(50, dtype=torch.bool)
    unreached[40:] = True
    with_uld = answer_loss(logits, unmatched, "fkl", 0.5, 0.1, 1.0, cross=Cross(unreached, uld_weight=1.0))
    without = answer_loss(logits, unmatched, "fkl", 0.5, 0.1, 1.0, cross=Cross(unreached, uld_weight=0.0))
    assert with_uld.item() > without.item() > 0
    with_uld.backward()
    assert torch.isfinite(logits.grad).all() and logits.grad[:, 40:].abs().sum() > 0  # ULD reaches the unmatched student ids


@pytest.mark.parametrize("method", ["switch", "adaswitch", "skd"])
def test_a_token_by_token_method_across_tokenizers_is_refused_in_one_line(method, other, capsys):
    folder, _ = other
    code = main(["distill", "--preset", "tiny", "--out", "unused", "--no-progress", f"student.path={folder}", f"method={method}"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err
    assert f"method {method}" in err and "tiny:teacher" in err and str(folder) in err
    assert "use one of sft, seqkd, kd, gkd, distillm" in err


@pytest.mark.parametrize("loss", ["fkl", "rkl", "jsd", "skew_fkl", "skew_rkl", "tv"])
def test_gradients_stay_finite_where_no_top_k_entry_has_a_student_twin(loss):
    batch = collate(_records(seed=7), pad_id=0, with_teacher=True)
    batch.teacher_ids[0] = -1  # the first row: not one of the teacher's top-k tokens is a student token
    batch.teacher_ids[1, :, :2] = -1
    logits = torch.randn(int(batch.loss_mask.sum()), 50, generator=torch.Generator().manual_seed(8), requires_grad=True)
    value = answer_loss(logits, batch, loss, 0.5, 0.1, 1.0, cross=Cross(torch.arange(50) >= 45, uld_weight=1.0))
    value.backward()
    assert torch.isfinite(value) and value.item() > 0
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0


def test_uld_loss_by_hand_ignores_token_identity():
    from studyhall.cross_tokenizer import uld_loss

    student = torch.tensor([[0.5, 0.3, 0.2]]).log()
    teacher = torch.tensor([[0.6, 0.3, 0.1]]).log()  # its top-2, then the rest bucket
    # cross-entropy -log 0.5, plus 2 x (|0.6 - 0.5| + |0.3 - 0.3|): which ids the teacher's top-2 are never enters
    assert uld_loss(student, torch.tensor([0]), teacher, uld_weight=2.0).item() == pytest.approx(-torch.tensor(0.5).log().item() + 0.2, abs=1e-6)
    assert uld_loss(student, torch.tensor([2]), teacher, uld_weight=0.0).item() == pytest.approx(-torch.tensor(0.2).log().item(), abs=1e-6)


def test_the_trainer_reads_ulds_loss_at_aligned_positions_when_asked():
    from studyhall.cross_tokenizer import uld_loss
    from studyhall.distill_math import with_rest_bucket

    records = _records(seed=9)
    records[0].aligned = [True, False, True, True, False, True]
    batch = collate(records, pad_id=0, with_teacher=True)
    logits = torch.randn(int(batch.loss_mask.sum()), 50, generator=torch.Generator().manual_seed(10), requires_grad=True)
    got = answer_loss(logits, batch, "fkl", 0.5, 0.1, 1.0, cross=Cross(torch.zeros(50, dtype=torch.bool), 0.5, kind="uld"))
    mask = batch.loss_mask
    expected = uld_loss(torch.log_softmax(logits, -1), batch.targets[mask], with_rest_bucket(batch.teacher_logp[mask]), 0.5)
    assert torch.allclose(got, expected, atol=1e-6) and got.item() > 0
    got.backward()
    assert torch.isfinite(logits.grad).all()
