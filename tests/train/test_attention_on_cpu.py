"""train.attention: the trainer's student with eager attention gives the loss and gradients of PyTorch's fused
attention (fp32, tiny model, right-padded rows of unequal length), and auto picks eager on the CPU only."""
import pytest
import torch
from distill_helpers import scored_records

from studyhall.config import load_config
from train.attention import choose
from train.objective import answer_loss, collate
from train.train_loop import trainer_student

# the same fp32 sums in another order (the fused kernel's blocked softmax against matmul-then-softmax)
LOSS_TOL = dict(rel=1e-5, abs=1e-6)
GRAD_TOL = dict(rtol=1e-4, atol=1e-6)


def _loss_and_grads(attention: str):
    cfg = load_config("tiny", [f"train.attention={attention}"])
    torch.manual_seed(0)
    student = trainer_student(cfg, torch.device("cpu"), use_gpu=False)
    assert student.lm.config._attn_implementation == choose(attention, on_gpu=False)
    batch = collate(scored_records(student.lm.config.vocab_size), pad_id=0, with_teacher=True)
    loss = answer_loss(student(batch.input_ids, batch.attention_mask, positions=batch.logit_positions), batch, "fkl", 0.5, 0.1, 1.0)
    loss.backward()
    return loss.item(), {n: p.grad.clone() for n, p in student.named_parameters() if p.grad is not None}


def test_eager_attention_gives_the_fused_kernels_loss_and_gradients():
    eager_loss, eager_grads = _loss_and_grads("eager")
    sdpa_loss, sdpa_grads = _loss_and_grads("sdpa")
    assert eager_loss == pytest.approx(sdpa_loss, **LOSS_TOL)
    assert eager_grads.keys() == sdpa_grads.keys() and len(eager_grads) > 0
    for name, grad in sdpa_grads.items():
        torch.testing.assert_close(eager_grads[name], grad, **GRAD_TOL, msg=name)


def test_auto_is_eager_on_the_cpu_and_sdpa_on_a_gpu():
    assert choose("auto", on_gpu=False) == "eager"
    assert choose("auto", on_gpu=True) == "sdpa"
    assert choose("sdpa", on_gpu=False) == "sdpa" and choose("eager", on_gpu=True) == "eager"


def test_an_unknown_kernel_is_refused_by_name():
    with pytest.raises(Exception, match="train.attention='flash'"):
        load_config("tiny", ["train.attention=flash"])
