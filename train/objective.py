"""From records to a loss: pad a micro-batch into tensors, run the student, apply the chosen loss.

Teacher targets are the recorded top-k log-probs per response position plus one rest bucket
(studyhall.distill_math.with_rest_bucket); the student's full distribution is folded into the same
k+1 buckets, so no teacher forward runs here.
"""
from dataclasses import dataclass

import torch

from studyhall.distill_math import DISTILL_LOSSES, cross_entropy_loss, gather_buckets, tempered, with_rest_bucket
from studyhall.unlikelihood import repeat_marks, unlikelihood_loss


@dataclass
class MicroBatch:
    input_ids: torch.Tensor  # [B, L] prompt + response, right-padded
    attention_mask: torch.Tensor  # [B, L]
    targets: torch.Tensor  # [B, L-1] the next token at each position
    loss_mask: torch.Tensor  # [B, L-1] True where the next token is a response token
    teacher_ids: torch.Tensor | None  # [B, L-1, k]
    teacher_logp: torch.Tensor | None  # [B, L-1, k]
    repeats: torch.Tensor | None = None  # [B, L-1] True where the next token is a student-written repeat (studyhall/unlikelihood.py)

    @property
    def tokens(self) -> int:
        return int(self.attention_mask.sum())

    @property
    def positions(self) -> int:
        """Positions the forward runs over, padding included: B x L."""
        return self.input_ids.numel()

    @property
    def logit_positions(self) -> torch.Tensor:
        """[B, L] True where the loss reads the student's logits: position i predicts token i + 1."""
        return torch.nn.functional.pad(self.loss_mask, (0, 1), value=False)


def collate(records: list[dict], pad_id: int, with_teacher: bool, repeat_ngram: int = 0) -> MicroBatch:
    """repeat_ngram > 0 also marks the student-written tokens that close a repeated token n-gram."""
    width = max(len(r["prompt_token_ids"]) + len(r["token_ids"]) for r in records)
    b = len(records)
    ids = torch.full((b, width), pad_id, dtype=torch.long)
    attention = torch.zeros(b, width, dtype=torch.long)
    loss_mask = torch.zeros(b, width - 1, dtype=torch.bool)
    k = len(records[0]["teacher_topk_ids"][0]) if with_teacher else 0
    t_ids = torch.zeros(b, width - 1, k, dtype=torch.long) if with_teacher else None
    t_logp = torch.zeros(b, width - 1, k) if with_teacher else None
    repeats = torch.zeros(b, width - 1, dtype=torch.bool) if repeat_ngram > 0 else None
    for row, r in enumerate(records):
        p, n = len(r["prompt_token_ids"]), len(r["token_ids"])
        ids[row, :p + n] = torch.tensor(r["prompt_token_ids"] + r["token_ids"])
        attention[row, :p + n] = 1
        loss_mask[row, p - 1:p + n - 1] = True  # position i predicts token i + 1
        if with_teacher:
            t_ids[row, p - 1:p + n - 1] = torch.tensor(r["teacher_topk_ids"], dtype=torch.long)
            t_logp[row, p - 1:p + n - 1] = torch.tensor(r["teacher_topk_logprobs"], dtype=torch.float32)
        if repeats is not None:
            repeats[row, p - 1:p + n - 1] = torch.tensor(repeat_marks(r["token_ids"], r.get("from_teacher"), repeat_ngram), dtype=torch.bool)
    return MicroBatch(ids, attention, ids[:, 1:], loss_mask, t_ids, t_logp, repeats)


def distill_loss(logits: torch.Tensor, batch: MicroBatch, loss: str, beta: float, alpha: float, temperature: float,
                 unlikelihood: float = 0.0) -> torch.Tensor:
    """The loss over response positions; `logits` [B, L, V] from the student on batch.input_ids."""
    return answer_loss(logits[batch.logit_positions], batch, loss, beta, alpha, temperature, unlikelihood)


def answer_loss(logits: torch.Tensor, batch: MicroBatch, loss: str, beta: float, alpha: float, temperature: float,
                unlikelihood: float = 0.0) -> torch.Tensor:
    """The same loss from the student's logits at the response positions alone: [N, V], row-major over
    batch.loss_mask (train.answer_logits). Every loss is a mean over response tokens, so the flat layout
    gives the same value. The log-softmax and divergence math run in float32 whatever the logits' dtype.
    unlikelihood > 0 adds that weight x the unlikelihood of the batch's marked repeats (batch.repeats)."""
    base = _distillation(logits, batch, loss, beta, alpha, temperature)
    if unlikelihood <= 0 or batch.repeats is None:
        return base
    mask = batch.loss_mask
    return base + unlikelihood * unlikelihood_loss(logits, batch.targets[mask], batch.repeats[mask])


def _distillation(logits, batch, loss, beta, alpha, temperature):
    mask = batch.loss_mask
    ones = torch.ones(logits.shape[0], device=logits.device)
    if loss == "ce":
        return cross_entropy_loss(logits, batch.targets[mask], ones)
    student = gather_buckets(tempered(logits, temperature), batch.teacher_ids[mask])
    teacher = tempered(with_rest_bucket(batch.teacher_logp[mask]), temperature)
    return DISTILL_LOSSES[loss](student, teacher, ones, {"temperature": 1.0, "beta": beta, "alpha": alpha})


def micro_batches(records: list[dict], size: int, by_length: bool = False) -> list[list[dict]]:
    """Chunks of `size` records; by_length: taken in order of length (prompt + answer), so each chunk
    pads its rows to a length close to their own. Every record is in exactly one chunk either way."""
    if by_length:
        records = sorted(records, key=lambda r: len(r["prompt_token_ids"]) + len(r["token_ids"]))
    return [records[i:i + size] for i in range(0, len(records), size)]
