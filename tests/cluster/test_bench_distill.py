"""`studyhall bench distill` on tiny: two short gkd runs (--vary), their phase breakdown as JSON and Markdown."""
import json

import pytest
import torch

from actors.models import load_model
from actors.weights import pack
from cluster.cli import main
from studyhall.config import ModelConfig
from train.phases import PHASES

pytestmark = [pytest.mark.usefixtures("ray_local"), pytest.mark.slow]


def test_bench_distill_writes_the_breakdown_of_each_setting(tmp_path, capsys):
    out = tmp_path / "distill.json"
    code = main(["bench", "distill", "--preset", "tiny", "--method", "gkd", "--vary", "train.max_staleness=0,1", "--out", str(out),
                 "steps=3", "global_batch=4", "micro_batch=2", "val_size=2", "eval_samples=1", "answer_tokens=8"])
    assert code == 0
    result = json.loads(out.read_text())
    assert [r["setting"] for r in result["runs"]] == ["train.max_staleness=0", "train.max_staleness=1"]
    for run in result["runs"]:
        steady = run["phases"]
        assert steady["steps"] == 2 and steady["forward_backward"] > 0 and steady["optimizer"] > 0
        assert abs(steady["seconds_per_step"] - sum(steady[p] for p in PHASES)) < 0.01
        saved = json.loads(open(run["report"]).read())
        assert saved["phases"]["steady_state"] == steady
        assert 0 <= run["padding_share"] < 1 and run["padding_share"] == saved["padding_share"]
    # max_staleness=1: steps 2 and 3 were generated while the step before them trained
    assert [r["staleness_steps"]["per_step"] for r in result["runs"]] == [{"1": 0, "2": 0, "3": 0}, {"1": 0, "2": 1, "3": 1}]
    student = load_model(ModelConfig(path="tiny:student", dtype="float32"), torch.device("cpu")).state_dict()
    assert {r["weight_push"]["packet_mb"] for r in result["runs"]} == {round(pack(student, 0).nbytes / 2 ** 20, 1)}
    # strict: pushes 1 and 2 before batches 2 and 3, push 3 before the evaluation; ahead: push 2 came
    # while batch 3 was made and push 3 replaced it before it was applied
    assert [r["weight_push"]["loads"] for r in result["runs"]] == [3, 2]
    table = out.with_suffix(".md").read_text()
    assert table == result["table"] + "\n" and "| **seconds per step** |" in table and table in capsys.readouterr().out + "\n"


def test_a_malformed_vary_is_one_clear_line(tmp_path, capsys):
    assert main(["bench", "distill", "--preset", "tiny", "--vary", "push_every", "--out", str(tmp_path / "x.json")]) == 2
    assert "--vary 'push_every': expected key=value1,value2" in capsys.readouterr().err
