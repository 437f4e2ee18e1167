"""Evaluation numbers: ROUGE-L against the rouge-score package and by hand, the degeneration metrics by
hand, length buckets, token-weighted NLL and KL, per-prompt values."""
import pytest
from rouge_score import rouge_scorer

from train.scoring import distinct_2, labels, length_bucket, reference_text_stats, repetition, rouge_l, summarize, words


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


def test_words_split_punctuation_and_lowercase():
    assert words("It's a Place, here.") == ["it", "'", "s", "a", "place", ",", "here", "."]
    assert words("  ") == []


@pytest.mark.parametrize("text, rep, d2", [
    # 9 words, 7 3-grams; only the last, "the cat sat", occurred before: 1/7. Bigrams: 8, of which 6 distinct.
    ("the cat sat on the mat the cat sat", 1 / 7, 6 / 8),
    # Period 9 ("it ' s a place where everything is ."), twice: 18 words, 16 3-grams, the last 7 repeat
    # ones that started 9 words earlier. 17 bigrams, of which the 9 of one period are distinct.
    ("It's a place where everything is. It's a place where everything is.", 7 / 16, 9 / 17),
    ("Go go GO go", 1 / 2, 1 / 3),  # 3-grams (go go go) twice; bigrams (go go) three times
    ("a b c d e", 0.0, 1.0),  # nothing repeats
    ("Yes.", 0.0, 1.0),  # fewer than 3 words: no 3-gram to repeat; one bigram
    ("", 0.0, 1.0),
])
def test_repetition_and_distinct_2_by_hand(text, rep, d2):
    assert repetition(text) == pytest.approx(rep)
    assert distinct_2(text) == pytest.approx(d2)


def test_repetition_is_one_minus_distinct_3():
    text = "we go we go we go home now we go"
    grams = [tuple(words(text)[i:i + 3]) for i in range(len(words(text)) - 2)]
    assert repetition(text) == pytest.approx(1 - len(set(grams)) / len(grams))


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
    heldout = [  # KL and top-1 are summed over each reference's tokens
        {"prompt_id": "a", "reference_tokens": 40, "tokens": 10, "kl_sum": 20.0, "top1": 4},
        {"prompt_id": "c", "reference_tokens": 70, "tokens": 30, "kl_sum": 15.0, "top1": 21},
    ]
    s = summarize(samples, heldout)
    # NLL by hand: (1 + 1 + 4 + 0.5 + 1.5 + 2 + 2) / 7 tokens = 12/7, not the mean of per-sample means.
    assert s["teacher_nll"] == round(12 / 7, 4) == 1.7143
    assert s["rouge_l"] == round((100 + 75 + 0 + 50) / 4, 4) == 56.25
    assert s["samples"] == 4 and s["tokens"] == 7
    # No prediction repeats a 3-gram; distinct-2: "a b c" 1, "a b d" 1, "" 1, "p q" 1.
    assert s["repetition"] == 0.0 and s["distinct_2"] == 1.0
    # KL and top-1 by hand, token-weighted: (20 + 15) / 40 tokens, (4 + 21) / 40.
    assert s["kl"] == 0.875 and s["top1_agreement"] == 0.625 and s["kl_tokens"] == 40 and s["kl_references"] == 2
    assert list(s["by_length"]) == ["0-15", "32-63", "64+"]  # ordered by bucket start, empty buckets absent
    no_kl = {"kl": None, "top1_agreement": None, "kl_tokens": 0, "kl_references": 0}
    assert s["by_length"]["0-15"] == {"rouge_l": 0.0, "teacher_nll": None, "repetition": 0.0, "distinct_2": 1.0, "looping": 0.0,
                                      "samples": 1, "tokens": 0, **no_kl}
    assert s["by_length"]["32-63"] == {"rouge_l": 87.5, "teacher_nll": 2.0, "repetition": 0.0, "distinct_2": 1.0, "looping": 0.0, "samples": 2, "tokens": 3,
                                       "kl": 2.0, "top1_agreement": 0.4, "kl_tokens": 10, "kl_references": 1}
    assert s["by_length"]["64+"] == {"rouge_l": 50.0, "teacher_nll": 1.5, "repetition": 0.0, "distinct_2": 1.0, "looping": 0.0, "samples": 1, "tokens": 4,
                                     "kl": 0.5, "top1_agreement": 0.7, "kl_tokens": 30, "kl_references": 1}
    # Per prompt: the same numbers for each prompt alone, with its bucket; prompt "a"'s two samples together.
    assert list(s["per_prompt"]) == ["a", "b", "c"]
    assert s["per_prompt"]["a"] == {"bucket": "32-63", "reference_tokens": 40, **s["by_length"]["32-63"]}
    assert s["per_prompt"]["b"]["bucket"] == "0-15" and s["per_prompt"]["b"]["kl"] is None
    assert labels(s)["kl"] == "full-vocabulary KL(teacher||student), nats/token, on 2 held-out references"


def test_summarize_repetition_is_a_mean_over_samples():
    s = summarize([sample("a", "go go go go", "x", 5, [-1.0]), sample("a", "a b c d", "x", 5, [-1.0]),
                   sample("b", "the cat sat on the mat the cat sat", "x", 5, [-1.0])])
    assert s["repetition"] == round((0.5 + 0.0 + 1 / 7) / 3, 4)
    assert s["distinct_2"] == round((1 / 3 + 1.0 + 0.75) / 3, 4)
    assert s["per_prompt"]["a"]["repetition"] == 0.25 and s["per_prompt"]["a"]["samples"] == 2


def test_summarize_refuses_two_reference_lengths_for_one_prompt():
    with pytest.raises(ValueError, match="prompt 'a'"):
        summarize([sample("a", "x", "x", 5, [-1.0]), sample("a", "x", "x y", 6, [-1.0])])


def test_summarize_orders_buckets_numerically_and_handles_nothing():
    s = summarize([sample("a", "x", "x", 100, [-1.0]), sample("b", "x", "x", 9, [-1.0]), sample("c", "x", "x", 3, [-1.0])], edges=(8, 16))
    assert list(s["by_length"]) == ["0-7", "8-15", "16+"]
    assert summarize([]) == {"rouge_l": None, "teacher_nll": None, "repetition": None, "distinct_2": None, "looping": None,
                             "kl": None, "top1_agreement": None, "samples": 0, "tokens": 0, "kl_tokens": 0, "kl_references": 0,
                             "references": {"repetition": None, "distinct_2": None}, "by_length": {}, "per_prompt": {}}


def test_reference_text_stats_are_the_references_own_repetition_and_distinct_2():
    # "a b c a b c" -> words a b c a b c: 3-grams abc bca cab abc, one repeat of 4 -> 0.25;
    # bigrams ab bc ca ab bc: 3 distinct of 5 -> 0.6. "x y" has no 3-gram (0.0) and 1 of 1 distinct bigram.
    stats = reference_text_stats({"p1": "a b c a b c", "p2": "x y"})
    assert stats == {"repetition": 0.125, "distinct_2": 0.8}
    assert reference_text_stats({}) == {"repetition": None, "distinct_2": None}
    summary = summarize([{"prompt_id": "p1", "prediction": "a b c", "reference": "a b c a b c", "reference_tokens": 6,
                          "teacher_logprob": [-1.0]}])
    assert summary["references"] == {"repetition": 0.25, "distinct_2": 0.6}


@pytest.mark.parametrize("text, looping", [
    # 15 words (the bread is a bread , a bread , a bread , a bread .): 13 3-grams, 7 distinct
    # (the bread is, bread is a, is a bread, a bread ",", bread , a, ", a bread", a bread .): 6 of 13 repeat, 0.46 > 0.3.
    ("The bread is a bread, a bread, a bread, a bread.", True),
    # 10 words, 8 3-grams, 2 repeats ("the cat sat" and "cat sat on"): 0.25, not above 0.3.
    ("the cat sat on a mat the cat sat on", False),
    ("Bread goes stale as its starch crystallizes and water moves out.", False),
    ("", False),
])
def test_an_answer_loops_when_repetition_is_above_the_cut(text, looping):
    from train.scoring import LOOP_REPETITION, loops

    assert loops(text) is looping
    assert (repetition(text) > LOOP_REPETITION) is looping


def test_looping_share_is_the_share_of_looping_samples():
    samples = [{"prompt_id": "a", "prediction": "The bread is a bread, a bread, a bread, a bread.", "reference": "x",
                "reference_tokens": 3, "teacher_logprob": [-1.0]},
               {"prompt_id": "a", "prediction": "Bread goes stale.", "reference": "x", "reference_tokens": 3, "teacher_logprob": [-1.0]},
               {"prompt_id": "b", "prediction": "go go go go go go", "reference": "y", "reference_tokens": 20, "teacher_logprob": [-1.0]}]
    summary = summarize(samples)
    assert summary["looping"] == pytest.approx(2 / 3, abs=1e-4)
    assert summary["per_prompt"]["a"]["looping"] == 0.5 and summary["per_prompt"]["b"]["looping"] == 1.0
