"""A two-stage run on the tiny preset (a warm start, then the method), real Ray Train and DeepSpeed:
both stages write their reports, the method starts from the warm stage's weights, and the report's
greedy answers are what the saved student's own generate(do_sample=False) writes. Its stages are sft and
kd, so it also holds those two methods to the checks every method's two-step run meets
(test_methods_two_steps.py runs the others)."""
import pytest
import torch
from distill_helpers import _cfg, assert_a_complete_two_step_report
from transformers import AutoModelForCausalLM, AutoTokenizer

from studyhall.prompts import render
from train.distill import run_distill

pytestmark = [pytest.mark.usefixtures("ray_local"), pytest.mark.slow]


def test_the_method_starts_from_the_warm_stage_and_its_greedy_answers_are_generate(dolly_file, tmp_path):
    cfg = _cfg(dolly_file, "warm_start=sft", "warm_steps=2", "warm_lr=0.001", "method=kd", "steps=2", "checkpoint_every=2")
    report = run_distill(cfg, str(tmp_path), progress=False)
    warm = assert_a_complete_two_step_report(tmp_path / "warm_start", "sft")
    assert_a_complete_two_step_report(tmp_path, "kd")  # both read their stage's report.md too
    assert report["files"]["md"].endswith("report.md")
    # the method's student actor started with exactly the weights the warm stage ended with
    assert report["start_weights"]["sha256"] == warm["evaluated_weights"]["sha256"]
    assert report["start_weights"]["sha256"] != warm["start_weights"]["sha256"]  # the warm stage changed them
    assert report["warm_start"]["method"] == "sft" and report["warm_start"]["weights"]["sha256"] == warm["evaluated_weights"]["sha256"]
    # the same weights on the same prompts and seeds: the warm stage's "after" is this stage's "before"
    assert report["before"] == warm["after"] and report["teacher_greedy"] == warm["teacher_greedy"]
    assert report["warm_start"]["from_start"]["all"]["rouge_l"]["before"] == warm["before"]["rouge_l"]
    md = (tmp_path / "report.md").read_text()
    assert "- **Warm start:** `sft` for 2 steps" in md and "## Greedy answers" in md and "## Answers" in md
    assert set(report["teacher_greedy"]["answers"]) == set(report["prompts"]) and len(report["prompts"]) == 2

    student = tmp_path / "student"
    model, tokenizer = AutoModelForCausalLM.from_pretrained(student), AutoTokenizer.from_pretrained(student)
    assert report["after"]["answers"].keys() == report["prompts"].keys()
    for pid, prompt in report["prompts"].items():
        ids = tokenizer(render(tokenizer, [{"role": "user", "content": prompt}]), add_special_tokens=False, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=16)
        text = tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip()
        assert report["after"]["answers"][pid] == text, pid

