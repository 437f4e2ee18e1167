"""One chat request through the official async openai client, as a user's code sends it, and the
percentiles the load benches report. Shared by the closed-loop and open-loop drivers."""
import time

import numpy as np
import openai

from studyhall.config import ConfigError

REQUEST_TIMEOUT_S = 600.0


async def served_model(client: openai.AsyncOpenAI, base_url: str) -> dict:
    """What the server says it serves: {model, teacher, student, default_guidance_tokens}; one line if nothing answers."""
    try:
        card = (await client.models.list()).data[0]
    except openai.APIError as err:  # nothing there, or not this API, or a wrong key: say so in one line
        raise ConfigError(f"{base_url}/models: {type(err).__name__}: {err}") from None
    return {"model": card.id, **{k: (card.model_extra or {}).get(k) for k in ("teacher", "student", "default_guidance_tokens")}}


def async_client(base_url: str, key: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=base_url, api_key=key, max_retries=0, timeout=REQUEST_TIMEOUT_S)


async def one_chat(client: openai.AsyncOpenAI, model: str, messages: list[dict], stream: bool, extra: dict | None = None) -> dict:
    """One chat request: {error (type name or None), latency_s, ttft_s (streams), tokens, finish_reason}.
    `extra` goes into the request as it is (e.g. max_tokens, or guidance_tokens in extra_body)."""
    record = {"error": None, "latency_s": None, "ttft_s": None, "tokens": 0, "finish_reason": None}
    extra = extra or {}
    started = time.perf_counter()
    try:
        if stream:
            chunks = await client.chat.completions.create(model=model, messages=messages, stream=True,
                                                          stream_options={"include_usage": True}, **extra)
            async for chunk in chunks:
                if chunk.choices and record["ttft_s"] is None and chunk.choices[0].delta.content:
                    record["ttft_s"] = time.perf_counter() - started
                if chunk.choices and chunk.choices[0].finish_reason:
                    record["finish_reason"] = chunk.choices[0].finish_reason
                if chunk.usage:
                    record["tokens"] = chunk.usage.completion_tokens
            if record["finish_reason"] is None:
                record["error"] = "IncompleteStream"  # ended without a finish_reason: the answer was cut off
        else:
            answer = await client.chat.completions.create(model=model, messages=messages, **extra)
            record["tokens"], record["finish_reason"] = answer.usage.completion_tokens, answer.choices[0].finish_reason
    except openai.APIStatusError as err:
        record["error"] = f"{type(err).__name__} ({err.status_code})"
    except openai.APIError as err:  # timeouts, refused connections, an error event inside a stream
        record["error"] = type(err).__name__
    record["latency_s"] = time.perf_counter() - started
    return record


def percentiles(seconds: list[float]) -> dict | None:
    """p50/p90/p99, mean and max in milliseconds, and the count."""
    if not seconds:
        return None
    ms = 1000 * np.asarray(seconds)
    return {"p50": round(float(np.percentile(ms, 50)), 1), "p90": round(float(np.percentile(ms, 90)), 1),
            "p99": round(float(np.percentile(ms, 99)), 1), "mean": round(float(ms.mean()), 1), "max": round(float(ms.max()), 1),
            "n": len(ms)}
