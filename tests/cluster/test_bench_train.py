"""`bench train` steps the student as the trainer does (its threads, precision and answer-only head)
and reports DeepSpeed's forward and backward seconds per step beside the two loops' tokens/s."""
import json

import pytest

from cluster.bench.train import run_bench
from studyhall.config import load_config
from studyhall.threads import trainer_threads

pytestmark = [pytest.mark.usefixtures("ray_local"), pytest.mark.slow]


def test_bench_train_reports_the_trainers_setting_and_its_forward_backward(tmp_path):
    overrides = ["train.precision=fp32", "global_batch=4", "micro_batch=2"]
    result = run_bench("tiny", str(tmp_path / "train.json"), 1, overrides)
    saved = json.loads((tmp_path / "train.json").read_text())
    assert saved == result
    assert result["precision"] == "fp32" and result["precision_why"] == "train.precision=fp32"
    assert result["threads"] == trainer_threads(load_config("tiny", ["num_workers=1", *overrides]))
    assert result["answer_logits_only"] is True
    assert result["plain_tokens_per_s"] > 0 and result["deepspeed_tokens_per_s"] > 0
    # two micro-batches' forward and backward: part of a DeepSpeed step, so under its whole time
    step_seconds = result["tokens_per_step"] / result["deepspeed_tokens_per_s"]
    assert 0 < result["deepspeed_forward_backward_s_per_step"] < step_seconds
    table = (tmp_path / "train.md").read_text()
    assert f"fp32, {result['threads']}" in table and str(result["deepspeed_forward_backward_s_per_step"]) in table
