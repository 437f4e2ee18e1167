"""The open-loop driver on a stub OpenAI server (a real aiohttp server on 127.0.0.1): requests leave
on their Poisson schedule whether or not earlier ones are answered, and the figures add up."""
import asyncio
import json
import time

import numpy as np
import pytest
from aiohttp import web

from cluster.bench.chat_requests import async_client
from cluster.bench.open_loop import drive_open_loop, held, poisson_arrivals, summarize_rate

pytestmark = pytest.mark.timeout(60)
ANSWER_S = 0.3  # each stub answer takes this long: at 25/s several are in flight at once


def _event(payload: dict) -> bytes:
    return f"data: {json.dumps(payload)}\n\n".encode()


async def _stub(arrivals: list[float], in_flight: list[int]) -> web.AppRunner:
    async def models(request):
        return web.json_response({"object": "list", "data": [{"id": "stub", "object": "model", "created": 0, "owned_by": "test"}]})

    async def chat(request):
        arrivals.append(time.perf_counter())
        in_flight.append(in_flight[-1] + 1 if in_flight else 1)
        body = await request.json()
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        base = {"id": "c", "object": "chat.completion.chunk", "created": 0, "model": body["model"]}
        await response.write(_event({**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": "hi"}, "finish_reason": None}]}))
        await asyncio.sleep(ANSWER_S)
        await response.write(_event({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}))
        await response.write(_event({**base, "choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}}))
        await response.write(b"data: [DONE]\n\n")
        in_flight.append(in_flight[-1] - 1)
        return response

    app = web.Application()
    app.add_routes([web.get("/v1/models", models), web.post("/v1/chat/completions", chat)])
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner


def test_requests_arrive_on_the_poisson_schedule_while_others_are_in_flight():
    rate, count = 25.0, 50
    schedule = poisson_arrivals(rate, count, seed=3)
    arrivals, in_flight = [], []

    async def main():
        runner = await _stub(arrivals, in_flight)
        port = runner.addresses[0][1]
        client = async_client(f"http://127.0.0.1:{port}/v1", "none")
        try:
            return await drive_open_loop(client, "stub", [[{"role": "user", "content": "hi"}]], schedule, {"max_tokens": 4})
        finally:
            await client.close()
            await runner.cleanup()

    records, wall_s = asyncio.run(main())
    assert len(arrivals) == count and all(r["error"] is None for r in records)
    at_server = np.asarray(arrivals) - arrivals[0]
    planned = schedule - schedule[0]
    # Requests reach the server on their slots: the typical one within 30 ms, and none late by half a second
    # (one late by a busy machine's scheduling hiccup, under make test's second process, is not drift).
    # Measured from the typical offset, not the first request's: the first also opens the connection.
    offset = at_server - planned
    lateness = np.abs(offset - np.median(offset))
    assert np.median(lateness) < 0.03 and lateness.max() < 0.5
    assert (count - 1) / planned[-1] == pytest.approx(rate, rel=0.2) and schedule[-1] <= count / rate
    assert max(in_flight) >= 3  # sends did not wait for answers
    run = summarize_rate(records, wall_s, rate)
    assert run["ok"] == count and run["sent_rate"] == pytest.approx((count - 1) / planned[-1], rel=0.1)
    assert run["requests_per_s"] == pytest.approx(count / wall_s, rel=0.01)
    assert ANSWER_S * 1000 <= run["latency_ms"]["p50"] <= run["latency_ms"]["p99"] < 2000 * ANSWER_S
    assert run["ttft_ms"]["p99"] < run["latency_ms"]["p50"]  # the first text comes before the stub's wait
    assert held(run, p99_bound_s=1.0) and not held(run, p99_bound_s=ANSWER_S / 2)


def test_poisson_gaps_have_the_set_mean_and_are_seeded():
    arrivals = poisson_arrivals(4.0, 20000, seed=1)
    gaps = np.diff(arrivals, prepend=0.0)
    assert np.all(gaps >= 0) and arrivals[-1] <= 20000 / 4.0
    assert gaps.mean() == pytest.approx(0.25, rel=0.01) and gaps.std() == pytest.approx(0.25, rel=0.05)  # exponential: std = mean
    assert np.array_equal(poisson_arrivals(4.0, 10, seed=1), poisson_arrivals(4.0, 10, seed=1))
