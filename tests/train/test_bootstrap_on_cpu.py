"""The paired bootstrap interval: covers a known shift and excludes zero, covers zero without a shift,
reaches its nominal coverage, keeps a prompt's samples together, and is reproducible."""
import numpy as np
import pytest

from train.bootstrap import compare, paired_bootstrap
from train.scoring import summarize


def synthetic(shift: float, n: int = 40, seed: int = 1):
    """Prompts that differ a lot from each other (sd 3) and a per-prompt effect of `shift` with noise (sd 1)."""
    rng = np.random.default_rng(seed)
    before = rng.normal(10.0, 3.0, n)
    return before, before + shift + rng.normal(0.0, 1.0, n)


def test_known_shift_is_covered_and_zero_excluded():
    before, after = synthetic(shift=2.0)
    interval = paired_bootstrap(before, after)
    assert interval["low"] < 2.0 < interval["high"]
    assert interval["low"] > 0
    assert interval["diff"] == pytest.approx(np.mean(after) - np.mean(before))


def test_no_shift_covers_zero():
    before, after = synthetic(shift=0.0)
    interval = paired_bootstrap(before, after)
    assert interval["low"] < 0 < interval["high"]


def test_pairing_removes_the_spread_between_prompts():
    before, after = synthetic(shift=1.0)
    paired = paired_bootstrap(before, after)
    # Resampling the two sides independently keeps the between-prompt spread (sd 3) and is several times wider.
    rng = np.random.default_rng(0)
    unpaired = [after[rng.integers(0, 40, 40)].mean() - before[rng.integers(0, 40, 40)].mean() for _ in range(2000)]
    assert paired["low"] > 0 > np.percentile(unpaired, 2.5)
    assert (paired["high"] - paired["low"]) * 2.5 < np.percentile(unpaired, 97.5) - np.percentile(unpaired, 2.5)


def test_coverage_is_near_95_percent():
    hits = 0
    for trial in range(200):
        before, after = synthetic(shift=0.7, n=30, seed=100 + trial)
        interval = paired_bootstrap(before, after, resamples=1000, seed=trial)
        hits += interval["low"] <= 0.7 <= interval["high"]
    assert 0.88 <= hits / 200 <= 0.99, hits  # percentile intervals run a little narrow with 30 prompts


def test_weights_make_the_ratio_of_sums_and_fixed_seed_repeats():
    # Token-weighted means: prompt values are per-token means, weights their token counts.
    before, after, weights = [1.0, 3.0, 2.0], [0.5, 2.0, 2.0], [10, 1, 5]
    interval = paired_bootstrap(before, after, weights, weights, seed=7)
    expected = (0.5 * 10 + 2.0 + 10.0) / 16 - (10 + 3.0 + 10.0) / 16
    assert interval["diff"] == pytest.approx(expected)
    noisy = synthetic(shift=1.0)
    assert paired_bootstrap(*noisy, seed=7) == paired_bootstrap(*noisy, seed=7)
    assert paired_bootstrap(*noisy, seed=7) != paired_bootstrap(*noisy, seed=8)
    assert paired_bootstrap([], []) is None
    with pytest.raises(ValueError):
        paired_bootstrap([1.0], [1.0, 2.0])


def test_one_prompt_in_many_samples_counts_once():
    # Prompt "a" has 9 samples, "b" one. Resampling prompts keeps a's nine together, so a resample is
    # either mostly a or mostly b: with only two prompts the interval spans both prompts' effects.
    def s(pid, prediction):
        return {"prompt_id": pid, "prediction": prediction, "reference": "the cat sat", "reference_tokens": 3, "teacher_logprob": [-1.0]}

    before = summarize([s("a", "dog")] * 9 + [s("b", "dog")])
    after = summarize([s("a", "the cat sat")] * 9 + [s("b", "dog")])
    rouge = compare(before, after, seed=0)["all"]["rouge_l"]
    assert rouge["diff"] == 90.0  # 9 of 10 samples went from 0 to 100
    assert rouge["low"] == 0.0 and rouge["high"] == 100.0  # resamples of (b, b) and of (a, a)


def test_compare_every_metric_and_bucket():
    rng = np.random.default_rng(3)

    def side(shift):
        samples, heldout = [], []
        for i in range(30):
            n = 10 if i % 2 else 70
            kl = rng.normal(3.0 - shift, 0.3)
            samples += [{"prompt_id": f"p{i}", "prediction": "the cat sat on the mat" if shift else "the the the the the mat",
                         "reference": "the cat sat on the mat", "reference_tokens": n,
                         "teacher_logprob": list(rng.normal(-2.0 + shift, 0.2, 5))} for _ in range(2)]
            heldout.append({"prompt_id": f"p{i}", "reference_tokens": n, "tokens": n, "kl_sum": kl * n, "top1": n // 2})
        return summarize(samples, heldout)

    result = compare(side(0.0), side(1.0))
    assert result["bootstrap"]["resamples"] == 2000 and result["bootstrap"]["level"] == 0.95
    assert set(result["all"]) == {"rouge_l", "teacher_nll", "repetition", "distinct_2", "looping", "kl", "top1_agreement"}
    assert result["all"]["looping"] == {"before": 1.0, "after": 0.0, "diff": -1.0, "low": -1.0, "high": -1.0}  # every "the the the" loops
    assert list(result["by_length"]) == ["0-15", "64+"]
    for where in (result["all"], result["by_length"]["64+"]):
        assert where["kl"]["high"] < 0 < where["rouge_l"]["low"]  # KL down, ROUGE-L up: both exclude zero
        assert where["teacher_nll"]["high"] < 0 and where["repetition"]["high"] < 0
        assert where["top1_agreement"]["low"] <= 0 <= where["top1_agreement"]["high"]  # unchanged: covers zero
        for m in where.values():
            assert m["low"] <= m["diff"] <= m["high"] and m["diff"] == pytest.approx(m["after"] - m["before"], abs=1e-4)
