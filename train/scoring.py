"""Evaluation numbers for held-out samples: ROUGE-L against the references and the teacher's per-token NLL.

Pure: no Ray, no models. Both numbers are also given per bucket of REFERENCE length in tokens, so
long answers (where student errors pile up) can be read apart from short ones.
"""
from functools import lru_cache

EDGES = (16, 32, 64)


@lru_cache(maxsize=1)
def _scorer():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F-measure x100 (rouge-score, Porter stemming); an empty prediction scores 0."""
    return 100.0 * _scorer().score(reference, prediction)["rougeL"].fmeasure


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


def summarize(samples: list[dict], edges=EDGES) -> dict:
    """{"rouge_l", "teacher_nll", "samples", "tokens", "by_length": {bucket: same without by_length}}.

    ROUGE-L is the mean over samples (several per prompt allowed); teacher NLL is the mean of
    -log p_T over all sample tokens, so long samples weigh by their length. A number with nothing
    to average over is None. Buckets are ordered by their start.
    """
    groups: dict[str, list[dict]] = {}
    for sample in samples:
        groups.setdefault(length_bucket(sample["reference_tokens"], edges), []).append(sample)
    by_length = {bucket: _stats(groups[bucket]) for bucket in sorted(groups, key=bucket_start)}
    return {**_stats(samples), "by_length": by_length}


def bucket_start(bucket: str) -> int:
    return int(bucket.split("-")[0].rstrip("+"))


def _stats(samples: list[dict]) -> dict:
    rouge = [rouge_l(s["prediction"], s["reference"]) for s in samples]
    tokens = sum(len(s["teacher_logprob"]) for s in samples)
    nll = -sum(sum(s["teacher_logprob"]) for s in samples)
    return {
        "rouge_l": round(sum(rouge) / len(rouge), 4) if rouge else None,
        "teacher_nll": round(nll / tokens, 4) + 0.0 if tokens else None,  # + 0.0: no "-0.0"
        "samples": len(samples),
        "tokens": tokens,
    }
