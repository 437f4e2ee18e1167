"""The distill report: report.json round-trips, report.md carries the numbers, the PNGs are real images."""
import json
from pathlib import Path

import matplotlib.image as mpimg
import pytest

from train.report import write_quality_table, write_report
from train.scoring import summarize


def sample(reference_tokens, prediction, logprobs):
    return {"prompt_id": f"p{reference_tokens}", "prediction": prediction, "reference": "the quick brown fox jumps",
            "reference_tokens": reference_tokens, "teacher_logprob": logprobs}


def make_report(method="switch", shares=None, curve=True):
    before = summarize([sample(5, "a slow dog", [-3.0, -3.5]), sample(70, "the fox", [-2.0, -2.5, -3.0])])
    after = summarize([sample(5, "the quick fox", [-1.0, -1.5]), sample(70, "the quick brown fox", [-0.5, -1.0, -1.5])])
    return {
        "method": method, "preset": "tiny", "steps": 12, "tokens_per_s": 345.678, "seconds": 61.25,
        "data": {"source": "embedded prompt set", "train_examples": 288, "val_examples": 32,
                 "references": "teacher-written (SmolLM2-135M-Instruct), cached"},
        "before": before, "after": after,
        "loss_curve": [{"step": i, "loss": 4.0 / i, "lr": 1e-4 * min(1.0, i / 4)} for i in range(1, 13)] if curve else [],
        "intervention_by_position": {"16-31": 0.42, "0-7": 0.05, "8-15": 0.2} if shares is None else shares,
        "staleness_steps": {"mean": 0.75, "max": 2},
        "teacher_pass_saving": {"reused_positions": 960, "rescored_positions": 0, "teacher_forward_s_saved": 3.5},
        "student_dir": "/tmp/out/student", "config": {"train": {"lr": 0.0001, "zero_stage": 2}},
    }


def assert_png(path: str):
    image = mpimg.imread(path)  # raises on anything that is not a PNG
    assert image.ndim == 3 and image.shape[0] > 200 and image.shape[1] > 300
    assert image[..., :3].std() > 0.05  # something was drawn, not a blank canvas
    assert Path(path).stat().st_size > 10_000


def test_report_files_numbers_and_plots(tmp_path):
    report = make_report()
    paths = write_report(tmp_path / "out", report)
    assert json.loads(Path(paths["json"]).read_text()) == report
    assert set(paths["plots"]) == {"loss", "intervention_by_position", "rouge_by_length"}
    for path in paths["plots"].values():
        assert_png(path)
    md = Path(paths["md"]).read_text()
    before, after = report["before"], report["after"]
    assert before["rouge_l"] < after["rouge_l"] and after["teacher_nll"] < before["teacher_nll"]
    overall = (f"| all | 2 | {before['rouge_l']:.2f} | {after['rouge_l']:.2f} | {after['rouge_l'] - before['rouge_l']:+.2f} "
               f"| {before['teacher_nll']:.3f} | {after['teacher_nll']:.3f} | {after['teacher_nll'] - before['teacher_nll']:+.3f} |")
    assert overall in md
    assert "| 0-15 tokens | 1 | 0.00 | 75.00 | +75.00 | 3.250 | 1.250 | -2.000 |" in md
    assert "| 64+ tokens |" in md and md.index("| 0-15 tokens |") < md.index("| 64+ tokens |")
    for text in ["switch", "12 steps", "345.7 tokens/s", "embedded prompt set", "288 training and 32 held-out",
                 "teacher-written (SmolLM2-135M-Instruct), cached", "/tmp/out/student", "mean 0.75 steps, max 2 steps",
                 "reused_positions: 960", "0-7: 5.0%, 8-15: 20.0%, 16-31: 42.0%", "4.0000 at step 1 to 0.3333 at step 12",
                 "](loss.png)", "](intervention_by_position.png)", "](rouge_by_length.png)", '"zero_stage": 2']:
        assert text in md, text


@pytest.mark.parametrize("method", ["sft"])
def test_methods_without_interventions_still_get_every_plot(tmp_path, method):
    paths = write_report(tmp_path, make_report(method=method, shares={}, curve=False))
    for path in paths["plots"].values():
        assert_png(path)
    md = Path(paths["md"]).read_text()
    assert "no teacher interventions for this method" in md and "no steps recorded" in md


def test_quality_table(tmp_path):
    rows = [
        {"method": "sft", "rouge_l": 21.5, "teacher_nll": 2.71828, "rouge_l_longest": 12.25, "teacher_nll_longest": 3.1,
         "longest_bucket": "64+", "tokens_per_s": 410.26, "steps": 40, "train_tokens": 20480},
        {"method": "switch", "rouge_l": 24.0, "teacher_nll": 2.5, "rouge_l_longest": None, "teacher_nll_longest": None,
         "longest_bucket": "64+", "tokens_per_s": 180.0, "steps": 40, "train_tokens": 20480},
    ]
    path = write_quality_table(tmp_path / "bench" / "quality.md", rows)
    lines = Path(path).read_text().splitlines()
    assert lines[0].startswith("| Method | ROUGE-L | Teacher NLL |")
    assert lines[2] == "| sft | 21.50 | 2.718 | 64+ | 12.25 | 3.100 | 410.3 | 40 | 20480 |"
    assert lines[3] == "| switch | 24.00 | 2.500 | 64+ | - | - | 180.0 | 40 | 20480 |"
