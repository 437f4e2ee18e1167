"""`studyhall bench switch` writes its JSON with every figure the issue names (a small budget here)."""
import json

import pytest

from cluster.bench.switch import run_bench

pytestmark = pytest.mark.slow


def test_bench_switch_writes_all_figures(ray_local, tmp_path):
    out = tmp_path / "bench.json"
    result = run_bench("tiny", str(out), 8, ["max_new_tokens=12"])
    assert json.loads(out.read_text()) == result
    assert result["greedy_identical"] is True  # both modes ran greedily and matched
    for point in ("low_point", "paper_point"):
        p = result[point]
        for key in ("teacher_share", "tokens_per_s", "naive_tokens_per_s", "teacher_calls_per_token",
                    "naive_teacher_calls_per_token"):
            assert key in p and p[key] >= 0
        assert p["naive_teacher_calls_per_token"] == 1.0  # the reference calls the teacher every token
        assert p["teacher_calls_per_token"] < 1.0
    assert result["low_point"]["teacher_share"] < result["paper_point"]["teacher_share"]
    assert result["bound_tokens_per_s"] == pytest.approx(
        1 / (1 / result["student_sampling_tokens_per_s"] + 1 / result["teacher_scoring_tokens_per_s"]), rel=1e-3)
