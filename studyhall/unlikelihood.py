"""Sequence-level unlikelihood (Welleck et al., "Neural Text Generation with Unlikelihood Training",
arXiv 1908.04319): push down the student's probability of the tokens with which its own answers loop.

A small student distilled for a few hundred steps loops under greedy decoding ("a bread, a bread, a
bread"), and the distillation losses cannot stop it: given a looping context, the teacher predicts
the loop too, so matching the teacher at those positions teaches the loop. Welleck et al. mark each
token of the model's own continuation that completes a token n-gram already in it, and add
-log(1 - p(token)) at those positions, beside the likelihood loss on the data. Here, as there, the
continuations are the student's own greedy answers to each step's prompts (records of source
OWN_GREEDY), which carry no distillation loss: the method's records train as they always do.

No Ray, no I/O.
"""
import torch

OWN_GREEDY = "own_greedy"  # the source of the records this term reads: the student's greedy answers


def repeat_marks(token_ids: list[int], from_teacher: list[bool] | None, n: int) -> list[bool]:
    """Per answer token: True when the student wrote it and the token n-gram ending at it already
    occurred earlier in the same answer. Without `from_teacher` (a reference or plain data record)
    nothing is marked: no one knows who wrote it."""
    if from_teacher is None or n < 1:
        return [False] * len(token_ids)
    seen, marks = set(), []
    for t in range(len(token_ids)):
        gram = tuple(token_ids[t - n + 1:t + 1]) if t >= n - 1 else None
        marks.append(gram is not None and gram in seen and not from_teacher[t])
        if gram is not None:
            seen.add(gram)
    return marks


def unlikelihood_loss(logits: torch.Tensor, tokens: torch.Tensor, marked: torch.Tensor) -> torch.Tensor:
    """Mean over the marked rows of -log(1 - p(token)), p = softmax(logits) in float32.

    logits [N, V], tokens [N], marked [N] bool; 0 (with a gradient path) when no row is marked.
    log(1 - p) is computed as log(-expm1(log p)), exact for p near 0 and finite up to p = 1 - 1e-6.
    """
    if not bool(marked.any()):
        return logits.sum() * 0.0
    logp = torch.log_softmax(logits[marked].float(), dim=-1).gather(-1, tokens[marked].unsqueeze(-1)).squeeze(-1)
    return -torch.log(-torch.expm1(logp.clamp(max=-1e-6))).mean()
