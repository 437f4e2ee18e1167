"""Closed-loop HTTP load on a GKT server: `concurrency` clients, each sending its next request as soon as
its last one is answered, until every request is sent or the time budget runs out. For the bench and eval."""
import asyncio
import time

import aiohttp
import numpy as np


async def _drive(url: str, bodies: list[dict], concurrency: int, budget_s: float, headers: dict) -> dict:
    results: list[dict | None] = [None] * len(bodies)
    queue = iter(range(len(bodies)))
    deadline = time.perf_counter() + budget_s
    timeout = aiohttp.ClientTimeout(total=max(budget_s, 60.0))

    async def client(session: aiohttp.ClientSession):
        for i in queue:
            if time.perf_counter() > deadline:
                return
            started = time.perf_counter()
            try:
                async with session.post(url, json=bodies[i], headers=headers) as response:
                    payload = await response.json(content_type=None)
                    ok = response.status == 200
            except (aiohttp.ClientError, asyncio.TimeoutError) as err:
                payload, ok = {"error": {"message": f"{type(err).__name__}: {err}"}}, False
            results[i] = {"ok": ok, "latency_s": time.perf_counter() - started, "body": payload}

    started = time.perf_counter()
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        await asyncio.gather(*(client(session) for _ in range(concurrency)))
    return {"wall_s": time.perf_counter() - started, "results": results}


def drive(url: str, bodies: list[dict], concurrency: int, budget_s: float, headers: dict | None = None) -> dict:
    """Send `bodies` (POST JSON) with `concurrency` in flight; summary figures plus every answered body."""
    run = asyncio.run(_drive(url, bodies, concurrency, budget_s, headers or {}))
    done = [r for r in run["results"] if r is not None]
    latencies_ms = np.array([1000 * r["latency_s"] for r in done if r["ok"]])
    ok = len(latencies_ms)
    return {
        "concurrency": concurrency, "sent": len(done), "ok": ok, "errors": len(done) - ok,
        "wall_s": round(run["wall_s"], 3),
        "rps": round(ok / run["wall_s"], 3) if run["wall_s"] > 0 else 0.0,
        "p50_ms": round(float(np.percentile(latencies_ms, 50)), 1) if ok else None,
        "p99_ms": round(float(np.percentile(latencies_ms, 99)), 1) if ok else None,
        "responses": [r["body"] if r and r["ok"] else None for r in run["results"]],  # None: failed or never sent (budget)
        "latencies_ms": [round(1000 * r["latency_s"], 1) if r else None for r in run["results"]],
    }
