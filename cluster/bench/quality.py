"""`studyhall bench quality`: every method distills the same student for the same steps and batch
size on the same data, and is evaluated on the same held-out prompts with the same seeds.
With train.warm_start, the warm stage runs once and every method starts from its one student.
One table: ROUGE-L, teacher NLL, repetition and the full-vocabulary KL to the teacher, the greedy
answers' ROUGE-L, repetition and looping share (the teacher's own greedy answers as a row), overall
and in the longest-answer bucket, each trained method's with the 95% interval of its change."""
import json
from pathlib import Path

from studyhall.config import load_config
from train.distill import WARM_DIR, reusable_stage, run_stage, stages
from train.report import GREEDY_COLUMNS, LONGEST_COLUMNS, QUALITY_COLUMNS, write_quality_table
from train.scoring import bucket_start


def _row(name: str, summary: dict, report: dict | None) -> dict:
    """One table row; a trained method's cells carry its run's before/after interval (every run
    starts from the same student with the same evaluation seeds, so "before" is the same for all)."""
    buckets = summary.get("by_length") or {}
    longest = max(buckets, key=bucket_start) if buckets else None
    difference = (report or {}).get("difference") or {}
    greedy_difference = ((report or {}).get("difference_greedy") or {}).get("all") or {}

    def cells(values: dict, intervals: dict, metrics) -> dict:
        out = {}
        for m in metrics:
            entry = intervals.get(m) or {}
            out[m] = {"value": values.get(m), **{k: entry[k] for k in ("diff", "low", "high") if k in entry}}
        return out

    return {
        "method": name, "longest_bucket": longest,
        "all": cells(summary, difference.get("all") or {}, QUALITY_COLUMNS),
        "greedy": cells(summary.get("greedy") or {}, greedy_difference, GREEDY_COLUMNS),
        "longest": cells(buckets.get(longest) or {}, (difference.get("by_length") or {}).get(longest) or {}, LONGEST_COLUMNS),
        "tokens_per_s": report["tokens_per_s"] if report else None,
        "steps": report["steps"] if report else 0,
        "train_tokens": report["train_tokens"] if report else 0,
    }


def run_bench(preset: str, methods: list[str], steps: int | None, out: str, overrides: list[str]) -> dict:
    out_path = Path(out).resolve()
    runs_dir = out_path.parent / (out_path.stem + "_runs")
    base = load_config(preset, [*overrides, *([f"train.steps={steps}"] if steps else [])])
    warm = None
    if base.train.warm_start:  # one warm stage, one warm-started student for every method
        warm_cfg, _ = stages(base, runs_dir / WARM_DIR)
        print(f"== warm start: {warm_cfg.train.method} for {warm_cfg.train.steps} steps", flush=True)
        warm = reusable_stage(runs_dir / WARM_DIR, warm_cfg) or run_stage(warm_cfg, str(runs_dir / WARM_DIR), progress=True)
    rows, reports = [], {}
    for method in methods:
        cfg = load_config(preset, [*overrides, f"train.method={method}", *([f"train.steps={steps}"] if steps else [])])
        if warm:
            cfg = stages(cfg, runs_dir / WARM_DIR)[1]
        print(f"== {method}: {cfg.train.steps} steps x {cfg.train.global_batch} sequences", flush=True)
        reports[method] = run_stage(cfg, str(runs_dir / method), progress=True, warm_start=warm)
        if not rows:  # every run starts from the same student and is evaluated with the same seeds
            rows.append(_row("(teacher, greedy)", {"greedy": reports[method]["teacher_greedy"]["greedy"]}, None))
            rows.append(_row(f"(student before: {_start(warm)})", reports[method]["before"], None))
        rows.append(_row(method, reports[method]["after"], reports[method]))
    result = {"preset": preset, "steps": steps, "methods": methods, "rows": rows,
              "warm_start": {k: warm[k] for k in ("method", "steps", "student_dir")} if warm else None,
              "data": next(iter(reports.values()))["data"] if reports else {},
              "metrics": next(iter(reports.values()))["metrics"] if reports else {},
              "runs": {m: str(runs_dir / m) for m in methods}}
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(result, indent=2))
    write_quality_table(out_path.with_suffix(".md"), rows)
    return result


def _start(warm: dict | None) -> str:
    """The student every method started from, as the table names it."""
    if not warm:
        return "as given, no warm start"
    return f"warm-started, {warm['method']} {warm['steps']} steps"
