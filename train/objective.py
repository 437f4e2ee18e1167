"""From records to a loss: pad a micro-batch into tensors, run the student, apply the chosen loss.

Teacher targets are the recorded top-k log-probs per response position plus one rest bucket
(studyhall.distill_math.with_rest_bucket); the student's full distribution is folded into the same
k+1 buckets, so no teacher forward runs here. Across tokenizers (train/cross_vocab.py) a record's
top-k ids are already student ids (-1 where the teacher's token is no student token), only its
`aligned` positions carry the loss, and the loss is GOLD's hybrid over them.
"""
from dataclasses import dataclass

import torch

from studyhall.cross_tokenizer import mapped_hybrid_loss, uld_loss
from studyhall.distill_math import DISTILL_LOSSES, cross_entropy_loss, gather_buckets, tempered, with_rest_bucket
from studyhall.record import Record
from studyhall.unlikelihood import OWN_GREEDY, repeat_marks, unlikelihood_loss


@dataclass
class MicroBatch:
    input_ids: torch.Tensor  # [B, L] prompt + response, right-padded
    attention_mask: torch.Tensor  # [B, L]
    targets: torch.Tensor  # [B, L-1] the next token at each position
    loss_mask: torch.Tensor  # [B, L-1] True where the next token is a response token the distillation loss reads
    teacher_ids: torch.Tensor | None  # [B, L-1, k]
    teacher_logp: torch.Tensor | None  # [B, L-1, k]
    # [B, L-1] True where the next token is part of a repeated n-gram of the student's own greedy answer
    # (studyhall/unlikelihood.py); those rows are outside loss_mask. None: no unlikelihood rows.
    repeats: torch.Tensor | None = None
    own_answer_tokens: int = 0  # the unlikelihood rows' answer tokens, marked or not: what the term is divided by

    @property
    def tokens(self) -> int:
        return int(self.attention_mask.sum())

    @property
    def positions(self) -> int:
        """Positions the forward runs over, padding included: B x L."""
        return self.input_ids.numel()

    @property
    def read_positions(self) -> torch.Tensor:
        """[B, L-1] every position a loss reads: the distillation's and the unlikelihood's."""
        return self.loss_mask if self.repeats is None else self.loss_mask | self.repeats

    @property
    def logit_positions(self) -> torch.Tensor:
        """[B, L] True where the loss reads the student's logits: position i predicts token i + 1."""
        return torch.nn.functional.pad(self.read_positions, (0, 1), value=False)


def collate(records: list[Record], pad_id: int, with_teacher: bool, repeat_ngram: int = 4, distill_own: bool = False) -> MicroBatch:
    """Records of source OWN_GREEDY become unlikelihood rows: their repeated token n-grams (n =
    repeat_ngram) marked in `repeats`, and no distillation loss unless `distill_own`
    (train.unlikelihood_teacher: the teacher scored them). Every other record is a distillation row,
    over the answer positions its `aligned` marks where it has them (a cross-tokenizer record)."""
    width = max(r.length for r in records)
    b = len(records)
    ids = torch.full((b, width), pad_id, dtype=torch.long)
    attention = torch.zeros(b, width, dtype=torch.long)
    loss_mask = torch.zeros(b, width - 1, dtype=torch.bool)
    own = [r.source == OWN_GREEDY for r in records]
    k = next((len(r.teacher_topk_ids[0]) for r, o in zip(records, own) if not o), 0) if with_teacher else 0
    t_ids = torch.zeros(b, width - 1, k, dtype=torch.long) if with_teacher else None
    t_logp = torch.zeros(b, width - 1, k) if with_teacher else None
    repeats = torch.zeros(b, width - 1, dtype=torch.bool) if any(own) else None
    own_answer_tokens = sum(len(r.token_ids) for r, o in zip(records, own) if o)
    for row, (r, is_own) in enumerate(zip(records, own)):
        p, n = len(r.prompt_token_ids), len(r.token_ids)
        ids[row, :p + n] = torch.tensor(r.prompt_token_ids + r.token_ids)
        attention[row, :p + n] = 1
        answer = slice(p - 1, p + n - 1)  # position i predicts token i + 1
        if is_own:
            repeats[row, answer] = torch.tensor(repeat_marks(r.token_ids, r.from_teacher or None, repeat_ngram), dtype=torch.bool)
            if not (distill_own and with_teacher):
                continue
        loss_mask[row, answer] = torch.tensor(r.aligned, dtype=torch.bool) if r.aligned is not None else True
        if with_teacher:
            t_ids[row, answer] = torch.tensor(r.teacher_topk_ids, dtype=torch.long)
            t_logp[row, answer] = torch.tensor(r.teacher_topk_logprobs, dtype=torch.float32)
    return MicroBatch(ids, attention, ids[:, 1:], loss_mask, t_ids, t_logp, repeats, own_answer_tokens)


def with_own_greedy(parts: list[list[Record]], records: list[Record]) -> list[list[Record]]:
    """Each micro-batch of distillation records, joined by an equal share of the OWN_GREEDY records:
    the micro-batch count, and so DeepSpeed's gradient accumulation, stays the method's."""
    own = [r for r in records if r.source == OWN_GREEDY]
    return [part + own[i::len(parts)] for i, part in enumerate(parts)]


def distill_loss(logits: torch.Tensor, batch: MicroBatch, loss: str, beta: float, alpha: float, temperature: float,
                 unlikelihood: float = 0.0, cross: "Cross | None" = None) -> torch.Tensor:
    """The loss over the positions it reads; `logits` [B, L, V] from the student on batch.input_ids."""
    return answer_loss(logits[batch.logit_positions], batch, loss, beta, alpha, temperature, unlikelihood, cross)


@dataclass(frozen=True)
class Cross:
    """A cross-tokenizer run's loss settings: train/cross_vocab.VocabBridge.unreached, train.uld_weight
    and train.cross_loss ("hybrid": GOLD's; "uld": ULD's own, which ignores token identity)."""
    unreached: torch.Tensor
    uld_weight: float
    kind: str = "hybrid"


def answer_loss(logits: torch.Tensor, batch: MicroBatch, loss: str, beta: float, alpha: float, temperature: float,
                unlikelihood: float = 0.0, cross: Cross | None = None) -> torch.Tensor:
    """The same loss from the student's logits at the positions the losses read alone: [N, V], row-major
    over batch.read_positions (train.answer_logits). Every loss is a mean over its tokens, so the flat
    layout gives the same value. The log-softmax and divergence math run in float32 whatever the
    logits' dtype. With unlikelihood rows (batch.repeats), adds `unlikelihood` x their unlikelihood.
    With `cross`, the distillation loss is the hybrid over the two vocabularies."""
    if batch.repeats is None:
        return _distillation(logits, batch, loss, beta, alpha, temperature, cross)
    read = batch.read_positions
    base = _distillation(logits[batch.loss_mask[read]], batch, loss, beta, alpha, temperature, cross)
    marked = batch.repeats[read]
    return base + unlikelihood * unlikelihood_loss(logits, batch.targets[read], marked, batch.own_answer_tokens)


def _distillation(logits, batch, loss, beta, alpha, temperature, cross=None):
    mask = batch.loss_mask
    ones = torch.ones(logits.shape[0], device=logits.device)
    if loss == "ce":
        return cross_entropy_loss(logits, batch.targets[mask], ones)
    teacher = tempered(with_rest_bucket(batch.teacher_logp[mask]), temperature)
    options = {"temperature": 1.0, "beta": beta, "alpha": alpha}
    if cross is not None and cross.kind == "uld":
        return uld_loss(tempered(logits, temperature), batch.targets[mask], teacher, cross.uld_weight)
    if cross is not None:
        return mapped_hybrid_loss(tempered(logits, temperature), batch.teacher_ids[mask], teacher, cross.unreached, cross.uld_weight,
                                  loss, options)
    student = gather_buckets(tempered(logits, temperature), batch.teacher_ids[mask])
    return DISTILL_LOSSES[loss](student, teacher, ones, options)


def micro_batches(records: list[Record], size: int, by_length: bool = False) -> list[list[Record]]:
    """Chunks of `size` records; by_length: taken in order of length (prompt + answer), so each chunk
    pads its rows to a length close to their own. Every record is in exactly one chunk either way."""
    if by_length:
        records = sorted(records, key=lambda r: r.length)
    return [records[i:i + size] for i in range(0, len(records), size)]
