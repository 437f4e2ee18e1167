"""Cross-tokenizer distillation math: vocabulary map, position alignment, ULD and the hybrid loss."""
import json

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from actors.models import load_tokenizer
from studyhall import cross_tokenizer as ct
from studyhall.prompts import EMBEDDED_PROMPTS
from train.objective import MicroBatch, answer_loss

TEXTS = [json.loads(line)["prompt"] for line in EMBEDDED_PROMPTS.read_text().splitlines() if line.strip()]
MIXED = TEXTS[1] + "  Café — 日本 costs $3.50!\n\n  Done,   thanks."


def _train(pre_tokenizer, decoder, vocab_size: int, **trainer_kwargs) -> PreTrainedTokenizerFast:
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer, bpe.decoder = pre_tokenizer, decoder
    bpe.train_from_iterator(TEXTS, trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<s>", "</s>"], show_progress=False,
                                                       **trainer_kwargs))
    return PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<s>", eos_token="</s>")


@pytest.fixture(scope="module")
def teacher_tok():
    return load_tokenizer("embedded:teacher")  # SmolLM2's byte-level BPE, the tiny preset's tokenizer too


@pytest.fixture(scope="module")
def bpe_student_tok():
    """A different byte-level BPE, as tests/serve/test_gkt_tokenizers.py builds for its student."""
    return _train(pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel(), 600,
                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())


@pytest.fixture(scope="module")
def sentencepiece_tok():
    """A sentencepiece-style BPE: "▁" marks a leading space, and characters it never saw fall back to
    <0x..> byte tokens, which are ordinary vocabulary entries as in converted Llama tokenizers."""
    decoder = decoders.Sequence([decoders.Metaspace(prepend_scheme="first"), decoders.ByteFallback(), decoders.Fuse()])
    trained = _train(pre_tokenizers.Metaspace(prepend_scheme="first"), decoder, 900)
    spec = json.loads(trained.backend_tokenizer.to_str())
    for b in range(256):
        spec["model"]["vocab"].setdefault(f"<0x{b:02X}>", len(spec["model"]["vocab"]))
    spec["model"]["byte_fallback"] = True
    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(json.dumps(spec)), bos_token="<s>", eos_token="</s>")


# ---- aligned_positions ---------------------------------------------------------------------------

def test_aligned_positions_pairs_tokens_that_start_at_the_same_character():
    # "unhappiness is": ["un", "happiness", " is"] against ["unhapp", "iness", " is"]
    teacher = [(0, 2), (2, 11), (11, 14)]
    assert ct.aligned_positions(teacher, [(0, 6), (6, 11), (11, 14)]) == [(0, 0), (2, 2)]
    # The same when the student's offsets trim the leading space of " is", or it has a BOS at (0, 0).
    assert ct.aligned_positions(teacher, [(0, 6), (6, 11), (12, 14)]) == [(0, 0), (2, 2)]
    assert ct.aligned_positions(teacher, [(0, 0), (0, 6), (6, 11), (12, 14)]) == [(0, 1), (2, 3)]
    # "ab cd": ["a", "b", " cd"] against ["ab", " c", "d"]
    assert ct.aligned_positions([(0, 1), (1, 2), (2, 5)], [(0, 2), (2, 4), (4, 5)]) == [(0, 0), (2, 1)]


def test_aligned_positions_skips_byte_pieces_and_keeps_whitespace_in_the_context():
    # "café" as ["caf", byte 1 of é, byte 2 of é] against ["caf", "é"]: the first byte starts at 3 after
    # "caf" like "é" does, the second starts inside é and is no position.
    assert ct.aligned_positions([(0, 3), (3, 4), (3, 4)], [(0, 3), (3, 4)]) == [(0, 0), (1, 1)]
    assert ct.aligned_positions([(0, 3), (3, 4), (3, 4)], [(0, 2), (2, 4)]) == [(0, 0)]
    # "日x" as [bytes 1-2 of 日, byte 3 of 日 + "x"] against ["日", "x"]: the second teacher token starts
    # inside 日, so "x" has no teacher partner.
    assert ct.aligned_positions([(0, 1), (0, 2)], [(0, 1), (1, 2)]) == [(0, 0)]
    # "a   b" with trimmed offsets ["a", "  " as (3, 3), " b" as (4, 5)] against untrimmed ["a", "  ", " b"]:
    # the empty-width span is skipped (its pair is lost, never wrong) and " b" still starts at 3.
    assert ct.aligned_positions([(0, 1), (3, 3), (4, 5)], [(0, 1), (1, 3), (3, 5)]) == [(0, 0), (2, 2)]
    # "a  b" as ["a", "  ", "b"] against ["a", " ", " b"]: "b" and " b" read different text ("a  " and
    # "a "), so they are not paired; "  " and " " both read "a".
    assert ct.aligned_positions([(0, 1), (1, 3), (3, 4)], [(0, 1), (1, 2), (2, 4)]) == [(0, 0), (1, 1)]


def _offsets(tok, text):
    enc = tok(text, return_offsets_mapping=True, add_special_tokens=True)
    return enc["input_ids"], enc["offset_mapping"]


@pytest.mark.parametrize("student", ["bpe_student_tok", "sentencepiece_tok"])
def test_aligned_positions_on_real_tokenizers_read_the_same_text(teacher_tok, student, request):
    student_tok = request.getfixturevalue(student)
    t_ids, t_off = _offsets(teacher_tok, MIXED)
    s_ids, s_off = _offsets(student_tok, MIXED)
    pairs = ct.aligned_positions(t_off, s_off)
    assert len(pairs) >= len(MIXED.split()) and len(pairs) < min(len(t_ids), len(s_ids))  # many, yet not all
    for ti, si in pairs:
        assert t_off[ti][0] == s_off[si][0]  # both tokens start at the same character of the text
        # and both models have read exactly the text before it
        t_before = teacher_tok.decode(t_ids[:ti], clean_up_tokenization_spaces=False)
        s_before = student_tok.decode(s_ids[:si], skip_special_tokens=True, clean_up_tokenization_spaces=False)
        assert t_before == s_before == MIXED[:t_off[ti][0]]


def test_trimmed_and_untrimmed_offsets_of_one_tokenizer_align_one_to_one(teacher_tok):
    text = TEXTS[0] + " It is, said the man, a fine day."
    ids, plain = _offsets(teacher_tok, text)
    trimmed_tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(teacher_tok.backend_tokenizer.to_str()))
    trimmed_tok.backend_tokenizer.post_processor = processors.ByteLevel(trim_offsets=True)
    trimmed_ids, trimmed = _offsets(trimmed_tok, text)
    assert trimmed_ids == ids and trimmed != plain  # the same tokens, spans without their leading space
    assert ct.aligned_positions(plain, trimmed) == [(i, i) for i in range(len(ids))]


# ---- vocabularies --------------------------------------------------------------------------------

def test_shared_vocab_map_on_hand_written_vocabularies():
    teacher = ["<s>", " the", "a", ct.NO_TEXT, " the", "b"]
    student = ["a", " the", "x", " the", "<s>", ct.NO_TEXT]
    # " the": the lowest student id (1), and only for the lowest teacher id (1); NO_TEXT never matches.
    assert ct.shared_vocab_map(teacher, student).tolist() == [4, 1, 0, -1, -1, -1]


def test_token_strings_give_leading_spaces_for_byte_level_and_sentencepiece(teacher_tok, sentencepiece_tok):
    teacher = ct.token_strings(teacher_tok)
    assert len(teacher) == len(teacher_tok)
    assert teacher[teacher_tok.convert_tokens_to_ids("Ġthe")] == " the"
    assert teacher[teacher_tok.convert_tokens_to_ids("the")] == "the"
    assert teacher[teacher_tok.convert_tokens_to_ids("Ċ")] == "\n"
    assert teacher[teacher_tok.eos_token_id] == "<|im_end|>"  # special tokens keep their own string
    assert teacher[teacher_tok.convert_tokens_to_ids("Ã")] == ct.NO_TEXT  # one byte of a character
    sp = ct.token_strings(sentencepiece_tok)
    assert sp[sentencepiece_tok.convert_tokens_to_ids("▁the")] == " the"
    assert sp[sentencepiece_tok.convert_tokens_to_ids("<0x0A>")] == "\n"
    # Across the two families the same text maps: "Ġthe" -> "▁the".
    id_map = ct.shared_vocab_map(teacher, sp)
    assert id_map[teacher_tok.convert_tokens_to_ids("Ġthe")] == sentencepiece_tok.convert_tokens_to_ids("▁the")
    assert 0 < int((id_map >= 0).sum()) < len(sp)


# ---- ULD -----------------------------------------------------------------------------------------

def test_uld_distance_by_hand_under_permutation_and_symmetric():
    p = torch.tensor([0.2, 0.5, 0.3])
    q = torch.tensor([0.1, 0.1, 0.6, 0.2])
    # sorted and padded: [.5, .3, .2, 0] against [.6, .2, .1, .1] -> .1 + .1 + .1 + .1
    assert ct.uld_distance(p, q).item() == pytest.approx(0.4, abs=1e-6)
    assert ct.uld_distance(q, p).item() == pytest.approx(0.4, abs=1e-6)
    torch.manual_seed(0)
    a, b = torch.softmax(torch.randn(3, 7), -1), torch.softmax(torch.randn(3, 5), -1)
    assert torch.allclose(ct.uld_distance(a, a[:, torch.randperm(7)]), torch.zeros(3), atol=1e-7)
    assert torch.allclose(ct.uld_distance(a, b), ct.uld_distance(b, a))
    assert (ct.uld_distance(a, b) > 0).all()


# ---- hybrid_loss ---------------------------------------------------------------------------------

def _teacher_topk(n, vocab, k, seed):
    g = torch.Generator().manual_seed(seed)
    logp = torch.log_softmax(torch.randn(n, vocab, generator=g) * 2, -1)
    values, ids = logp.topk(k, -1)
    return ids, values, torch.randn(n, vocab, generator=g) * 2  # and student logits


def _answer_loss_fkl(logits, ids, values):
    n = logits.shape[0]
    batch = MicroBatch(torch.zeros(1, n + 1, dtype=torch.long), torch.ones(1, n + 1, dtype=torch.long),
                       torch.zeros(1, n, dtype=torch.long), torch.ones(1, n, dtype=torch.bool), ids[None], values[None])
    return answer_loss(logits, batch, "fkl", beta=0.5, alpha=0.1, temperature=1.0)


def test_hybrid_loss_is_fkl_with_one_tokenizer():
    ids, values, logits = _teacher_topk(n=9, vocab=40, k=6, seed=1)
    expected = _answer_loss_fkl(logits, ids, values)
    got = ct.hybrid_loss(torch.log_softmax(logits, -1), ids, values, torch.arange(40), uld_weight=1.0)
    assert got.item() == pytest.approx(expected.item(), abs=1e-6) and expected.item() > 0.1
    # A renamed vocabulary (the student's id of teacher token t is perm[t]) is the same case.
    perm = torch.randperm(40, generator=torch.Generator().manual_seed(2))
    renamed = torch.empty_like(logits)
    renamed[:, perm] = logits
    got = ct.hybrid_loss(torch.log_softmax(renamed, -1), ids, values, perm, uld_weight=1.0)
    assert got.item() == pytest.approx(expected.item(), abs=1e-6)


def _partial_map(v_teacher, v_student, matched, seed):
    g = torch.Generator().manual_seed(seed)
    id_map = torch.full((v_teacher,), -1, dtype=torch.long)
    id_map[torch.randperm(v_teacher, generator=g)[:matched]] = torch.randperm(v_student, generator=g)[:matched]
    return id_map


def test_hybrid_loss_is_nonnegative_and_has_a_gradient():
    for seed in range(5):
        ids, values, _ = _teacher_topk(n=8, vocab=30, k=5, seed=seed)
        logits = torch.randn(8, 45, generator=torch.Generator().manual_seed(100 + seed), requires_grad=True)
        id_map = _partial_map(30, 45, matched=18, seed=seed)
        loss = ct.hybrid_loss(torch.log_softmax(logits, -1), ids, values, id_map, uld_weight=1.0)
        shared_only = ct.hybrid_loss(torch.log_softmax(logits, -1), ids, values, id_map, uld_weight=0.0)
        assert loss.item() > shared_only.item() >= 0.0  # the unmatched part adds a positive ULD term
        loss.backward()
        assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0


def test_hybrid_loss_is_zero_when_the_student_equals_the_teacher_up_to_renaming():
    # Teacher vocabulary 6, student 8; teacher tokens 0-3 map to student tokens 3, 0, 5, 1.
    id_map = torch.tensor([3, 0, 5, 1, -1, -1])
    teacher_p = torch.tensor([[0.4, 0.3, 0.2, 0.1, 0.0, 0.0], [0.1, 0.1, 0.5, 0.3, 0.0, 0.0]])
    ids = torch.tensor([[0, 1, 2, 3], [2, 3, 0, 1]])
    student_p = torch.zeros(2, 8)
    student_p[:, id_map[:4]] = teacher_p[:, :4]  # no mass on the student tokens no teacher token reaches
    loss = ct.hybrid_loss(student_p.log(), ids, teacher_p.gather(-1, ids).log(), id_map, uld_weight=1.0)
    assert loss.item() == pytest.approx(0.0, abs=1e-6)
    # Unmatched mass too: teacher token 4 has 0.2, student token 6 (which no teacher token reaches) has 0.2.
    teacher_p = torch.tensor([[0.3, 0.3, 0.1, 0.1, 0.2, 0.0]])
    ids = torch.tensor([[0, 1, 4, 2, 3]])
    student_p = torch.zeros(1, 8)
    student_p[:, id_map[:4]] = teacher_p[:, :4]
    student_p[:, 6] = 0.2
    loss = ct.hybrid_loss(student_p.log(), ids, teacher_p.gather(-1, ids).log(), id_map, uld_weight=1.0)
    assert loss.item() == pytest.approx(0.0, abs=1e-6)
    student_p[:, 6], student_p[:, 7] = 0.1, 0.1  # the same unmatched mass, shaped differently: ULD sees it
    loss = ct.hybrid_loss(student_p.log(), ids, teacher_p.gather(-1, ids).log(), id_map, uld_weight=1.0)
    assert loss.item() == pytest.approx(0.2, abs=1e-6)  # |.2 - .1| + |0 - .1|
