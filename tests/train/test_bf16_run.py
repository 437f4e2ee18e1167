"""train.precision=bf16 on the tiny preset, real Ray Train and DeepSpeed on the CPU (torch autocast:
fp32 masters and optimizer, bf16 matmuls): the loss falls, the report says how, and the saved
student loads with from_pretrained in float32."""
import json

import pytest
import torch
from distill_helpers import _cfg
from transformers import AutoModelForCausalLM

from train.distill import run_distill

pytestmark = [pytest.mark.usefixtures("ray_local"), pytest.mark.slow]


@pytest.mark.timeout(300)
def test_a_bf16_run_trains_and_saves_a_float32_student(dolly_file, tmp_path):
    # every step sees the same 8 answers (global batch 8 of 8 training examples): the loss is comparable step to step
    cfg = _cfg(dolly_file, "method=kd", "precision=bf16", "steps=6", "global_batch=8", "micro_batch=4", "lr=0.0001",
               "lr_schedule=constant", "checkpoint_every=6")
    report = run_distill(cfg, str(tmp_path), progress=False)
    losses = [p["loss"] for p in report["loss_curve"]]
    assert losses[-1] < 0.8 * losses[0], losses
    assert report["precision"]["dtype"] == "bf16" and report["precision"]["how"] == "autocast"
    assert "train.precision=bf16 on the CPU" in report["precision"]["why"]
    assert json.loads((tmp_path / "student" / "config.json").read_text())["architectures"]
    student = AutoModelForCausalLM.from_pretrained(tmp_path / "student")
    assert {p.dtype for p in student.parameters()} == {torch.float32}
