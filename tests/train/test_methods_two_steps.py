"""Every method, two real DeepSpeed steps under Ray Train on the tiny preset, and a diverging loss that
stops the run with one clear line."""
import json

import pytest
from distill_helpers import _cfg

from cluster.cli import main
from train.distill import run_distill

pytestmark = [pytest.mark.usefixtures("ray_local"), pytest.mark.slow]


@pytest.mark.timeout(240)
# skd and adaswitch make switch's records and loss through their own engine mode: their plans and engine
# settings are tested in test_methods_on_cpu.py, their engines on real actors in test_switch_engine.py.
@pytest.mark.parametrize("method", ["sft", "kd", "seqkd", "gkd", "distillm", "switch"])
def test_every_method_runs_two_steps(method, dolly_file, tmp_path):
    cfg = _cfg(dolly_file, f"method={method}", "steps=2", "checkpoint_every=2", "gkd_lambda=0.5", "distillm_p_init=0.5")
    report = run_distill(cfg, str(tmp_path), progress=False)
    saved = json.loads((tmp_path / "report.json").read_text())
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
    assert "full-vocabulary KL" in (tmp_path / "report.md").read_text()
    assert saved["tokens_per_s"] > 0 and (tmp_path / "student" / "config.json").is_file()
    reuse = saved["teacher_pass_saving"]
    if method in ("switch", "skd", "adaswitch"):  # teacher log-probs come from generation: no extra teacher pass at all
        assert reuse["extra_pass_positions"] == 0 and reuse["reused_positions"] > 0
        assert reuse["recorded_vs_rescored_max_abs_diff"] < 1e-2
        assert saved["intervention_by_position"]
        # tiny with overlap: the pair and the trainer run 3 threads on 1.5 CPUs, so one SWITCH group
        # makes every training row (2 steps of 4), the second group none
        assert saved["generation"]["pipeline_groups"] == 1 and saved["generation"]["rows_by_group"] == {"0": 8}
    if method in ("kd", "sft"):
        assert reuse["reused_positions"] == 0
    assert report["files"]["md"].endswith("report.md")


@pytest.mark.timeout(240)
def test_non_finite_loss_stops_with_a_clear_message(dolly_file, tmp_path, capsys):
    code = main(["distill", "--preset", "tiny", "--out", str(tmp_path), "--no-progress", f"data={dolly_file}", "val_size=2",
                 "max_new_tokens=8", "method=sft", "steps=4", "checkpoint_every=1", "lr=1e30", "grad_clip=0", "lr_schedule=constant"])
    err = capsys.readouterr().err
    assert code == 1
    assert "loss became" in err and "last good checkpoint" in err
    assert "Traceback" not in err
