"""The distill report: report.json round-trips, report.md carries the numbers with their intervals,
the PNGs are real images; the quality benchmark's table."""
import json
from pathlib import Path

import matplotlib.image as mpimg
import pytest

from cluster.bench.quality import _row
from train.allocator import KEEP_FREED
from train.bootstrap import compare
from train.report import headline, write_quality_table, write_report
from train.scoring import labels, summarize


def sample(reference_tokens, prediction, logprobs):
    return {"prompt_id": f"p{reference_tokens}", "prediction": prediction, "reference": "the quick brown fox jumps",
            "reference_tokens": reference_tokens, "teacher_logprob": logprobs}


def kl(reference_tokens, tokens, kl_sum, top1):
    return {"prompt_id": f"p{reference_tokens}", "reference_tokens": reference_tokens, "tokens": tokens, "kl_sum": kl_sum, "top1": top1}


def make_report(method="switch", shares=None, curve=True):
    before = summarize([sample(5, "a slow dog", [-3.0, -3.5]), sample(70, "the fox the fox the fox", [-2.0, -2.5, -3.0])],
                       [kl(5, 4, 8.0, 1), kl(70, 16, 40.0, 4)])
    after = summarize([sample(5, "the quick fox", [-1.0, -1.5]), sample(70, "the quick brown fox", [-0.5, -1.0, -1.5])],
                      [kl(5, 4, 4.0, 2), kl(70, 16, 16.0, 8)])
    return {
        "method": method, "preset": "tiny", "steps": 12, "tokens_per_s": 345.678, "seconds": 61.25,
        "data": {"source": "embedded prompt set", "train_examples": 288, "val_examples": 32,
                 "references": "teacher-written (SmolLM2-135M-Instruct), cached"},
        "before": before, "after": after, "difference": compare(before, after), "metrics": labels(after),
        "val_kl_to_teacher": {"label": "top-20 + rest-bucket KL(teacher||student), nats/token, from the trainer: a lower bound of the "
                                       "full-vocabulary KL", "start": {"step": 0, "kl": 1.5}, "end": {"step": 12, "kl": 0.75}},
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
    before, after, diff = report["before"], report["after"], report["difference"]["all"]
    assert before["rouge_l"] < after["rouge_l"] and after["teacher_nll"] < before["teacher_nll"]
    # Overall: each metric before, after, and the difference with its interval.
    rouge = diff["rouge_l"]
    assert (f"| ROUGE-L (0-100) of the student's samples against the references | higher | {before['rouge_l']:.2f} | {after['rouge_l']:.2f} "
            f"| {after['rouge_l'] - before['rouge_l']:+.2f} [{rouge['low']:+.2f}, {rouge['high']:+.2f}] |") in md
    # KL by hand: (8 + 40) / 20 = 2.4 -> (4 + 16) / 20 = 1.0; top-1 5/20 -> 10/20. Repetition of
    # "the fox the fox the fox": 3-grams tfx ftf tfx ftf: 2 of 4 repeat; over two samples 0.25 -> 0.
    assert before["kl"] == 2.4 and after["kl"] == 1.0 and before["top1_agreement"] == 0.25 and after["top1_agreement"] == 0.5
    assert before["repetition"] == 0.25 and after["repetition"] == 0.0
    # The label's pipes are escaped, or they would split the Markdown cell.
    assert (f"| full-vocabulary KL(teacher\\|\\|student), nats/token, on 2 held-out references | lower | 2.400 | 1.000 "
            f"| -1.400 [{diff['kl']['low']:+.3f}, {diff['kl']['high']:+.3f}] |") in md
    assert "| repetition: share of a sample's word 3-grams that already occurred earlier in it | lower | 0.250 | 0.000 | -0.250 [" in md
    assert "| top-1 agreement with the teacher on the same 2 held-out references | higher | 0.250 | 0.500 | +0.250 [" in md
    assert "2 student samples on 2 held-out prompts" in md and "paired bootstrap over prompts (2000 resamples, seed 0)" in md
    # By reference length: one prompt per bucket, so each interval is the single prompt's difference.
    assert ("| 0-15 tokens | 1 | 0.00 → 75.00 (+75.00 [+75.00, +75.00]) | 3.250 → 1.250 (-2.000 [-2.000, -2.000]) "
            "| 0.000 → 0.000 (+0.000 [+0.000, +0.000]) | 2.000 → 1.000 (-1.000 [-1.000, -1.000]) |") in md
    assert "| 64+ tokens | 1 | " in md and "| 0.500 → 0.000 (-0.500 [-0.500, -0.500]) | 2.500 → 1.000 (-1.500 [-1.500, -1.500]) |" in md
    assert md.index("| 0-15 tokens |") < md.index("| 64+ tokens |")
    assert "- **Held-out KL (top-k lower bound):** top-20 + rest-bucket KL(teacher||student), nats/token, from the trainer: a lower bound" in md
    assert "1.500 at step 0 to 0.750 at step 12" in md
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


@pytest.mark.parametrize("method, share, said", [("switch", 0.25, True), ("adaswitch", 0.5, True), ("switch", 0.0, False),
                                                 ("kd", 0.25, False)])
def test_the_method_line_says_what_share_of_an_engine_methods_examples_was_data(tmp_path, method, share, said):
    report = make_report(method=method)
    report["config"]["train"]["switch_data_share"] = share
    line = next(line for line in Path(write_report(tmp_path, report)["md"]).read_text().splitlines() if line.startswith("- **Method:**"))
    assert (f"{share:.0%} of each step's examples from the teacher-scored data instead of a rollout" in line) == said
    assert line.startswith(f"- **Method:** `{method}`, preset `tiny`")


def test_quality_table(tmp_path):
    report = make_report()
    report.update(method="switch", steps=40, train_tokens=20480, tokens_per_s=180.04)
    rows = [_row("(student before training)", report["before"], None), _row("switch", report["after"], report)]
    assert rows[1]["longest_bucket"] == "64+"
    assert rows[1]["all"]["kl"] == {"value": 1.0, **{k: report["difference"]["all"]["kl"][k] for k in ("diff", "low", "high")}}
    path = write_quality_table(tmp_path / "bench" / "quality.md", rows)
    lines = Path(path).read_text().splitlines()
    assert lines[0] == ("| Method | ROUGE-L | Teacher NLL | Repetition | KL (full vocab) | Top-1 | Greedy ROUGE-L | Greedy Repetition "
                        "| Greedy Looping | Longest bucket | ROUGE-L (longest) "
                        "| Teacher NLL (longest) | Repetition (longest) | Tokens/s | Steps | Train tokens |")
    b = report["before"]
    assert lines[2] == (f"| (student before training) | {b['rouge_l']:.2f} | 2.800 | 0.250 | 2.400 | 0.250 | - | - | - | 64+ | 36.36 | 2.500 | 0.500 "
                        "| - | 0 | 0 |")
    d = report["difference"]["all"]
    assert lines[3].startswith(f"| switch | {report['after']['rouge_l']:.2f} ({d['rouge_l']['diff']:+.2f} [{d['rouge_l']['low']:+.2f}, "
                               f"{d['rouge_l']['high']:+.2f}]) | 1.100 (-1.700 [")
    assert (f"| 1.000 (-1.400 [{d['kl']['low']:+.3f}, {d['kl']['high']:+.3f}]) | 0.500 (+0.250 [" in lines[3])
    # The longest bucket holds one prompt: its interval is that prompt's difference.
    assert "]) | - | - | - | 64+ |" in lines[3]  # no greedy answers in this report
    assert lines[3].endswith("| 64+ | 88.89 (+52.53 [+52.53, +52.53]) | 1.000 (-1.500 [-1.500, -1.500]) | 0.000 (-0.500 [-0.500, -0.500]) "
                             "| 180.0 | 40 | 20480 |")
    assert "95% interval of the difference" in Path(path).read_text()

    report["before"] |= greedy({5: "go go go go go", 70: "fox fox fox fox fox fox"})
    report["after"] |= greedy({5: "the quick brown fox", 70: "fox fox fox fox fox fox"})
    report["difference_greedy"] = compare(report["before"]["greedy"], report["after"]["greedy"])
    row = _row("switch", report["after"], report)
    assert row["greedy"]["looping"] == {"value": 0.5, "diff": -0.5, "low": -1.0, "high": 0.0}
    teacher = _row("(teacher, greedy)", {"greedy": greedy({5: "the quick brown fox"})["greedy"]}, None)
    line = Path(write_quality_table(tmp_path / "q2.md", [teacher, row])).read_text().splitlines()[2]
    assert line.startswith("| (teacher, greedy) | - | - | - | - | - | 88.89 | 0.000 | 0.000 | - |")  # 4 of 5 words: F 0.889


def test_headline_has_every_figure_with_its_interval():
    report = make_report()
    line = headline(report["before"], report["after"], report["difference"])
    kl = report["difference"]["all"]["kl"]
    assert line.startswith("ROUGE-L 18.18 -> 81.94 [")
    assert f"full-vocab KL 2.400 -> 1.000 [{kl['low']:+.3f}, {kl['high']:+.3f}]" in line
    assert "teacher NLL 2.800 -> 1.100 [" in line and "repetition 0.250 -> 0.000 [" in line and "top-1 0.250 -> 0.500 [" in line
    assert headline(report["before"]) == "ROUGE-L 18.18, teacher NLL 2.800, repetition 0.250, full-vocab KL 2.400, top-1 0.250"


def greedy(pid_text: dict) -> dict:
    answers = [sample(n, text, [-1.0] * 3) | {"prompt_id": f"p{n}"} for n, text in pid_text.items()]
    return {"greedy": summarize(answers), "answers": {a["prompt_id"]: a["prediction"] for a in answers}}


def test_report_shows_greedy_metrics_beside_the_teacher_and_the_answers(tmp_path):
    report = make_report()
    report["before"] |= greedy({5: "the the the the the the the the", 70: "fox fox fox fox fox fox"})
    report["after"] |= greedy({5: "the quick brown fox", 70: "a quick brown fox jumps over | the dog " + " ".join(f"w{i}" for i in range(200))})
    report["teacher_greedy"] = greedy({5: "the quick brown fox jumps", 70: "the quick brown fox jumps high"})
    report["difference_greedy"] = compare(report["before"]["greedy"], report["after"]["greedy"])
    report["prompts"] = {"p5": "Name a fast animal.", "p70": "Tell a long story\nabout a fox."}
    md = Path(write_report(tmp_path, report)["md"]).read_text()
    greedy_part = md.split("## Greedy answers")[1].split("## Answers")[0]
    looping = next(line for line in greedy_part.splitlines() if line.startswith("| looping"))
    assert looping.startswith("| looping: share of the greedy answers that loop (repetition above 0.3) |")
    assert "of the student's greedy answers against the references |" in greedy_part and "sample" not in greedy_part.replace("do_sample", "")
    # before: both answers loop (1.000); after: neither; teacher: neither; Δ -1.000 with its interval
    assert "| 1.000 | 0.000 | -1.000 [" in looping and looping.endswith("| 0.000 |")
    answers = md.split("## Answers")[1].split("## Training")[0]
    assert answers.index("`p5`") < answers.index("`p70`")  # short reference first
    assert "- **Prompt:** Tell a long story about a fox." in answers  # one line per answer
    assert "- **Teacher:** the quick brown fox jumps high" in answers
    assert "- **Student before:** fox fox fox fox fox fox" in answers
    long_line = next(line for line in answers.splitlines() if line.startswith("- **Student after:** a quick"))
    assert long_line.endswith("…") and len(long_line) < 400


def test_report_names_the_warm_start_and_the_change_from_before_it(tmp_path):
    from train.distill import warm_start_summary

    report = make_report()
    report["before"] |= greedy({5: "go go go go go", 70: "fox fox fox fox fox fox"})
    report["after"] |= greedy({5: "the quick brown fox", 70: "the quick fox"})
    warm = {"student_dir": "/tmp/out/warm_start/student", "method": "sft", "steps": 8, "config": {"train": {"lr": 0.001},
            "student": {"path": "embedded:student"}}, "evaluated_weights": {"sha256": "abc"},
            "before": report["before"], "after": report["before"], "difference": compare(report["before"], report["before"])}
    report["warm_start"] = warm_start_summary(warm, report["after"], seed=0)
    md = Path(write_report(tmp_path, report)["md"]).read_text()
    assert "- **Warm start:** `sft` for 8 steps at lr 0.001 from `embedded:student` (its report: `/tmp/out/warm_start/report.md`)" in md
    line = next(x for x in md.splitlines() if x.startswith("- **From before the warm start to after this run (greedy):**"))
    assert "Looping 1.000 → 0.000 [" in line


def test_report_shows_the_unlikelihood_terms_positions_first_and_last_only_when_it_is_on(tmp_path):
    report = make_report()
    for entry, repeats in zip(report["loss_curve"], range(40, 0, -3)):
        entry["repeats"] = repeats
    assert "Unlikelihood" not in Path(write_report(tmp_path / "off", report)["md"]).read_text()
    report["config"]["train"] |= {"unlikelihood": 1.0, "unlikelihood_ngram": 4}
    md = Path(write_report(tmp_path / "on", report)["md"]).read_text()
    assert ("- **Unlikelihood:** weight 1.0 on the tokens of the student's own greedy answers in a repeated 4-gram: "
            "40 such tokens at step 1, 7 at step 12 (rank 0's share of the step's answers)\n") in md
    report["config"]["train"] |= {"unlikelihood_teacher": True}
    md = Path(write_report(tmp_path / "scored", report)["md"]).read_text()
    assert "(rank 0's share of the step's answers); the teacher scored those answers and the distillation loss read them too" in md


@pytest.mark.parametrize("tunables, said", [
    (KEEP_FREED, "the trainer's malloc keeps freed memory for reuse"),
    (f"{KEEP_FREED}:glibc.malloc.arena_max=4", "the trainer's malloc keeps freed memory for reuse"),
    ("", "the trainer's malloc returns freed memory to the kernel")])
def test_the_precision_line_says_how_the_trainers_malloc_ran(tmp_path, tunables, said):
    report = {**make_report(), "precision": {"dtype": "bfloat16", "why": "the CPU reports AVX512-BF16", "answer_logits_only": True,
                                             "attention": "eager", "generation": {"teacher": "bfloat16", "student": "bfloat16"},
                                             "malloc": tunables}}
    line = next(line for line in Path(write_report(tmp_path, report)["md"]).read_text().splitlines() if line.startswith("- **Precision:**"))
    assert line.endswith(f"; {said} (train.keep_freed_memory)")
