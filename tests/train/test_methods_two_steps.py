"""Every method, two real DeepSpeed steps under Ray Train on the tiny preset, and a diverging loss that
stops the run with one clear line."""
import pytest
from distill_helpers import _cfg, assert_a_complete_two_step_report

from cluster.cli import main
from train.distill import run_distill

pytestmark = [pytest.mark.usefixtures("ray_local"), pytest.mark.slow]


# skd and adaswitch make switch's records and loss through their own engine mode: their plans and engine
# settings are tested in test_methods_on_cpu.py, their engines on real actors in test_switch_engine.py.
# sft and kd run as the two stages of test_warm_start.py, which holds both to these same checks.
@pytest.mark.parametrize("method", ["seqkd", "gkd", "distillm", "switch"])
def test_every_method_runs_two_steps(method, dolly_file, tmp_path):
    # gkd also runs train.unlikelihood: the student's greedy answers join its student and data records
    extra = ["unlikelihood=1.0"] if method == "gkd" else []
    cfg = _cfg(dolly_file, f"method={method}", "steps=2", "checkpoint_every=2", "gkd_lambda=0.5", "distillm_p_init=0.5", *extra)
    report = run_distill(cfg, str(tmp_path), progress=False)
    saved = assert_a_complete_two_step_report(tmp_path, method)
    if extra:
        repeats = [entry["repeats"] for entry in saved["loss_curve"]]
        assert len(repeats) == 2 and all(isinstance(r, int) and r >= 0 for r in repeats)
        assert f"{repeats[0]} such tokens at step 1, {repeats[1]} at step 2" in (tmp_path / "report.md").read_text()
    if method == "switch":
        # tiny with overlap: the pair and the trainer run 3 threads on 1.5 CPUs, so one SWITCH group
        # makes every training row (2 steps of 4), the second group none
        assert saved["generation"]["pipeline_groups"] == 1 and saved["generation"]["rows_by_group"] == {"0": 8}
    assert report["files"]["md"].endswith("report.md")


def test_non_finite_loss_stops_with_a_clear_message(dolly_file, tmp_path, capsys):
    code = main(["distill", "--preset", "tiny", "--out", str(tmp_path), "--no-progress", f"data={dolly_file}", "val_size=2",
                 "answer_tokens=8", "method=sft", "steps=4", "checkpoint_every=1", "lr=1e30", "grad_clip=0", "lr_schedule=constant"])
    err = capsys.readouterr().err
    assert code == 1
    assert "loss became" in err and "last good checkpoint" in err
    assert "Traceback" not in err
