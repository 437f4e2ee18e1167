"""A paired bootstrap 95% interval for each metric's before/after difference.

The unit resampled is the held-out prompt: a prompt's samples (and its reference's tokens) stay
together, and the same resampled prompts are used before and after, so the interval is that of a
paired difference: the prompt-to-prompt spread, which is large, cancels out. Percentile intervals,
from a fixed seed, so a report is reproducible. Pure numpy: no Ray, no models.
"""
import numpy as np

from train.scoring import METRICS

RESAMPLES = 2000
LEVEL = 0.95


def paired_bootstrap(before, after, before_weights=None, after_weights=None,
                     resamples: int = RESAMPLES, seed: int = 0, level: float = LEVEL) -> dict | None:
    """The difference after - before of a weighted mean over prompts, with its bootstrap interval.

    `before[i]`, `after[i]`: prompt i's value (a mean over its samples or tokens) before and after;
    the weights (its samples or tokens; default 1) make each side's statistic the ratio
    sum(w * value) / sum(w) over the resampled prompts, the same number the summary reports.
    Returns {"diff", "low", "high"}, or None without any prompt. A resample whose weights sum to
    zero on one side has no difference and is left out.
    """
    values = [np.asarray(v, dtype=float) for v in (before, after)]
    n = len(values[0])
    if len(values[1]) != n:
        raise ValueError(f"paired values: {n} before but {len(values[1])} after")
    if n == 0:
        return None
    weights = [np.ones(n) if w is None else np.asarray(w, dtype=float) for w in (before_weights, after_weights)]
    picks = np.random.default_rng(seed).integers(0, n, size=(resamples, n))  # one set of picks for both sides: paired
    with np.errstate(invalid="ignore", divide="ignore"):
        point = [(v * w).sum() / w.sum() for v, w in zip(values, weights)]
        sides = [(v * w)[picks].sum(1) / w[picks].sum(1) for v, w in zip(values, weights)]
    diffs = sides[1] - sides[0]
    diffs = diffs[np.isfinite(diffs)]
    if not np.isfinite(point[1] - point[0]) or not len(diffs):
        return None
    low, high = np.percentile(diffs, [50 * (1 - level), 50 * (1 + level)])
    return {"diff": float(point[1] - point[0]), "low": float(low), "high": float(high)}


def compare(before: dict, after: dict, resamples: int = RESAMPLES, seed: int = 0, level: float = LEVEL) -> dict:
    """Every metric of two `train.scoring.summarize` results, overall and per length bucket:
    {"bootstrap": the settings, "all": {metric: {"before", "after", "diff", "low", "high"}},
    "by_length": {bucket: the same}}. Prompts are paired by id; a metric one side lacks is left out."""
    pairs = [(pid, p, after["per_prompt"][pid]) for pid, p in before.get("per_prompt", {}).items() if pid in after.get("per_prompt", {})]
    buckets = [b for b in before.get("by_length", {}) if b in after.get("by_length", {})]

    def table(slice_before: dict, slice_after: dict, chosen: list) -> dict:
        out = {}
        for name, weight in METRICS.items():
            if slice_before.get(name) is None or slice_after.get(name) is None:
                continue
            interval = paired_bootstrap([b[name] or 0.0 for _, b, _ in chosen], [a[name] or 0.0 for _, _, a in chosen],
                                        [b[weight] for _, b, _ in chosen], [a[weight] for _, _, a in chosen], resamples, seed, level)
            if interval is not None:
                out[name] = {"before": slice_before[name], "after": slice_after[name],
                             "diff": round(slice_after[name] - slice_before[name], 4) + 0.0,
                             "low": round(interval["low"], 4) + 0.0, "high": round(interval["high"], 4) + 0.0}
        return out

    return {"bootstrap": {"unit": "held-out prompt (its samples stay together; paired before/after)", "resamples": resamples,
                          "level": level, "seed": seed, "interval": "percentile"},
            "all": table(before, after, pairs),
            "by_length": {b: table(before["by_length"][b], after["by_length"][b], [t for t in pairs if t[1]["bucket"] == b]) for b in buckets}}
