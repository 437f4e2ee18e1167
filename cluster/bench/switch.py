"""`studyhall bench switch`: block-speculative SWITCH against the per-token reference, in one run.

Two operating points are calibrated, with lambda fixed, by bisection on tau0 over the same
prompts: `low_point` (the teacher writes ~10% of tokens) and `paper_point` (~50%, as in the SWITCH
paper). Block and per-token SWITCH then run at each point.
"""
import json
import math
import sys
from pathlib import Path

import ray

from actors.models import eos_ids
from actors.pair import start_pair
from actors.switch_controller import SwitchController
from cluster.generate import prepare
from studyhall.config import load_config
from studyhall.engine_settings import engine_settings

TARGETS = {"low_point": 0.10, "paper_point": 0.50}
DEFAULT_PROMPTS = {"tiny": 64, "smol": 16}
DEFAULT_OVERRIDES = {"smol": ["max_new_tokens=96"]}  # keeps the smol bench near 10 minutes on 2 cores
CALIBRATION_STEPS = 7
CALIBRATION_TOLERANCE = 0.025


def run_bench(preset: str, out: str, n_prompts: int | None, overrides: list[str]) -> dict:
    cfg = load_config(preset, ["sample=true", *DEFAULT_OVERRIDES.get(preset, []), *overrides])
    tokenizer, items = prepare(cfg, None, n_prompts or DEFAULT_PROMPTS.get(preset, 32))
    if not ray.is_initialized():
        ray.init(log_to_driver=False)
    teacher, student = start_pair(cfg)
    eos = eos_ids(tokenizer, cfg.teacher.path)
    lam = 1.0 / cfg.switch.max_new_tokens  # tau falls to 1/e of tau0 by the longest answer

    def run(**changes):
        switch = engine_settings(cfg, **changes)
        ray.get([teacher.configure.remote(switch), student.configure.remote(switch)])
        seqs = []
        summary = SwitchController(teacher, student, switch, eos).run(items, on_finish=seqs.append).summary()
        print(f"bench switch: {changes} -> teacher share {summary['teacher_share']:.3f}, "
              f"{summary['tokens_per_s']} tokens/s, {summary['teacher_calls_per_token']} teacher calls/token", file=sys.stderr)
        return summary, seqs

    result = {"preset": preset, "prompts": len(items), "max_new_tokens": cfg.switch.max_new_tokens,
              "batch_size": cfg.switch.batch_size, "pipeline_groups": engine_settings(cfg).pipeline_groups,
              "schedule": "exponential", "lam": lam, "divergence": cfg.switch.divergence}
    warm_up, _ = run(mode="block", tau0=cfg.switch.tau0, lam=lam)  # pays first-call costs; timing not kept
    seen = [(cfg.switch.tau0, warm_up["teacher_share"], None)]
    for point, target in TARGETS.items():
        tau0, _, block = _calibrate(run, target, seen, lam)
        naive, _ = run(mode="per_token", tau0=tau0, lam=lam)
        result[point] = {
            "target_share": target, "tau0": round(tau0, 5), "calibration_shares_so_far": [round(s[1], 4) for s in seen],
            "teacher_share": block["teacher_share"], "naive_teacher_share": naive["teacher_share"],
            "tokens_per_s": block["tokens_per_s"], "naive_tokens_per_s": naive["tokens_per_s"],
            "speedup_vs_naive": round(block["tokens_per_s"] / naive["tokens_per_s"], 3),
            "teacher_calls_per_token": block["teacher_calls_per_token"],
            "naive_teacher_calls_per_token": naive["teacher_calls_per_token"],
            "forwards_per_token": block["forwards_per_token"], "naive_forwards_per_token": naive["forwards_per_token"],
            "tokens": block["tokens"], "naive_tokens": naive["tokens"],
        }
    result.update(_bound(cfg, teacher, student, items))
    low = result["low_point"]
    low["bound_tokens_per_s"] = result["bound_tokens_per_s"]
    low["fraction_of_bound"] = round(low["tokens_per_s"] / result["bound_tokens_per_s"], 3)
    result["greedy_identical"] = _greedy_identical(run, result["paper_point"]["tau0"], lam)
    for actor in (teacher, student):
        ray.kill(actor)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(result, indent=2) + "\n")
    return result


def _calibrate(run, target: float, seen: list, lam: float, steps: int = CALIBRATION_STEPS):
    """Bisection on tau0 (the teacher's share falls as tau0 rises) over the bench's own prompts.

    `seen` holds every (tau0, share, summary) run so far, shared by both points, so each run
    narrows every later bracket. The warm-up run's summary is None: its timing is never kept.
    Returns the closest run: (tau0, share, summary).
    """
    for _ in range(steps):
        timed = [s for s in seen if s[2] is not None]
        best = min(timed, key=lambda s: abs(s[1] - target), default=None)
        if best and abs(best[1] - target) <= CALIBRATION_TOLERANCE:
            return best
        lo = max((s[0] for s in seen if s[1] > target), default=0.0)
        hi = min((s[0] for s in seen if s[1] <= target), default=None)
        guess = 0.5 * (lo + hi) if hi is not None else 2 * lo + 0.1
        summary = run(mode="block", tau0=guess, lam=lam)[0]
        seen.append((guess, summary["teacher_share"], summary))
    return min((s for s in seen if s[2] is not None), key=lambda s: abs(s[1] - target))


def _bound(cfg, teacher, student, items) -> dict:
    """Student-only sampling rate and teacher block-scoring rate, each measured inside its actor
    with the shapes the runs use: a pipeline group's rows, blocks of the starting gamma."""
    rows = math.ceil(cfg.switch.batch_size / engine_settings(cfg).pipeline_groups)
    prompts = [it.token_ids for it in items[:rows]]
    g, rounds = cfg.switch.gamma, max(4, cfg.switch.max_new_tokens // (2 * cfg.switch.gamma))
    student_rate = ray.get(student.throughput.remote(prompts, g, rounds, "draft"))
    teacher_rate = ray.get(teacher.throughput.remote(prompts, g, rounds, "score"))
    return {
        "bound_rows_per_forward": len(prompts), "bound_gamma": g,
        "student_sampling_tokens_per_s": round(student_rate, 2),
        "teacher_scoring_tokens_per_s": round(teacher_rate, 2),
        "bound_tokens_per_s": round(1.0 / (1.0 / student_rate + 1.0 / teacher_rate), 2),
    }


def _greedy_identical(run, tau0: float, lam: float) -> bool:
    _, reference = run(mode="per_token", sample=False, tau0=tau0, lam=lam)
    _, block = run(mode="block", sample=False, tau0=tau0, lam=lam)
    by_index = {s.index: s.token_ids for s in reference}
    return len(block) == len(reference) > 0 and all(by_index[s.index] == s.token_ids for s in block)
