"""kd and gkd between a teacher and a student whose tokenizers differ: two real DeepSpeed steps under
Ray Train on the tiny teacher and a student on a BPE of its own (tests/other_tokenizer.py)."""
import json

import pytest
import torch
from distill_helpers import _cfg
from other_tokenizer import build_other_student
from transformers import AutoModelForCausalLM, AutoTokenizer

from train.distill import run_distill

pytestmark = [pytest.mark.usefixtures("ray_local"), pytest.mark.slow]


@pytest.fixture(scope="module")
def other_student(tmp_path_factory):
    folder = tmp_path_factory.mktemp("other_student")
    return folder, build_other_student(folder)


@pytest.mark.parametrize("method,cross_loss,unlikelihood", [("kd", "hybrid", 0), ("gkd", "hybrid", 1), ("kd", "uld", 0)])
def test_two_steps_across_tokenizers(method, cross_loss, unlikelihood, dolly_file, other_student, tmp_path):
    folder, student_tok = other_student
    cfg = _cfg(dolly_file, f"method={method}", "steps=2", "checkpoint_every=2", "gkd_lambda=0.5", "lr=1e-3", f"student.path={folder}",
               f"cross_loss={cross_loss}", f"unlikelihood={unlikelihood}")
    run_distill(cfg, str(tmp_path), progress=False)
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved["tokenizers"]["shared"] is False and saved["tokenizers"]["student_vocab"] == len(student_tok)
    assert 0 < saved["tokenizers"]["teacher_tokens_with_a_student_twin"] < len(student_tok)
    assert all(p["loss"] == p["loss"] and p["loss"] > 0 for p in saved["loss_curve"]) and len(saved["loss_curve"]) == 2
    # The student's own greedy answers, written alone in its tokens, have their loops marked (the untrained
    # student loops), and only where the term is on.
    assert (sum(p["repeats"] for p in saved["loss_curve"]) > 0) == bool(unlikelihood)
    # The cross-tokenizer loss on the held-out answers falls, and stands in for the KL, which is not defined here.
    held_out = saved["val_kl_to_teacher"]
    assert held_out["title"] == "Held-out cross-tokenizer loss" and held_out["end"]["kl"] < held_out["start"]["kl"]
    for side in ("before", "after"):
        assert saved[side]["kl"] is None and saved[side]["teacher_nll"] > 0 and saved[side]["greedy"]["teacher_nll"] > 0
    assert saved["teacher_greedy"]["greedy"]["rouge_l"] is not None
    report = (tmp_path / "report.md").read_text()
    assert "**Tokenizers:**" in report and "full-vocabulary KL is not defined across tokenizers" in report
    # The saved student is an HF folder on its own tokenizer, and writes.
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "student")
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "student")
    assert tokenizer.get_vocab() == student_tok.get_vocab() and model.config.vocab_size == len(student_tok)
    ids = tokenizer("Name a primary color.", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=4, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    assert out.shape[1] == ids.shape[1] + 4
