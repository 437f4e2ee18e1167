"""`studyhall bench switch`: block-speculative SWITCH against the per-token reference, in one run.

Two operating points are calibrated on the same prompts: `low_point` (the teacher writes ~10% of
tokens) and `paper_point` (~50%, as in the SWITCH paper). tau0 is solved from the (position,
divergence) pairs of the previous run with lambda fixed, then checked by running again.
"""
import dataclasses
import json
import math
import time
from pathlib import Path

import numpy as np
import ray

from actors.pair import start_pair
from actors.switch_controller import SwitchController
from cluster.config import load_config
from cluster.generate import eos_ids, prepare

TARGETS = {"low_point": 0.10, "paper_point": 0.50}
DEFAULT_PROMPTS = {"tiny": 64, "smol": 32}
CALIBRATION_ROUNDS = 3


def run_bench(preset: str, out: str, n_prompts: int | None, overrides: list[str]) -> dict:
    cfg = load_config(preset, ["sample=true", *overrides])
    tokenizer, items = prepare(cfg, None, n_prompts or DEFAULT_PROMPTS.get(preset, 32))
    if not ray.is_initialized():
        ray.init(log_to_driver=False)
    teacher, student = start_pair(cfg)
    eos = eos_ids(tokenizer)
    lam = 1.0 / cfg.switch.max_new_tokens  # tau falls to 1/e of tau0 by the longest answer

    def run(**changes):
        switch = dataclasses.replace(cfg.switch, **changes)
        ray.get([teacher.configure.remote(switch), student.configure.remote(switch)])
        seqs = []
        stats = SwitchController(teacher, student, switch, eos).run(items, on_finish=seqs.append)
        return stats.summary(), seqs

    result = {"preset": preset, "prompts": len(items), "max_new_tokens": cfg.switch.max_new_tokens,
              "batch_size": cfg.switch.batch_size, "pipeline_groups": cfg.switch.pipeline_groups,
              "schedule": "exponential", "lam": lam, "divergence": cfg.switch.divergence}
    run(mode="block", tau0=cfg.switch.tau0, lam=lam)  # warm-up: first calls pay for allocation
    for point, target in TARGETS.items():
        tau0, calibration = _calibrate(run, target, cfg.switch.tau0, lam)
        block, _ = run(mode="block", tau0=tau0, lam=lam)
        naive, _ = run(mode="per_token", tau0=tau0, lam=lam)
        result[point] = {
            "target_share": target, "tau0": round(tau0, 5), "calibration_shares": calibration,
            "teacher_share": block["teacher_share"], "naive_teacher_share": naive["teacher_share"],
            "tokens_per_s": block["tokens_per_s"], "naive_tokens_per_s": naive["tokens_per_s"],
            "speedup_vs_naive": round(block["tokens_per_s"] / naive["tokens_per_s"], 3),
            "teacher_calls_per_token": block["teacher_calls_per_token"],
            "naive_teacher_calls_per_token": naive["teacher_calls_per_token"],
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


def _calibrate(run, target: float, tau0: float, lam: float):
    """Fixed-point search: pick the tau0 that would give `target` on the last run's divergences."""
    shares = []
    for _ in range(CALIBRATION_ROUNDS):
        summary, seqs = run(mode="block", tau0=tau0, lam=lam)
        shares.append(summary["teacher_share"])
        if abs(summary["teacher_share"] - target) < 0.02:
            break
        t = np.array([i for s in seqs for i in range(len(s.divergence))], dtype=float)
        d = np.array([x for s in seqs for x in s.divergence])
        scaled = d * np.exp(lam * t)  # D_t > tau0 * exp(-lam t)  <=>  D_t * exp(lam t) > tau0
        tau0 = float(np.quantile(scaled, 1.0 - target))
    return tau0, shares


def _bound(cfg, teacher, student, items) -> dict:
    """Student-only sampling rate and teacher block-scoring rate, each measured inside its actor."""
    prompts = [it.token_ids for it in items[: cfg.switch.batch_size]]
    g, rounds = cfg.switch.gamma, max(4, cfg.switch.max_new_tokens // (2 * cfg.switch.gamma))
    student_rate = ray.get(student.throughput.remote(prompts, g, rounds, "draft"))
    teacher_rate = ray.get(teacher.throughput.remote(prompts, g, rounds, "score"))
    return {
        "student_sampling_tokens_per_s": round(student_rate, 2),
        "teacher_scoring_tokens_per_s": round(teacher_rate, 2),
        "bound_tokens_per_s": round(1.0 / (1.0 / student_rate + 1.0 / teacher_rate), 2),
    }


def _greedy_identical(run, tau0: float, lam: float) -> bool:
    _, reference = run(mode="per_token", sample=False, tau0=tau0, lam=lam)
    _, block = run(mode="block", sample=False, tau0=tau0, lam=lam)
    by_index = {s.index: s.token_ids for s in reference}
    return len(block) == len(reference) > 0 and all(by_index[s.index] == s.token_ids for s in block)
