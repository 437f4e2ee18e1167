"""`studyhall eval gkt`: how much of the teacher's answer GKT keeps, and at what latency, as k grows.

Held-out prompts: the last N of the embedded set. Every setting is served by the running app over
HTTP, greedily (temperature 0), 8 requests in flight: k in {0, 4, 8, 16, 32} and the teacher alone
(k = max_tokens). ROUGE-L F1 (rouge-score, stemmed) of each answer against the teacher-alone answer
to the same prompt; mean and p50 request latency; wall time of the whole setting.
"""
import json
from pathlib import Path

import numpy as np
import ray
from ray import serve
from rouge_score import rouge_scorer

from cluster.bench.served_app import free_port, log
from serve.app import start
from serve.load import drive
from studyhall.config import load_config
from studyhall.prompts import embedded_messages

KS = (0, 4, 8, 16, 32)
IN_FLIGHT = 8
DEFAULT_PROMPTS = 32
BUDGET_S = 900.0


def run_eval(preset: str, out: str, n_prompts: int | None, overrides: list[str]) -> dict:
    cfg = load_config(preset, [*overrides, f"serve.port={free_port()}"])
    v = cfg.serve
    max_tokens = v.default_max_tokens
    messages = embedded_messages(n_prompts or DEFAULT_PROMPTS, last=True)
    if not ray.is_initialized():
        ray.init(log_to_driver=False)
    url = start(cfg)
    settings = {"teacher_only": max_tokens, **{f"k={k}": k for k in KS}}  # the reference first
    answers, rows = {}, []
    try:
        drive(f"{url}/v1/chat/completions", [_body(v.model_name, messages[0], max_tokens, 4)] * 2, 2, BUDGET_S)  # warm-up
        for name, k in settings.items():
            run = drive(f"{url}/v1/chat/completions", [_body(v.model_name, m, max_tokens, k) for m in messages],
                        IN_FLIGHT, BUDGET_S)
            answers[name] = [r["choices"][0]["message"]["content"] if r else None for r in run["responses"]]
            done = [r for r in run["responses"] if r]
            latencies = [x for x, r in zip(run["latencies_ms"], run["responses"]) if r]
            rows.append({"setting": name, "k": k, "answered": len(done), "errors": run["errors"],
                         "mean_latency_ms": round(float(np.mean(latencies)), 1) if latencies else None,
                         "p50_latency_ms": run["p50_ms"], "wall_s": run["wall_s"],
                         "teacher_tokens": _mean(r["gkt"]["guidance_tokens"] for r in done),
                         "student_tokens": _mean(r["gkt"]["student_tokens"] for r in done)})
            log(f"eval gkt: {name}: {rows[-1]}")
    finally:
        serve.shutdown()
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    reference = answers["teacher_only"]
    for row in rows:
        pairs = [(ref, got) for ref, got in zip(reference, answers[row["setting"]]) if ref is not None and got is not None]
        row["rougeL_f1_vs_teacher"] = round(float(np.mean([scorer.score(ref, got)["rougeL"].fmeasure for ref, got in pairs])), 4) if pairs else None
    rows = rows[1:] + rows[:1]  # k ascending, the teacher alone last
    result = {"preset": preset, "teacher": v.guide.path, "student": v.complete.path, "prompts": len(messages),
              "held_out": f"the last {len(messages)} embedded prompts", "max_tokens": max_tokens, "temperature": 0.0,
              "in_flight": IN_FLIGHT, "rows": rows,
              "examples": [{"prompt": messages[i][-1]["content"], **{name: answers[name][i] for name in settings}} for i in range(2)]}
    result["table"] = markdown(result)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(result, indent=2) + "\n")
    Path(out).with_suffix(".md").write_text(result["table"] + "\n")
    return result


def _body(model: str, messages: list[dict], max_tokens: int, k: int) -> dict:
    return {"model": model, "messages": messages, "max_tokens": max_tokens, "guidance_tokens": k, "temperature": 0}


def _mean(values):
    values = list(values)
    return round(float(np.mean(values)), 2) if values else None


def markdown(r: dict) -> str:
    lines = [f"GKT guidance length vs quality and latency, preset {r['preset']}: teacher {r['teacher']}, student {r['student']}; "
             f"{r['held_out']}, greedy, max_tokens={r['max_tokens']}, {r['in_flight']} in flight", "",
             "| setting | ROUGE-L F1 vs teacher-only | mean latency ms | p50 ms | wall s | teacher tokens | student tokens | errors |",
             "|---|---|---|---|---|---|---|---|"]
    for row in r["rows"]:
        lines.append(f"| {row['setting']} | {row['rougeL_f1_vs_teacher']} | {row['mean_latency_ms']} | {row['p50_latency_ms']} | "
                     f"{row['wall_s']} | {row['teacher_tokens']} | {row['student_tokens']} | {row['errors']} |")
    return "\n".join(lines)

