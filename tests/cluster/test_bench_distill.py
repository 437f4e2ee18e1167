"""`studyhall bench distill` on tiny: two short kd runs (--vary), their phase breakdown as JSON and Markdown."""
import json

import pytest

from cluster.cli import main
from train.phases import PHASES

pytestmark = [pytest.mark.usefixtures("ray_local"), pytest.mark.timeout(600)]


def test_bench_distill_writes_the_breakdown_of_each_setting(tmp_path, capsys):
    out = tmp_path / "distill.json"
    code = main(["bench", "distill", "--preset", "tiny", "--method", "kd", "--vary", "train.push_every=1,2", "--out", str(out),
                 "steps=3", "global_batch=4", "micro_batch=2", "val_size=2", "eval_samples=1", "max_new_tokens=8"])
    assert code == 0
    result = json.loads(out.read_text())
    assert [r["setting"] for r in result["runs"]] == ["train.push_every=1", "train.push_every=2"]
    for run in result["runs"]:
        steady = run["phases"]
        assert steady["steps"] == 2 and steady["forward_backward"] > 0 and steady["optimizer"] > 0
        assert abs(steady["seconds_per_step"] - sum(steady[p] for p in PHASES)) < 0.01
        assert json.loads(open(run["report"]).read())["phases"]["steady_state"] == steady
    # push_every=2 leaves step 2's batch one step stale (steps 1 and 3 follow a push)
    assert [r["staleness_steps"]["max"] for r in result["runs"]] == [0, 1]
    table = out.with_suffix(".md").read_text()
    assert table == result["table"] + "\n" and "| **seconds per step** |" in table and table in capsys.readouterr().out + "\n"


def test_a_malformed_vary_is_one_clear_line(tmp_path, capsys):
    assert main(["bench", "distill", "--preset", "tiny", "--vary", "push_every", "--out", str(tmp_path / "x.json")]) == 2
    assert "--vary 'push_every': expected key=value1,value2" in capsys.readouterr().err
