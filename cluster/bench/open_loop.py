"""`studyhall bench load --rates R1,R2,...`: open-loop load, as traffic arrives, not as clients wait.

Requests arrive as a Poisson process at each set rate (seeded; every mode gets the same arrival
times at a rate), whether or not the
earlier ones are answered, so a server that falls behind builds a queue instead of slowing its
clients down (a closed loop hides that, and moves its clients in a convoy). Each request is a chat
on the next embedded prompt, streamed; answers end where the models end them (EOS, or max_tokens),
so their lengths come from the prompts. For each mode (GKT at the server's k, the teacher alone,
the student alone) and rate: requests/s answered, p50/p99 latency and time to first token, how far
the sends lagged their schedule, and, when the server is ours, each model's prefill tokens per
request. `highest_rate_held` per mode is the highest rate with no errors, p99 latency within
`--p99-bound-s`, and answers at 80% of the sent rate or more.

Every run takes prompts no earlier run sent, and, when the server is ours, starts from a cold prefix
cache (the pinned chat template only), so a run does not reuse an earlier run's prompts.
"""
import asyncio
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import ray
from ray import serve

from cluster.bench.chat_requests import async_client, one_chat, served_model
from cluster.bench.load import summarize
from cluster.bench.served_app import free_port, replica_stats, reset_prefix_caches
from serve.app import start
from studyhall.config import ConfigError, load_config
from studyhall.prompts import embedded_messages

MODES = ("gkt", "teacher", "student")
WARMUP = 2


def poisson_arrivals(rate: float, count: int, seed: int) -> np.ndarray:
    """Send times in seconds from the start: a Poisson process at `rate` given `count` arrivals in
    count / rate seconds, i.e. sorted uniform draws over that span. Gaps are exponential-like (bursts
    and lulls) but a short run offers exactly the set rate, not a sample's 20% more or less."""
    return np.sort(np.random.default_rng(seed).uniform(0.0, count / rate, size=count))


async def drive_open_loop(client, model: str, messages: list, arrivals: np.ndarray, extra: dict) -> tuple[list[dict], float]:
    """Send messages[i] at arrivals[i] (streamed), each in its own task; every record gains its
    scheduled and actual send time. Returns the records and the time from the start to the last answer."""
    async def timed(i: int, sent_s: float) -> dict:
        record = await one_chat(client, model, messages[i % len(messages)], stream=True, extra=extra)
        return {**record, "scheduled_s": float(arrivals[i]), "sent_s": sent_s}

    started = time.perf_counter()
    tasks = []
    for i, at in enumerate(arrivals):
        delay = started + at - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(timed(i, time.perf_counter() - started)))
    records = await asyncio.gather(*tasks)
    return records, max(r["sent_s"] + r["latency_s"] for r in records)


def summarize_rate(records: list[dict], wall_s: float, rate: float) -> dict:
    """The closed loop's figures plus the offered and sent rates and the send lag (no Ray, no server)."""
    result = summarize(records, wall_s, {"stream": True})
    result.pop("settings")
    sent = sorted(r["sent_s"] for r in records)
    lag_ms = [1000 * (r["sent_s"] - r["scheduled_s"]) for r in records]
    return {"rate": rate, **result,
            "sent_rate": round((len(sent) - 1) / (sent[-1] - sent[0]), 3) if len(sent) > 1 and sent[-1] > sent[0] else None,
            "send_lag_ms": {"p50": round(float(np.percentile(lag_ms, 50)), 1), "max": round(max(lag_ms), 1)}}


KEEP_UP = 0.8  # answered / sent rate over a run (first send to last answer, so a short run's drain counts against it)


def held(run: dict, p99_bound_s: float) -> bool:
    """The server kept up at this rate: no errors, p99 latency within the bound, and answers at least
    KEEP_UP of the sent rate (in a short run a queue that grows without end can still stay under the bound)."""
    return (run["errors"] == 0 and run["latency_ms"] is not None and run["latency_ms"]["p99"] <= 1000 * p99_bound_s
            and run["sent_rate"] is not None and run["requests_per_s"] >= KEEP_UP * run["sent_rate"])


def run_open_loop(preset: str, out: str, rates: list[float], requests: int, modes: list[str], p99_bound_s: float,
                  overrides: list[str], url: str | None = None, max_tokens: int | None = None, seed: int = 0) -> dict:
    """Start the app (unless `url` names one), run every mode at every rate, write and return the JSON."""
    if not rates or any(not r > 0 for r in rates):
        raise ConfigError(f"--rates {','.join(map(str, rates))}: every rate must be > 0 requests/s")
    if requests < 1:
        raise ConfigError(f"--requests {requests}: must be >= 1")
    if bad := [m for m in modes if m not in MODES]:
        raise ConfigError(f"--modes {','.join(modes)}: {', '.join(bad)} is not one of {', '.join(MODES)}")
    cfg = load_config(preset, [*overrides, f"serve.port={free_port()}"])
    v = cfg.serve
    max_tokens = max_tokens or v.default_max_tokens
    ours = url is None
    settings = {"url": url, "rates": rates, "requests_per_rate": requests, "modes": modes, "max_tokens": max_tokens,
                "p99_bound_s": p99_bound_s, "seed": seed, "stream": True}
    if ours:
        settings.update(preset=preset, overrides=list(overrides), guidance_tokens=v.guidance_tokens,
                        prefix_cache_tokens={"teacher": v.guide.prefix_cache_tokens, "student": v.complete.prefix_cache_tokens},
                        prefill_ahead=v.prefill_ahead)
        if not ray.is_initialized():
            ray.init(log_to_driver=False)
        base = start(cfg)
    else:
        base = url.rstrip("/").removesuffix("/v1")
    messages = embedded_messages()
    if len(rates) * len(modes) * requests + WARMUP > len(messages):
        print(f"bench load: {len(rates) * len(modes) * requests} requests over {len(messages)} prompts: later runs repeat "
              "prompts (a cold prefix cache each run still)", file=sys.stderr, flush=True)
    result = {"settings": settings, "modes": {m: {} for m in modes}, "highest_rate_held": {}}
    try:
        result["settings"].update(asyncio.run(_runs(f"{base}/v1", os.environ.get(v.api_key_env) or "none", messages,
                                                    rates, requests, modes, max_tokens, seed, ours, result)))
    finally:
        if ours:
            serve.shutdown()
    for mode, runs in result["modes"].items():
        kept = [r["rate"] for r in runs.values() if held(r, p99_bound_s)]
        result["highest_rate_held"][mode] = max(kept) if kept else None
    result["table"] = markdown(result)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(result, indent=2) + "\n")
    Path(out).with_suffix(".md").write_text(result["table"] + "\n")
    return result


async def _runs(base_url, key, messages, rates, requests, modes, max_tokens, seed, ours, result) -> dict:
    client = async_client(base_url, key)
    try:
        served = await served_model(client, base_url)
        model = served["model"]
        extras = {"gkt": {"max_tokens": max_tokens},
                  "teacher": {"max_tokens": max_tokens, "extra_body": {"guidance_tokens": max_tokens}},
                  "student": {"max_tokens": max_tokens, "extra_body": {"guidance_tokens": 0}}}
        await asyncio.gather(*(one_chat(client, model, messages[-1 - i], True, extras[m]) for m in modes for i in range(WARMUP)))
        run = 0
        for mode in modes:
            for r, rate in enumerate(rates):
                prompts = [messages[(run * requests + i) % len(messages)] for i in range(requests)]
                run += 1
                if ours:  # Serve's blocking handle calls, off this event loop
                    await asyncio.to_thread(reset_prefix_caches)
                    before = await asyncio.to_thread(replica_stats)
                records, wall_s = await drive_open_loop(client, model, prompts, poisson_arrivals(rate, requests, seed + r), extras[mode])
                summary = summarize_rate(records, wall_s, rate)
                if ours:
                    summary.update(prefill_per_request(before, await asyncio.to_thread(replica_stats), requests))
                result["modes"][mode][str(rate)] = summary
                lat, ttft = summary["latency_ms"] or {}, summary["ttft_ms"] or {}
                print(f"bench load: {mode:8s} {rate:6.2f}/s  {summary['requests_per_s']} rps  p50 {lat.get('p50')} p99 {lat.get('p99')} ms  "
                      f"ttft p50 {ttft.get('p50')} p99 {ttft.get('p99')} ms  errors {summary['errors']}", file=sys.stderr, flush=True)
    finally:
        await client.close()
    return served


def prefill_per_request(before: dict, after: dict, requests: int) -> dict:
    """Each model's prompt tokens prefilled and taken from its prefix cache, per request, over one run."""
    def grew(role, key, cache=False):
        b, a = before[role], after[role]
        if cache:
            return (a["prefix_cache"] or {}).get(key, 0) - (b["prefix_cache"] or {}).get(key, 0)
        return a[key] - b[key]

    return {"prefill_tokens_per_request": {role: round(grew(role, "prefill_tokens") / requests, 1) for role in before},
            "prefill_ahead_tokens_per_request": {role: round(grew(role, "prefill_ahead_tokens") / requests, 1) for role in before},
            "prefix_tokens_reused_per_request": {role: round(grew(role, "tokens_reused", cache=True) / requests, 1) for role in before}}


def markdown(r: dict) -> str:
    s = r["settings"]
    lines = [f"Open-loop load: Poisson arrivals, {s['requests_per_rate']} streamed chat requests per rate, "
             f"max_tokens={s['max_tokens']}, p99 bound {s['p99_bound_s']} s", "",
             "| mode | rate /s | sent /s | answered /s | p50 ms | p99 ms | TTFT p50 ms | TTFT p99 ms | errors | prefill tokens/request (teacher; student) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for mode, runs in r["modes"].items():
        for rate, run in runs.items():
            lat, ttft = run["latency_ms"] or {}, run["ttft_ms"] or {}
            prefill = run.get("prefill_tokens_per_request")
            prefill = f"{prefill['teacher']}; {prefill['student']}" if prefill else "-"
            lines.append(f"| {mode} | {rate} | {run['sent_rate']} | {run['requests_per_s']} | {lat.get('p50')} | {lat.get('p99')} "
                         f"| {ttft.get('p50')} | {ttft.get('p99')} | {run['errors']} "
                         f"| {prefill} |")
    lines += ["", "Highest rate held (no errors, p99 within the bound, answered >= 80% of the sent rate): " +
              ", ".join(f"{m} {rate if rate is not None else 'none'}" for m, rate in r["highest_rate_held"].items())]
    return "\n".join(lines)
