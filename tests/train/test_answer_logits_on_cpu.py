"""The trainer's student computes logits only at the answer positions: same loss and gradients as the
full-logits path (fp32, tiny model), and the precision train.precision=auto picks from what the device reports."""
import pytest
import torch
from distill_helpers import scored_records as _records

from actors.models import load_model
from studyhall.config import ModelConfig
from train.answer_logits import AnswerLogitsLM, head_matches_forward
from train.objective import answer_loss, collate, distill_loss, micro_batches
from train.precision import choose, cpu_flags

# fp32 sums over the answer rows alone against sums over every row: the same values, other rounding
LOSS_TOL = dict(rel=1e-5, abs=1e-6)
GRAD_TOL = dict(rtol=1e-4, atol=1e-6)


def _grads(model) -> dict:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.fixture(scope="module")
def tiny_student():
    torch.manual_seed(0)
    return load_model(ModelConfig(path="tiny:student", dtype="float32"), torch.device("cpu")).train()


@pytest.mark.parametrize("loss", ["fkl", "jsd", "skew_fkl", "ce"])
def test_answer_logits_give_the_full_paths_loss_and_gradients(tiny_student, loss):
    model = tiny_student
    batch = collate(_records(model.config.vocab_size), pad_id=0, with_teacher=loss != "ce")
    wrapped = AnswerLogitsLM(model)
    assert wrapped.split  # a Llama's forward is its decoder, then its head

    model.zero_grad()
    full = distill_loss(model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits, batch, loss, 0.5, 0.1, 1.0)
    full.backward()
    full_grads = _grads(model)

    model.zero_grad()
    logits = wrapped(batch.input_ids, batch.attention_mask, positions=batch.logit_positions)
    assert logits.shape == (int(batch.loss_mask.sum()), model.config.vocab_size)
    answer = answer_loss(logits, batch, loss, 0.5, 0.1, 1.0)
    answer.backward()
    answer_grads = _grads(model)

    assert answer.item() == pytest.approx(full.item(), **LOSS_TOL)
    assert answer_grads.keys() == full_grads.keys()
    for name, grad in full_grads.items():
        torch.testing.assert_close(answer_grads[name], grad, **GRAD_TOL, msg=name)


def test_the_flat_loss_reads_exactly_the_masked_positions(tiny_student):
    batch = collate(_records(tiny_student.config.vocab_size), pad_id=0, with_teacher=True)
    assert batch.logit_positions.shape == batch.input_ids.shape
    assert torch.equal(batch.logit_positions[:, :-1], batch.loss_mask) and not batch.logit_positions[:, -1].any()
    assert int(batch.logit_positions.sum()) == 5 + 9 + 2


class _ScaledLogits(torch.nn.Module):
    """A model whose forward does more than decoder-then-head (as logit scaling or soft-capping do)."""

    def __init__(self, lm):
        super().__init__()
        self.lm, self.config = lm, lm.config

    def get_decoder(self):
        return self.lm.get_decoder()

    def get_output_embeddings(self):
        return self.lm.get_output_embeddings()

    def forward(self, input_ids, attention_mask=None):
        out = self.lm(input_ids=input_ids, attention_mask=attention_mask)
        out.logits = out.logits * 0.5
        return out


def test_a_model_whose_forward_changes_the_heads_output_falls_back_to_its_own_logits(tiny_student):
    scaled = _ScaledLogits(tiny_student)
    assert head_matches_forward(tiny_student) and not head_matches_forward(scaled)
    wrapped = AnswerLogitsLM(scaled)
    assert not wrapped.split
    batch = collate(_records(tiny_student.config.vocab_size), pad_id=0, with_teacher=False)
    with torch.no_grad():
        expected = scaled(batch.input_ids, batch.attention_mask).logits[batch.logit_positions]
        got = wrapped(batch.input_ids, batch.attention_mask, positions=batch.logit_positions)
    assert torch.equal(got, expected)


def test_disabled_runs_the_head_at_every_position_then_selects(tiny_student):
    assert not AnswerLogitsLM(tiny_student, enabled=False).split


@pytest.mark.parametrize("flags, dtype", [
    ({"avx2", "avx512f", "avx512_bf16"}, "bf16"),
    ({"avx2", "amx_tile", "amx_bf16"}, "bf16"),
    ({"fp", "asimd", "bf16"}, "bf16"),
    ({"avx2", "avx512f"}, "fp32"),
    (set(), "fp32"),
])
def test_auto_picks_bf16_on_a_cpu_that_reports_bf16_instructions_only(flags, dtype):
    chosen = choose("auto", on_gpu=False, gpu_bf16=False, flags=flags)
    assert chosen.dtype == dtype
    assert chosen.how == ("autocast" if dtype == "bf16" else "fp32")
    assert ("reports no bf16" in chosen.why) == (dtype == "fp32")


def test_gpu_and_explicit_settings():
    assert choose("auto", on_gpu=True, gpu_bf16=True, flags=set()).how == "deepspeed_bf16"
    assert choose("auto", on_gpu=True, gpu_bf16=False, flags=set()).dtype == "fp32"
    assert choose("fp32", on_gpu=True, gpu_bf16=True, flags={"amx_bf16"}).dtype == "fp32"
    forced = choose("bf16", on_gpu=False, gpu_bf16=False, flags={"avx2"})
    assert forced.how == "autocast" and "emulated" in forced.why


def test_cpu_flags_are_read_from_x86_and_arm_cpuinfo():
    x86 = "processor\t: 0\nflags\t\t: fpu avx2 avx512_bf16\n\nprocessor\t: 1\nflags\t\t: fpu avx2 avx512_bf16\n"
    arm = "processor\t: 0\nFeatures\t: fp asimd bf16\n"
    assert cpu_flags(x86) == {"fpu", "avx2", "avx512_bf16"} and cpu_flags(arm) == {"fp", "asimd", "bf16"}
    assert cpu_flags("") == set()


def test_a_micro_batch_counts_its_tokens_and_its_padded_positions():
    """(7+5, 3+9, 11+2) tokens right-padded to the longest row, 13: the report's padding share is 1 - tokens / positions."""
    batch = collate(_records(vocab=50), pad_id=0, with_teacher=True)
    assert (batch.tokens, batch.positions) == (12 + 12 + 13, 3 * 13)


def test_micro_batches_by_length_hold_every_record_once_and_pad_less():
    """Lengths 12, 12, 13, 12, 12, 13 in two micro-batches of 3: in the given order each pads to 13
    (39 + 39 positions); by length they are 12, 12, 12 and 12, 13, 13 (36 + 39)."""
    records = _records(vocab=50) + _records(vocab=50, seed=1)
    plain, grouped = micro_batches(records, 3), micro_batches(records, 3, by_length=True)
    assert sorted(id(r) for part in grouped for r in part) == sorted(id(r) for r in records)
    assert [len(part) for part in grouped] == [3, 3]
    assert sum(collate(p, 0, True).positions for p in plain) == 78
    assert sum(collate(p, 0, True).positions for p in grouped) == 36 + 39
    assert sum(collate(p, 0, True).tokens for p in grouped) == sum(collate(p, 0, True).tokens for p in plain) == 74
