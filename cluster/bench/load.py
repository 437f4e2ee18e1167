"""`studyhall bench load`: many clients on the GKT app's OpenAI endpoint, as a user's code would call it.

The app starts on 127.0.0.1 (as `studyhall serve` starts it; or `--url` names a server already up),
then `concurrency` clients of the official async `openai` client (AsyncOpenAI) each send their next
chat request as soon as their last one is answered (closed loop), until `requests` are done. Prompts
are the embedded ones, in turn.
Answers end where the models end them (EOS, or the server's default max_tokens): tokens/s counts the
tokens the server reports in `usage`.

The JSON: the settings; errors by type; latency p50/p90/p99 (to the last byte); with `--stream`, time to
first token (the first chunk with text: the teacher's guidance, as GKT streams it) p50/p90/p99; requests/s
and tokens/s over the wall time from the first request sent to the last answer.
"""
import asyncio
import json
import os
import sys
import time
from pathlib import Path

import ray
from ray import serve
from tqdm import tqdm

from cluster.bench.chat_requests import async_client, one_chat, percentiles, served_model
from cluster.bench.served_app import free_port
from serve.app import start
from studyhall.config import ConfigError, load_config
from studyhall.prompts import embedded_messages

WARMUP = 2  # requests before timing: first calls pay one-off costs


def run_bench(preset: str, out: str, requests: int, concurrency: int, stream: bool, overrides: list[str],
              url: str | None = None, progress: bool = True) -> dict:
    """Start the app (unless `url` names one that is up), load it, write and return the JSON."""
    if requests < 1:
        raise ConfigError(f"--requests {requests}: must be >= 1")
    if concurrency < 1:
        raise ConfigError(f"--concurrency {concurrency}: must be >= 1")
    cfg = load_config(preset, [*overrides, f"serve.port={free_port()}"])
    v = cfg.serve
    settings = {"url": url, "requests": requests, "concurrency": concurrency, "stream": stream, "warmup_requests": WARMUP}
    if url is None:  # the server is ours: its settings are the preset's
        settings.update(preset=preset, overrides=list(overrides), max_tokens=v.default_max_tokens,
                        max_batch_size={"teacher": v.guide.max_batch_size, "student": v.complete.max_batch_size})
        if not ray.is_initialized():
            ray.init(log_to_driver=False)
        base = start(cfg)
    else:
        base = url.rstrip("/").removesuffix("/v1")
    print(f"bench load: {base}; {requests} requests, {concurrency} in flight, stream={stream}", file=sys.stderr, flush=True)
    try:
        records, wall_s, served = asyncio.run(_drive(f"{base}/v1", os.environ.get(v.api_key_env) or "none", embedded_messages(),
                                                     requests, concurrency, stream, progress))
    finally:
        if url is None:
            serve.shutdown()
    settings.update(served)
    result = summarize(records, wall_s, settings)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(result, indent=2) + "\n")
    return result


async def _drive(base_url: str, key: str, messages: list, requests: int, concurrency: int, stream: bool,
                 progress: bool) -> tuple[list[dict], float, dict]:
    """Every request's record, the wall time of the timed part, and what the server says it serves."""
    client = async_client(base_url, key)
    try:
        served = await served_model(client, base_url)
        model = served["model"]
        await asyncio.gather(*(one_chat(client, model, messages[i % len(messages)], stream) for i in range(WARMUP)))
        records: list[dict | None] = [None] * requests
        queue = iter(range(requests))
        with tqdm(total=requests, desc="bench load", unit="req", disable=not progress, file=sys.stderr) as bar:
            async def worker():
                for i in queue:  # one shared iterator: each request is taken once
                    records[i] = await one_chat(client, model, messages[i % len(messages)], stream)
                    bar.update(1)
                    if records[i]["error"]:
                        bar.set_postfix(errors=sum(1 for r in records if r and r["error"]))

            started = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(min(concurrency, requests))))
            wall_s = time.perf_counter() - started
    finally:
        await client.close()
    return records, wall_s, served


def summarize(records: list[dict], wall_s: float, settings: dict) -> dict:
    """The bench's JSON from the per-request records (no Ray, no server: tested on its own)."""
    ok = [r for r in records if not r["error"]]
    errors: dict[str, int] = {}
    for r in records:
        if r["error"]:
            errors[r["error"]] = errors.get(r["error"], 0) + 1
    finish: dict[str, int] = {}
    for r in ok:
        finish[r["finish_reason"]] = finish.get(r["finish_reason"], 0) + 1
    tokens = sum(r["tokens"] for r in ok)
    return {
        "settings": settings,
        "sent": len(records), "ok": len(ok), "errors": len(records) - len(ok), "errors_by_type": errors,
        "wall_s": round(wall_s, 3),
        "requests_per_s": round(len(ok) / wall_s, 3) if wall_s > 0 else None,
        "completion_tokens": tokens,
        "tokens_per_s": round(tokens / wall_s, 1) if wall_s > 0 else None,
        "latency_ms": percentiles([r["latency_s"] for r in ok]),
        "ttft_ms": percentiles([r["ttft_s"] for r in ok if r["ttft_s"] is not None]) if settings["stream"] else None,
        "finish_reasons": finish,
    }
