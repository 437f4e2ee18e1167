"""Evaluation numbers for held-out prompts: what the student's answers look like, and how close its
next-token distributions are to the teacher's.

Per sample (a student answer): ROUGE-L against the reference, the teacher's per-token NLL, and two
degeneration numbers, `repetition` and `distinct_2` (the teacher's NLL alone rewards a student that
loops on predictable filler). Per reference (a held-out answer, scored token by token): the
full-vocabulary KL(teacher || student) and top-1 agreement, measured by the model actors.

Pure: no Ray, no models. Every number is given overall and per bucket of REFERENCE length in
tokens, so long answers (where student errors pile up) can be read apart from short ones, and per
prompt, so the before/after difference can be bootstrapped over prompts (train/bootstrap.py).
"""
import re
from functools import lru_cache

EDGES = (16, 32, 64)
# An answer loops when more than this share of its word 3-grams repeat earlier ones ("The bread is a
# bread, a bread, a bread, ..." scores ~0.8; fluent answers, the teacher's, stay under ~0.1).
LOOP_REPETITION = 0.3

# Each metric is a weighted mean over prompts of the per-prompt value; this names its weight.
METRICS = {
    "rouge_l": "samples",  # mean over samples
    "teacher_nll": "tokens",  # mean over the samples' tokens: long samples weigh by their length
    "repetition": "samples",
    "distinct_2": "samples",
    "looping": "samples",
    "kl": "kl_tokens",  # mean over the references' tokens
    "top1_agreement": "kl_tokens",
}
LABELS = {  # {answers}: what was scored, e.g. "samples" or "greedy answers"; {answer}: one of them
    "rouge_l": "ROUGE-L (0-100) of the student's {answers} against the references",
    "teacher_nll": "teacher NLL of the student's {answers}, nats/token",
    "repetition": "repetition: share of {answer}'s word 3-grams that already occurred earlier in it",
    "distinct_2": "distinct-2: share of {answer}'s word bigrams that are distinct",
    "looping": f"looping: share of the {{answers}} that loop (repetition above {LOOP_REPETITION})",
    "kl": "full-vocabulary KL(teacher||student), nats/token, on {n} held-out references",
    "top1_agreement": "top-1 agreement with the teacher on the same {n} held-out references",
}
BETTER = {"rouge_l": "higher", "teacher_nll": "lower", "repetition": "lower", "distinct_2": "higher", "looping": "lower", "kl": "lower", "top1_agreement": "higher"}
WORD = re.compile(r"\w+|[^\w\s]")


@lru_cache(maxsize=1)
def _scorer():
    from rouge_score import rouge_scorer  # deferred: it imports nltk (~1.5 s), which the report and the CLI do not need

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F-measure x100 (rouge-score, Porter stemming); an empty prediction scores 0."""
    return 100.0 * _scorer().score(reference, prediction)["rougeL"].fmeasure


def words(text: str) -> list[str]:
    """The units the degeneration metrics count: lowercased runs of word characters, and each other
    non-space character (punctuation) on its own. "It's a place." -> it ' s a place ."""
    return WORD.findall(text.lower())


def _ngrams(tokens: list[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]


def repetition(text: str) -> float:
    """The share of the sample's word 3-grams that already occurred earlier in the same sample.

    With words w_1..w_m (see `words`) and 3-grams g_i = (w_i, w_i+1, w_i+2) for i = 1..m-2:
    repetition = #{i : g_i in {g_1, ..., g_i-1}} / (m - 2) = 1 - distinct-3. 0 for an answer that
    never repeats a 3-gram, near 1 for one that loops; an answer of fewer than 3 words has no
    3-gram to repeat and scores 0 (ROUGE-L, not this, catches answers that say nothing).
    """
    grams = _ngrams(words(text), 3)
    return 1.0 - len(set(grams)) / len(grams) if grams else 0.0


def loops(text: str) -> bool:
    """Whether the answer loops: more than LOOP_REPETITION of its word 3-grams repeat earlier ones."""
    return repetition(text) > LOOP_REPETITION


def distinct_2(text: str) -> float:
    """The share of the sample's word bigrams that are distinct (#distinct / #bigrams); 1 for an
    answer of fewer than 2 words, which has no bigram to repeat."""
    grams = _ngrams(words(text), 2)
    return len(set(grams)) / len(grams) if grams else 1.0


def length_bucket(n_tokens: int, edges=EDGES) -> str:
    """With edges (16, 32, 64): "0-15", "16-31", "32-63", "64+"."""
    if n_tokens < 0:
        raise ValueError(f"n_tokens={n_tokens}: a length cannot be negative")
    if not edges or list(edges) != sorted(set(edges)) or edges[0] <= 0:
        raise ValueError(f"edges={edges!r}: must be positive and strictly increasing")
    lo = 0
    for edge in edges:
        if n_tokens < edge:
            return f"{lo}-{edge - 1}"
        lo = edge
    return f"{lo}+"


def bucket_start(bucket: str) -> int:
    return int(bucket.split("-")[0].rstrip("+"))


def summarize(samples: list[dict], heldout: list[dict] = (), edges=EDGES) -> dict:
    """Overall numbers, then "by_length" {bucket: the same}, then "per_prompt" {prompt id: the same
    for that prompt alone, with its "bucket"}.

    `samples`: {"prompt_id", "prediction", "reference", "reference_tokens", "teacher_logprob"}, any
    number per prompt. `heldout`: one {"prompt_id", "reference_tokens", "tokens", "kl_sum", "top1"}
    per reference (summed over its tokens), or nothing when the KL was not measured.
    ROUGE-L, repetition and distinct-2 are means over samples; teacher NLL is the mean of -log p_T
    over all sample tokens and KL and top-1 agreement over all reference tokens, so long answers
    weigh by their length. A number with nothing to average over is None. Buckets are ordered by start.
    """
    prompts: dict[str, dict] = {}
    for s in samples:
        p = prompts.setdefault(s["prompt_id"], _empty(s["reference_tokens"]))
        if p["reference_tokens"] != s["reference_tokens"]:
            raise ValueError(f"prompt {s['prompt_id']!r}: samples give reference lengths {p['reference_tokens']} and "
                             f"{s['reference_tokens']}; a prompt has one reference")
        p["samples"] += 1
        p["tokens"] += len(s["teacher_logprob"])
        p["sum"]["rouge_l"] += rouge_l(s["prediction"], s["reference"])
        p["sum"]["teacher_nll"] -= sum(s["teacher_logprob"])
        p["sum"]["repetition"] += repetition(s["prediction"])
        p["sum"]["distinct_2"] += distinct_2(s["prediction"])
        p["sum"]["looping"] += float(loops(s["prediction"]))
    for r in heldout:
        p = prompts.setdefault(r["prompt_id"], _empty(r["reference_tokens"]))
        p["kl_tokens"] += r["tokens"]
        p["sum"]["kl"] += r["kl_sum"]
        p["sum"]["top1_agreement"] += r["top1"]
    groups: dict[str, list[dict]] = {}
    for p in prompts.values():
        p["bucket"] = length_bucket(p["reference_tokens"], edges)
        groups.setdefault(p["bucket"], []).append(p)
    return {**_stats(list(prompts.values())),
            "references": reference_text_stats({s["prompt_id"]: s["reference"] for s in samples}),
            "by_length": {bucket: _stats(groups[bucket]) for bucket in sorted(groups, key=bucket_start)},
            "per_prompt": {pid: {"bucket": p["bucket"], "reference_tokens": p["reference_tokens"], **_stats([p])}
                           for pid, p in prompts.items()}}


def reference_text_stats(references: dict[str, str]) -> dict:
    """Repetition and distinct-2 of the references themselves, one per prompt: the yardstick for the
    student's. A student that writes nothing coherent repeats nothing, so its repetition can only
    rise as it learns to write; the references say how much a good answer repeats."""
    texts = list(references.values())
    if not texts:
        return {"repetition": None, "distinct_2": None}
    return {"repetition": round(sum(map(repetition, texts)) / len(texts), 4) + 0.0,
            "distinct_2": round(sum(map(distinct_2, texts)) / len(texts), 4) + 0.0}


def labels(summary: dict, greedy: bool = False) -> dict:
    """What each metric of a summary is, in words (the KL's names how many references it covers);
    greedy: the summary scores greedy answers, not samples."""
    n = summary.get("kl_references", 0)
    answers, answer = ("greedy answers", "an answer") if greedy else ("samples", "a sample")
    return {name: label.format(n=n, answers=answers, answer=answer) for name, label in LABELS.items()}


def _empty(reference_tokens: int) -> dict:
    return {"reference_tokens": reference_tokens, "samples": 0, "tokens": 0, "kl_tokens": 0, "sum": dict.fromkeys(METRICS, 0.0)}


def _stats(prompts: list[dict]) -> dict:
    weights = {w: sum(p[w] for p in prompts) for w in set(METRICS.values())}
    means = {}
    for name, weight in METRICS.items():
        total = sum(p["sum"][name] for p in prompts)
        means[name] = round(total / weights[weight], 4) + 0.0 if weights[weight] else None  # + 0.0: no "-0.0"
    return {**means, "samples": weights["samples"], "tokens": weights["tokens"], "kl_tokens": weights["kl_tokens"],
            "kl_references": sum(1 for p in prompts if p["kl_tokens"])}
