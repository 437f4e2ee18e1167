"""`studyhall bench gkt`: GKT serving over HTTP against the teacher alone and the student alone.

1. In-process, before Serve starts, on the bench's own prompts and at the batch sizes the server
   will run: the time for the teacher to write whole answers, and for the teacher to write k tokens
   and the student the rest. Served, the two models are separate replicas on their own CPUs (or
   GPUs), so GKT is a two-stage pipeline and its slower stage bounds its throughput:
   `ideal_speedup` = teacher-alone time / max(teacher part, student part). (The sum of the parts
   would bound a single device taking turns; on two it is no bound, and the measured fraction
   went above 1.) The per-token costs of both models come from the same runs.
2. Over HTTP, on 127.0.0.1: the app is started, and closed-loop clients keep 1, 8, 32 and 64
   requests in flight, for each of three modes on the same prompts. The modes are GKT at the
   configured k, the teacher alone (k = max_tokens), and the student alone (k = 0).
   `speedup_vs_teacher` = GKT rps / teacher-alone rps.
   Each model replica's counters (`stats`) give its decode forwards and the rows in them: the mean
   rows per forward, and the mean requests present (decoding or queued) at each step.

Every request asks for exactly max_tokens tokens (`ignore_eos`), so all modes do the same work.
"""
import json
import time
from pathlib import Path

import ray
import torch
from ray import serve

from actors.models import load_model, load_tokenizer, pick_device
from cluster.bench.served_app import free_port, log, replica_stats, reset_prefix_caches
from serve.app import start
from serve.decoding import RunningBatch, Sampling, prefix_cache
from serve.load import drive
from studyhall.config import ConfigError, load_config
from studyhall.prompts import embedded_messages, render

CONCURRENCY = (1, 8, 32, 64)
DEFAULTS = {"tiny": {"max_tokens": 32, "budget_s": 60.0}, "smol": {"max_tokens": 48, "budget_s": 120.0}}
IDEAL_ROUNDS = 2  # batches per size timed in-process


def run_bench(preset: str, out: str, requests: int | None, overrides: list[str], in_flight: tuple = CONCURRENCY) -> dict:
    if not in_flight or any(c < 1 for c in in_flight):
        raise ConfigError(f"--in-flight {','.join(map(str, in_flight))}: every level must be >= 1")
    defaults = DEFAULTS.get(preset, DEFAULTS["tiny"])
    cfg = load_config(preset, [f"serve.default_max_tokens={defaults['max_tokens']}", *overrides, f"serve.port={free_port()}"])
    v = cfg.serve
    max_tokens, k = v.default_max_tokens, min(v.guidance_tokens, v.default_max_tokens)
    messages = embedded_messages(max(in_flight) * 2)
    batch_sizes = sorted({min(c, v.guide.max_batch_size, v.complete.max_batch_size) for c in in_flight})
    log(f"bench gkt: in-process ideal at batch sizes {batch_sizes} (k={k}, max_tokens={max_tokens})")
    side = load_side(cfg)
    ideal = {b: measure_ideal(side, messages, b, max_tokens, k) for b in batch_sizes}
    del side

    if not ray.is_initialized():
        ray.init(log_to_driver=False)
    url = start(cfg)
    log(f"bench gkt: serving at {url}")
    modes = {"gkt": k, "teacher": max_tokens, "student": 0}
    result = {"preset": preset, "overrides": list(overrides), "teacher": v.guide.path, "student": v.complete.path, "k": k,
              "max_tokens": max_tokens, "prefill_ahead": v.prefill_ahead,
              "prefix_cache_tokens": {"teacher": v.guide.prefix_cache_tokens, "student": v.complete.prefix_cache_tokens},
              "max_batch_size": {"teacher": v.guide.max_batch_size, "student": v.complete.max_batch_size},
              "ms_per_step": {str(b): ideal[b]["ms_per_step"] for b in batch_sizes},
              "teacher_student_cost_ratio": {str(b): ideal[b]["cost_ratio"] for b in batch_sizes},
              "ideal": {str(b): {key: val for key, val in ideal[b].items() if key not in ("ms_per_step", "cost_ratio")}
                        for b in batch_sizes},
              "modes": {m: {} for m in modes}, "speedup_vs_teacher": {}, "ideal_speedup": {}, "fraction_of_ideal": {}}
    try:
        for mode, guidance in modes.items():  # warm-up: first calls pay one-off costs
            drive(f"{url}/v1/chat/completions", [_body(v.model_name, messages[i], max_tokens, guidance) for i in range(2)], 2, 60)
        for concurrency in in_flight:
            n = requests or max(8, 2 * concurrency)
            for mode, guidance in modes.items():
                bodies = [_body(v.model_name, messages[i % len(messages)], max_tokens, guidance) for i in range(n)]
                reset_prefix_caches()  # a cold cache: no reuse of an earlier run's prompts
                before = replica_stats()
                run = drive(f"{url}/v1/chat/completions", bodies, concurrency, defaults["budget_s"])
                after = replica_stats()
                answered = [r for r in run.pop("responses") if r]
                run.pop("latencies_ms")
                run["teacher_tokens_per_request"] = _mean(r["gkt"]["guidance_tokens"] for r in answered)
                for role, spec in (("teacher", v.guide), ("student", v.complete)):
                    run[role] = batching(before[role], after[role], concurrency, spec.max_batch_size)
                    for key in ("prefill_tokens", "prefill_ahead_tokens"):  # all prefilled; the part run ahead of the request
                        run[role][f"{key}_per_request"] = round((after[role][key] - before[role][key]) / max(1, run["ok"]), 1)
                result["modes"][mode][str(concurrency)] = run
                log(f"bench gkt: {mode:8s} x{concurrency:<2d} {run['rps']:7.3f} rps  p50 {run['p50_ms']} ms  "
                    f"p99 {run['p99_ms']} ms  errors {run['errors']}  rows/forward teacher "
                    f"{run['teacher']['mean_rows_per_forward']} student {run['student']['mean_rows_per_forward']}  prefill tokens/request "
                    f"teacher {run['teacher']['prefill_tokens_per_request']} student {run['student']['prefill_tokens_per_request']}")
            c = str(concurrency)
            b = min(concurrency, v.guide.max_batch_size, v.complete.max_batch_size)
            teacher_rps = result["modes"]["teacher"][c]["rps"]
            result["speedup_vs_teacher"][c] = round(result["modes"]["gkt"][c]["rps"] / teacher_rps, 3) if teacher_rps else None
            result["ideal_speedup"][c] = ideal[b]["ideal_speedup"]
            if result["speedup_vs_teacher"][c] is not None:
                result["fraction_of_ideal"][c] = round(result["speedup_vs_teacher"][c] / ideal[b]["ideal_speedup"], 3)
    finally:
        serve.shutdown()
    result["goal_at_8_in_flight"] = {"target_fraction": 0.85, "measured_fraction": result["fraction_of_ideal"].get("8"),
                                     "met": (result["fraction_of_ideal"].get("8") or 0) >= 0.85} if 8 in in_flight else None
    teacher_alone = {c: run["teacher"] for c, run in result["modes"]["teacher"].items()}
    result["goal_teacher_rows"] = {  # in teacher-alone mode every request in flight is at the teacher
        c: {"mean_rows_per_forward": t["mean_rows_per_forward"], "target": t["target_rows"],
            "met": t["mean_rows_per_forward"] >= t["target_rows"]} for c, t in teacher_alone.items()}
    result["table"] = markdown(result)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(result, indent=2) + "\n")
    Path(out).with_suffix(".md").write_text(result["table"] + "\n")
    return result


def batching(before: dict, after: dict, in_flight: int, max_batch_size: int) -> dict:
    """One model's batching over a run, from its counters before and after: mean rows per decode forward,
    the mean requests present at a step (decoding or queued), and the goal 0.75 x min(in flight, max batch)."""
    forwards = after["forwards"] - before["forwards"]
    rows = after["rows_forwarded"] - before["rows_forwarded"]
    present = rows + after["waiting_at_step"] - before["waiting_at_step"]
    return {"forwards": forwards, "prefills": after["prefills"] - before["prefills"],
            "mean_rows_per_forward": round(rows / forwards, 3) if forwards else 0.0,
            "mean_present_per_step": round(present / forwards, 3) if forwards else 0.0,
            "target_rows": 0.75 * min(in_flight, max_batch_size)}


def load_side(cfg) -> dict:
    """Both served models in this process: role -> (model, tokenizer, device, torch threads of its deployment)."""
    side = {}
    for role, spec in (("teacher", cfg.serve.guide), ("student", cfg.serve.complete)):
        device = pick_device(spec)
        side[role] = (load_model(spec, device), load_tokenizer(spec.path, spec.trust_remote_code), device,
                      max(1, round(spec.num_cpus)), spec.prefix_cache_tokens)
    return side


@torch.no_grad()
def measure_ideal(side: dict, messages: list[list[dict]], batch: int, max_tokens: int, k: int) -> dict:
    """Teacher-alone time and GKT's two parts (k teacher tokens, then the student), in this process,
    with the deployments' thread counts, on the first IDEAL_ROUNDS batches of the bench's prompts."""
    chunks = [messages[i * batch:(i + 1) * batch] for i in range(IDEAL_ROUNDS)]

    def generate(role: str, texts: list[str], n: int) -> tuple[list[str], float]:
        model, tokenizer, device, threads, _ = side[role]
        torch.set_num_threads(threads)
        prompts = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
        started = time.perf_counter()
        if prefixes[role] is not None:
            prefixes[role].clear()  # the chat template's opening only: these prompts ran before
        decoder = RunningBatch(model, device, None, prefixes[role])
        decoder.join([(row, prompt, Sampling()) for row, prompt in enumerate(prompts)])
        ids = [[] for _ in texts]
        for _ in range(n):
            for row, token in decoder.step().items():
                ids[row].append(token)
        seconds = time.perf_counter() - started
        return [tokenizer.decode(i, skip_special_tokens=True) for i in ids], seconds

    def rendered(role, chunk, suffixes=None):
        tokenizer = side[role][1]
        return [render(tokenizer, m) + (suffixes[i] if suffixes else "") for i, m in enumerate(chunk)]

    prefixes = {role: prefix_cache(model, device, tokenizer, capacity) for role, (model, tokenizer, device, _, capacity) in side.items()}
    generate("teacher", rendered("teacher", chunks[0][:1]), 2)  # warm-up: first forwards pay one-off costs
    generate("student", rendered("student", chunks[0][:1]), 2)
    teacher_s = gkt_s = teacher_part_s = student_part_s = 0.0
    for chunk in chunks:
        teacher_s += generate("teacher", rendered("teacher", chunk), max_tokens)[1]
        guidance, t_k = generate("teacher", rendered("teacher", chunk), k) if k else ([""] * len(chunk), 0.0)
        _, t_rest = generate("student", rendered("student", chunk, guidance), max_tokens - k) if k < max_tokens else ([], 0.0)
        teacher_part_s, student_part_s = teacher_part_s + t_k, student_part_s + t_rest
        gkt_s += t_k + t_rest
    student_alone_s = sum(generate("student", rendered("student", chunk), max_tokens)[1] for chunk in chunks)
    per_step = {"teacher": round(1000 * teacher_s / (IDEAL_ROUNDS * max_tokens), 3),
                 "student": round(1000 * student_alone_s / (IDEAL_ROUNDS * max_tokens), 3)}
    return {"batch": batch, "teacher_alone_s": round(teacher_s, 3), "gkt_s": round(gkt_s, 3),
            "gkt_teacher_part_s": round(teacher_part_s, 3), "gkt_student_part_s": round(student_part_s, 3),
            "student_alone_s": round(student_alone_s, 3),
            "ideal_speedup": round(teacher_s / max(teacher_part_s, student_part_s), 3),  # the slower stage bounds a pipeline
            "ideal_speedup_one_device": round(teacher_s / gkt_s, 3),
            "ms_per_step": per_step, "cost_ratio": round(per_step["teacher"] / per_step["student"], 2)}


def markdown(r: dict) -> str:
    lines = [f"GKT bench, preset {r['preset']}: teacher {r['teacher']}, student {r['student']}, "
             f"k={r['k']}, max_tokens={r['max_tokens']} (every answer exactly max_tokens)", "",
             "| mode | in flight | rps | p50 ms | p99 ms | errors | requests | teacher rows/forward | student rows/forward "
             "| prefill tokens/request (teacher; student) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for mode, runs in r["modes"].items():
        for c, run in runs.items():
            lines.append(f"| {mode} | {c} | {run['rps']} | {run['p50_ms']} | {run['p99_ms']} | {run['errors']} | {run['sent']} "
                         f"| {run['teacher']['mean_rows_per_forward']} | {run['student']['mean_rows_per_forward']} "
                         f"| {run['teacher']['prefill_tokens_per_request']}; {run['student']['prefill_tokens_per_request']} |")
    lines += ["", "| in flight | speedup_vs_teacher | ideal_speedup | fraction of ideal |", "|---|---|---|---|"]
    for c in r["speedup_vs_teacher"]:
        lines.append(f"| {c} | {r['speedup_vs_teacher'][c]} | {r['ideal_speedup'][c]} | {r['fraction_of_ideal'].get(c)} |")
    lines += ["", "| batch | teacher ms per step | student ms per step | cost ratio |", "|---|---|---|---|"]
    for b, cost in r["ms_per_step"].items():
        lines.append(f"| {b} | {cost['teacher']} | {cost['student']} | {r['teacher_student_cost_ratio'][b]} |")
    return "\n".join(lines)


def _body(model: str, messages: list[dict], max_tokens: int, k: int) -> dict:
    return {"model": model, "messages": messages, "max_tokens": max_tokens, "guidance_tokens": k, "ignore_eos": True}


def _mean(values) -> float | None:
    values = list(values)
    return round(sum(values) / len(values), 3) if values else None
