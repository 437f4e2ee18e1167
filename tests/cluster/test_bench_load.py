"""`studyhall bench load` on the tiny app: once starting the app itself, once streaming against one already up
(--url). 16 requests, 4 in flight, each; the JSON's counts add up, nothing fails, percentiles are ordered."""
import json

import pytest
from ray import serve

from cluster.bench.open_loop import held
from cluster.bench.served_app import free_port
from cluster.cli import main

pytestmark = pytest.mark.slow
# Fractions of a CPU, so the app fits the session's 2-CPU Ray; short answers both models write (k=3 of 8).
SMALL = ["serve.guide.num_cpus=0.25", "serve.complete.num_cpus=0.25", "serve.default_max_tokens=8", "serve.guidance_tokens=3",
         "serve.guide.path=tiny:teacher"]  # the cheaper tiny teacher: a smoke test of the bench, not a measurement
REQUESTS, CONCURRENCY = 16, 4


def _check(result: dict, out, stream: bool) -> None:
    assert json.loads(out.read_text()) == result
    s = result["settings"]
    assert (s["requests"], s["concurrency"], s["stream"], s["model"]) == (REQUESTS, CONCURRENCY, stream, "studyhall-gkt")
    assert result["sent"] == REQUESTS == result["ok"] + result["errors"]
    assert result["errors"] == 0 and result["errors_by_type"] == {}, result["errors_by_type"]
    assert sum(result["finish_reasons"].values()) == result["ok"]
    lat = result["latency_ms"]
    assert lat["n"] == REQUESTS and 0 < lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"]
    assert REQUESTS <= result["completion_tokens"] <= REQUESTS * 8  # every answer has 1 to max_tokens tokens
    assert result["requests_per_s"] > 0 and result["tokens_per_s"] == pytest.approx(result["completion_tokens"] / result["wall_s"], rel=0.01)
    if stream:
        ttft = result["ttft_ms"]
        assert ttft["n"] <= REQUESTS and 0 < ttft["p50"] <= ttft["p90"] <= ttft["p99"] <= ttft["max"] <= lat["max"]
    else:
        assert result["ttft_ms"] is None


def test_bench_load_starts_the_app_and_answers_every_request(ray_local, tmp_path):
    out = tmp_path / "load.json"
    assert main(["bench", "load", "--preset", "tiny", "--requests", str(REQUESTS), "--concurrency", str(CONCURRENCY),
                 "--out", str(out), "--no-progress", *SMALL]) == 0
    result = json.loads(out.read_text())
    _check(result, out, stream=False)
    assert result["settings"]["preset"] == "tiny" and result["settings"]["max_tokens"] == 8


def test_bench_load_streams_against_a_running_server(ray_local, tmp_path):
    from serve.app import start
    from studyhall.config import load_config

    url = start(load_config("tiny", [*SMALL, f"serve.port={free_port()}"]))
    try:
        out = tmp_path / "load_stream.json"
        assert main(["bench", "load", "--url", url, "--stream", "--requests", str(REQUESTS), "--concurrency", str(CONCURRENCY),
                     "--out", str(out), "--no-progress"]) == 0
        result = json.loads(out.read_text())
        _check(result, out, stream=True)
        assert result["settings"]["url"] == url and result["settings"]["default_guidance_tokens"] == 3
    finally:
        serve.shutdown()


def test_open_loop_on_its_own_server_reports_every_rate_and_the_prefill(ray_local, tmp_path):
    """Open loop through the CLI: each mode at each rate answers every request; the replicas' counters
    give prefill tokens per request (the student's prompt prefilled ahead of the guidance in GKT)."""
    out = tmp_path / "open.json"
    assert main(["bench", "load", "--preset", "tiny", "--rates", "2,4", "--requests", "6", "--modes", "gkt,teacher",
                 "--p99-bound-s", "60", "--out", str(out), *SMALL]) == 0
    result = json.loads(out.read_text())
    for mode in ("gkt", "teacher"):
        for rate in ("2.0", "4.0"):
            run = result["modes"][mode][rate]
            assert run["ok"] == 6 and run["errors"] == 0 and run["sent_rate"] > 0
            assert run["ttft_ms"]["p50"] <= run["latency_ms"]["p50"]
            assert run["prefill_tokens_per_request"]["teacher"] > 0
        kept = [float(rate) for rate, run in result["modes"][mode].items() if held(run, 60)]
        assert result["highest_rate_held"][mode] == (max(kept) if kept else None)
    gkt, teacher = result["modes"]["gkt"]["2.0"], result["modes"]["teacher"]["2.0"]
    assert gkt["prefill_ahead_tokens_per_request"]["student"] > 0 and teacher["prefill_tokens_per_request"]["student"] == 0
    assert out.with_suffix(".md").read_text().startswith("Open-loop load")
