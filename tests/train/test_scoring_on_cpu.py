"""Evaluation numbers: ROUGE-L against the rouge-score package and by hand, length buckets, token-weighted NLL."""
import pytest
from rouge_score import rouge_scorer

from train.scoring import length_bucket, rouge_l, summarize


def test_rouge_l_known_cases():
    assert rouge_l("the cat sat on the mat", "the cat sat on the mat") == pytest.approx(100.0)
    assert rouge_l("dogs bark loudly", "the cat sat on the mat") == 0.0
    assert rouge_l("", "the cat sat on the mat") == 0.0
    # LCS of "the cat was on a mat" and "the cat sat on the mat" is "the cat on mat": 4 of 6 tokens each way.
    assert rouge_l("the cat was on a mat", "the cat sat on the mat") == pytest.approx(100 * 4 / 6)
    # Unequal lengths: LCS "a b d" = 3; precision 3/3, recall 3/5, F = 2PR/(P+R) = 0.75.
    assert rouge_l("a b d", "a b c d e") == pytest.approx(75.0)


def test_rouge_l_matches_the_package_with_stemming():
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    pairs = [("The cats were running home", "a cat runs home quickly"), ("Paris is the capital.", "The capital of France is Paris.")]
    for prediction, reference in pairs:
        assert rouge_l(prediction, reference) == pytest.approx(100 * scorer.score(reference, prediction)["rougeL"].fmeasure)
    assert rouge_l("running cats", "run cat") == pytest.approx(100.0)  # only the stemmer makes these equal


@pytest.mark.parametrize("n, bucket", [(0, "0-15"), (15, "0-15"), (16, "16-31"), (31, "16-31"), (32, "32-63"), (63, "32-63"), (64, "64+"), (500, "64+")])
def test_length_bucket_edges(n, bucket):
    assert length_bucket(n) == bucket


def test_length_bucket_custom_edges_and_bad_input():
    assert [length_bucket(n, edges=(10,)) for n in (9, 10)] == ["0-9", "10+"]
    with pytest.raises(ValueError):
        length_bucket(-1)
    with pytest.raises(ValueError):
        length_bucket(5, edges=(32, 16))


def sample(prompt_id, prediction, reference, reference_tokens, logprobs):
    return {"prompt_id": prompt_id, "prediction": prediction, "reference": reference,
            "reference_tokens": reference_tokens, "teacher_logprob": logprobs}


def test_summarize_token_weighted_nll_and_buckets():
    samples = [
        sample("a", "a b c", "a b c", 40, [-1.0, -1.0]),      # ROUGE-L 100
        sample("a", "a b d", "a b c d e", 40, [-4.0]),        # two samples of one prompt; ROUGE-L 75
        sample("b", "", "x y", 3, []),                        # empty: ROUGE-L 0, no tokens for the NLL
        sample("c", "p q", "q p", 70, [-0.5, -1.5, -2.0, -2.0]),  # LCS 1: ROUGE-L 50
    ]
    s = summarize(samples)
    # NLL by hand: (1 + 1 + 4 + 0.5 + 1.5 + 2 + 2) / 7 tokens = 12/7, not the mean of per-sample means.
    assert s["teacher_nll"] == round(12 / 7, 4) == 1.7143
    assert s["rouge_l"] == round((100 + 75 + 0 + 50) / 4, 4) == 56.25
    assert s["samples"] == 4 and s["tokens"] == 7
    assert list(s["by_length"]) == ["0-15", "32-63", "64+"]  # ordered by bucket start, empty buckets absent
    assert s["by_length"]["0-15"] == {"rouge_l": 0.0, "teacher_nll": None, "samples": 1, "tokens": 0}
    assert s["by_length"]["32-63"] == {"rouge_l": 87.5, "teacher_nll": 2.0, "samples": 2, "tokens": 3}
    assert s["by_length"]["64+"] == {"rouge_l": 50.0, "teacher_nll": 1.5, "samples": 1, "tokens": 4}


def test_summarize_orders_buckets_numerically_and_handles_nothing():
    s = summarize([sample("a", "x", "x", 100, [-1.0]), sample("b", "x", "x", 9, [-1.0]), sample("c", "x", "x", 3, [-1.0])], edges=(8, 16))
    assert list(s["by_length"]) == ["0-7", "8-15", "16+"]
    assert summarize([]) == {"rouge_l": None, "teacher_nll": None, "samples": 0, "tokens": 0, "by_length": {}}
