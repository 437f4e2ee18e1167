"""Sequence-level unlikelihood (Welleck et al., "Neural Text Generation with Unlikelihood Training",
arXiv 1908.04319): push down the student's probability of the tokens with which its own answers loop.

A small student distilled for a few hundred steps loops under greedy decoding ("a bread, a bread, a
bread"), and the distillation losses cannot stop it: given a looping context, the teacher predicts
the loop too, so matching the teacher at those positions teaches the loop. Welleck et al. mark every
token of each n-gram of the model's own greedy continuation that already occurred earlier in it, add
-log(1 - p(token)) at those positions, and divide the sum by all the continuations' tokens (their
`sequence_penalty` criterion), so the term weighs as much as the loops it finds and fades with them.
Here, as there, the continuations are the student's own greedy answers to each step's prompts (records
of source OWN_GREEDY), which carry no distillation loss: the method's records train as they always do.

No Ray, no I/O.
"""
import torch

OWN_GREEDY = "own_greedy"  # the source of the records this term reads: the student's greedy answers


def repeat_marks(token_ids: list[int], from_teacher: list[bool] | None, n: int) -> list[bool]:
    """Per answer token: True when the student wrote it and it belongs to a token n-gram that already
    occurred earlier in the same answer (every token of the repeat, as Welleck et al. mark it). Without
    `from_teacher` (a reference or plain data record) nothing is marked: no one knows who wrote it."""
    if from_teacher is None or n < 1:
        return [False] * len(token_ids)
    seen, repeated = set(), [False] * len(token_ids)
    for end in range(n - 1, len(token_ids)):
        gram = tuple(token_ids[end - n + 1:end + 1])
        if gram in seen:
            repeated[end - n + 1:end + 1] = [True] * n
        seen.add(gram)
    return [r and not t for r, t in zip(repeated, from_teacher)]


def unlikelihood_loss(logits: torch.Tensor, tokens: torch.Tensor, marked: torch.Tensor, answer_tokens: int) -> torch.Tensor:
    """Sum over the marked rows of -log(1 - p(token)), p = softmax(logits) in float32, divided by
    `answer_tokens`: all the tokens of the greedy answers the marks come from, marked or not.

    logits [N, V], tokens [N], marked [N] bool; 0 (with a gradient path) when no row is marked.
    log(1 - p) is computed as log(-expm1(log p)), exact for p near 0 and finite up to p = 1 - 1e-6.
    """
    if not bool(marked.any()):
        return logits.sum() * 0.0
    if answer_tokens < int(marked.sum()):
        raise ValueError(f"answer_tokens={answer_tokens}: fewer than the {int(marked.sum())} marked tokens it should count")
    logp = torch.log_softmax(logits[marked].float(), dim=-1).gather(-1, tokens[marked].unsqueeze(-1)).squeeze(-1)
    return -torch.log(-torch.expm1(logp.clamp(max=-1e-6))).sum() / answer_tokens
