"""What the distillation tests share: question/answer pairs (tests/train/conftest.py writes them as a Dolly file), the tiny config
over it, and the checks every method's two-step run meets."""
import json
from pathlib import Path

import pytest
import torch

from studyhall.config import load_config
from studyhall.record import Record

ANSWERS = [
    ("Name a primary color.", "Red is a primary color."),
    ("What do bees make?", "Bees make honey from the nectar of flowers."),
    ("How many legs does a spider have?", "A spider has eight legs."),
    ("What is the opposite of hot?", "The opposite of hot is cold."),
    ("Where do fish live?", "Fish live in water, in rivers, lakes and the sea."),
    ("What season comes after winter?", "Spring comes after winter."),
    ("What do plants need to grow?", "Plants need light, water and air to grow."),
    ("What is two plus two?", "Two plus two is four."),
    ("What color is the sky on a clear day?", "The sky is blue on a clear day."),
    ("What do cows drink?", "Cows drink water."),
]


def _cfg(data, *overrides):
    return load_config("tiny", [f"data={data}", "val_size=2", "answer_tokens=16", *overrides])


def assert_a_complete_two_step_report(out_dir, method: str) -> dict:
    """What every method's two-step run on _cfg's data leaves in out_dir: report.json with a finite loss
    per step, before/after figures with intervals, the teacher-pass accounting and a saved student."""
    out_dir = Path(out_dir)
    saved = json.loads((out_dir / "report.json").read_text())
    assert saved["method"] == method and saved["steps"] == 2
    assert [p["step"] for p in saved["loss_curve"]] == [1, 2]
    assert all(p["loss"] == p["loss"] and p["loss"] >= 0 for p in saved["loss_curve"])  # finite and a divergence/CE
    for side in ("before", "after"):
        assert 0 <= saved[side]["rouge_l"] <= 100 and saved[side]["teacher_nll"] > 0
        assert 0 <= saved[side]["repetition"] <= 1 and 0 < saved[side]["distinct_2"] <= 1
        assert saved[side]["kl"] > 0 and 0 <= saved[side]["top1_agreement"] <= 1 and saved[side]["kl_references"] == 2
        assert set(saved[side]["per_prompt"]) == set(saved["before"]["per_prompt"]) and len(saved[side]["per_prompt"]) == 2
    assert set(saved["difference"]["all"]) == {"rouge_l", "teacher_nll", "repetition", "distinct_2", "looping", "kl", "top1_agreement"}
    assert set(saved["difference_greedy"]["all"]) == {"rouge_l", "teacher_nll", "repetition", "distinct_2", "looping"}
    for m in saved["difference"]["all"].values():
        assert m["low"] <= m["high"] and m["diff"] == pytest.approx(m["after"] - m["before"], abs=1e-4)
    assert "full-vocabulary KL" in (out_dir / "report.md").read_text()
    assert saved["tokens_per_s"] > 0 and (out_dir / "student" / "config.json").is_file()
    reuse = saved["teacher_pass_saving"]
    if method in ("switch", "skd", "adaswitch"):  # teacher log-probs come from generation: no extra teacher pass at all
        assert reuse["extra_pass_positions"] == 0 and reuse["reused_positions"] > 0
        assert reuse["recorded_vs_rescored_max_abs_diff"] < 1e-2
        assert saved["intervention_by_position"]
    if method in ("kd", "sft"):
        assert reuse["reused_positions"] == 0
    return saved


def scored_records(vocab: int, seed: int = 0, k: int = 5) -> list[Record]:
    """Three records of unequal prompt and answer lengths, so rows pad differently, with top-k teacher log-probs."""
    g = torch.Generator().manual_seed(seed)
    records = []
    for prompt_len, answer_len in ((7, 5), (3, 9), (11, 2)):  # unequal, so rows are padded differently
        logp = torch.log_softmax(torch.randn(answer_len, vocab, generator=g), -1).topk(k, -1)
        records.append(Record("p", torch.randint(1, vocab, (prompt_len,), generator=g).tolist(),
                              torch.randint(1, vocab, (answer_len,), generator=g).tolist(),
                              teacher_topk_ids=logp.indices.tolist(), teacher_topk_logprobs=logp.values.tolist()))
    return records
