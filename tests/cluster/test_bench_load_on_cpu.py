"""`studyhall bench load` without a server: the summary's arithmetic, and bad input as one line."""
import pytest

from cluster.bench.load import summarize
from cluster.cli import main


def _record(latency, ttft=None, tokens=4, finish="length", error=None):
    return {"error": error, "latency_s": latency, "ttft_s": ttft, "tokens": tokens, "finish_reason": finish}


def test_summary_counts_errors_by_type_and_times_only_answers():
    records = [_record(0.1 * (i + 1), ttft=0.05, tokens=i) for i in range(10)]
    records += [_record(9.0, error="InternalServerError (500)"), _record(0.2, error="APITimeoutError"),
                _record(0.3, error="APITimeoutError")]
    out = summarize(records, wall_s=2.0, settings={"stream": True})
    assert (out["sent"], out["ok"], out["errors"]) == (13, 10, 3)
    assert out["errors_by_type"] == {"InternalServerError (500)": 1, "APITimeoutError": 2}
    assert out["completion_tokens"] == 45 and out["tokens_per_s"] == 22.5 and out["requests_per_s"] == 5.0
    lat = out["latency_ms"]
    assert lat["n"] == 10 and lat["max"] == 1000.0  # the failed 9 s request is not a latency
    assert lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"]
    assert out["ttft_ms"]["p50"] == 50.0 and out["finish_reasons"] == {"length": 10}


def test_summary_without_streaming_has_no_ttft():
    out = summarize([_record(0.5)], wall_s=1.0, settings={"stream": False})
    assert out["ttft_ms"] is None and out["latency_ms"]["p99"] == 500.0


@pytest.mark.parametrize("flag,value", [("--concurrency", "0"), ("--requests", "0")])
def test_bad_counts_are_one_line_before_anything_starts(tmp_path, capsys, flag, value):
    assert main(["bench", "load", "--out", str(tmp_path / "load.json"), flag, value]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"studyhall: error: {flag} {value}: must be >= 1"
    assert not (tmp_path / "load.json").exists()


@pytest.mark.parametrize("args,message", [
    (["--rates", "0,1"], "--rates 0.0,1.0: every rate must be > 0 requests/s"),
    (["--rates", "fast"], "--rates fast: comma-separated numbers of requests/s, e.g. 0.5,1,2"),
    (["--rates", "1", "--modes", "gkt,both"], "--modes gkt,both: both is not one of gkt, teacher, student"),
])
def test_bad_open_loop_settings_are_one_line_before_anything_starts(tmp_path, capsys, args, message):
    assert main(["bench", "load", "--out", str(tmp_path / "open.json"), *args]) == 2
    assert capsys.readouterr().err.strip() == f"studyhall: error: {message}"
    assert not (tmp_path / "open.json").exists()
