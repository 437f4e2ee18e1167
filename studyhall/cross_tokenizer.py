"""Cross-tokenizer distillation: a teacher and a student whose tokenizers differ.

No Ray, no I/O, no transformers import: functions that need a tokenizer take it as an argument.
Two tokenizations of one text become a loss in three steps:
- `token_strings` and `shared_vocab_map`: which teacher token is which student token (the same text);
- `aligned_positions`: where both models predict the next token after the same text;
- `hybrid_loss`: there, forward KL over the tokens both vocabularies share, exactly as
  studyhall.distill_math does for one tokenizer, plus ULD (Boizard et al., arXiv 2402.12030) over the
  rest, the split TRL's GOLD trainer makes; or `uld_loss`, ULD's own: cross-entropy plus the distance
  over the whole top-k.
"""
import torch

from studyhall.distill_math import DISTILL_LOSSES, masked_mean, with_rest_bucket

NO_TEXT = ""  # the string of a token that stands for no text on its own; it never matches another token
# The log-prob of an emptied bucket: its probability underflows to exactly 0 in float32, yet, unlike -inf, it keeps
# the gradients of log-softmax and of JSD's mixture finite (-inf - -inf there is NaN, and log-softmax spreads it).
EMPTY = -1.0e4


# ---- vocabularies --------------------------------------------------------------------------------

def token_strings(tokenizer) -> list[str]:
    """The text each id of an HF tokenizer stands for, so two tokenizer families compare.

    Each token is decoded by the tokenizer's own decoder after an anchor token ("a"): sentencepiece
    decoders drop the leading space of a sequence's first token, so "▁the" alone decodes to "the",
    but after the anchor to " the", as byte-level BPE's "Ġthe" does. Added and special tokens keep
    their own string. A token that is part of a UTF-8 character (one byte of "é") decodes to U+FFFD:
    it gets NO_TEXT, because all such tokens decode alike and matching them would pair unrelated bytes.
    """
    added = {i: t.content for i, t in tokenizer.added_tokens_decoder.items()}
    anchor = tokenizer.convert_ids_to_tokens(tokenizer.encode("a", add_special_tokens=False))
    prefix = tokenizer.convert_tokens_to_string(anchor)
    strings = []
    for i, token in enumerate(tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))):
        if i in added:
            strings.append(added[i])
            continue
        text = tokenizer.convert_tokens_to_string(anchor + [token]) if token is not None else ""
        piece = text[len(prefix):] if text.startswith(prefix) else NO_TEXT
        strings.append(NO_TEXT if "\ufffd" in piece else piece)
    return strings


def shared_vocab_map(teacher_strings: list[str], student_strings: list[str]) -> torch.Tensor:
    """[V_teacher] long: the student id of the token with the same string, else -1.

    Where several student ids share a string the lowest wins. Where several teacher ids share one,
    only the lowest is mapped (the others get -1): a map that sends two teacher tokens to one student
    token would count that student token's probability twice in `hybrid_loss`'s buckets.
    """
    student_id = {}
    for i, s in enumerate(student_strings):
        if s != NO_TEXT:
            student_id.setdefault(s, i)
    mapped, seen = [], set()
    for s in teacher_strings:
        mapped.append(student_id.get(s, -1) if s not in seen else -1)
        seen.add(s)
    return torch.tensor(mapped, dtype=torch.long)


# ---- positions -----------------------------------------------------------------------------------

def _starts(offsets) -> dict[int, int]:
    """{character where a token starts: its index} over the tokens that begin a new stretch of text.

    A token starts where the text before it ends: the end of the text covered by the tokens before
    it. That is its own start when offsets include a token's leading space (SmolLM2, Llama 3, Qwen,
    sentencepiece), and still the same place when they trim it (GPT-2-style ByteLevel
    trim_offsets=True gives " is" the span of "is"). Skipped: empty-width tokens (BOS, EOS, a trimmed
    all-space token), and tokens that begin inside text already covered (the second byte of a character
    split into bytes), since no model predicts there after a whole text prefix.
    """
    starts, covered = {}, 0
    for index, (start, end) in enumerate(offsets):
        start, end = int(start), int(end)
        if end > start and start >= covered:
            starts[covered] = index
        covered = max(covered, end)
    return starts


def aligned_positions(teacher_offsets, student_offsets) -> list[tuple[int, int]]:
    """(teacher_index, student_index) of the tokens that start at the same character, in text order.

    Offsets are the (start, end) character spans of two tokenizations of the same text, as HF's
    return_offsets_mapping gives them. At such a pair both models have read the same text, so their
    next-token distributions there are comparable: in a causal LM they are the logits at index - 1
    (a pair with index 0 on either side has no logits predicting it).

    Limitation: offsets that trim a token's trailing whitespace (GPT-2's trim_offsets=True on "\\n\\n ")
    cannot tell it from the next token's leading whitespace, so inside a run of whitespace such
    offsets can place a start a few spaces early. Offsets that include the whitespace are exact.
    """
    teacher, student = _starts(teacher_offsets), _starts(student_offsets)
    return [(teacher[c], student[c]) for c in sorted(teacher.keys() & student.keys())]


# ---- losses --------------------------------------------------------------------------------------

def uld_distance(p_teacher: torch.Tensor, p_student: torch.Tensor) -> torch.Tensor:
    """ULD's distance [...] between probabilities [..., Kt] and [..., Ks]: both sorted in descending
    order, the shorter padded with zeros, then the L1 distance. ULD's closed form of the Wasserstein-1
    distance under its cost, which ignores token identity: zero for laws equal up to a renaming."""
    width = max(p_teacher.shape[-1], p_student.shape[-1])

    def sorted_padded(p):
        return torch.nn.functional.pad(p.sort(dim=-1, descending=True).values, (0, width - p.shape[-1]))

    return (sorted_padded(p_teacher) - sorted_padded(p_student)).abs().sum(-1)


def unreached_ids(id_map: torch.Tensor, student_vocab: int) -> torch.Tensor:
    """[student_vocab] bool: the student ids no teacher token maps to (computed once per pair)."""
    unreached = torch.ones(student_vocab, dtype=torch.bool)
    unreached[id_map[id_map >= 0]] = False
    return unreached


def hybrid_loss(student_logp, teacher_ids, teacher_logp, id_map, uld_weight: float) -> torch.Tensor:
    """GOLD's hybrid over N aligned positions: exact forward KL on shared tokens, ULD on the rest.

    student_logp [N, V_student] the student's full log-probs (fp32; temper them before if needed);
    teacher_ids, teacher_logp [N, k] the teacher's recorded top-k in its own vocabulary;
    id_map [V_teacher] from `shared_vocab_map` (injective where >= 0). Mean over the N rows.
    With one tokenizer (id_map the identity) every entry is matched and the result is distill_math's
    "fkl" over the k+1 buckets, as train.objective.answer_loss computes it at temperature 1.
    """
    mapped = id_map.to(teacher_ids.device)[teacher_ids]  # [N, k] the student's id for each entry, or -1
    return mapped_hybrid_loss(student_logp, mapped, with_rest_bucket(teacher_logp.float()), unreached_ids(id_map, student_logp.shape[-1]),
                              uld_weight)


def mapped_hybrid_loss(student_logp, mapped, teacher_buckets, unreached, uld_weight: float, loss: str = "fkl",
                       options: dict | None = None) -> torch.Tensor:
    """`hybrid_loss` as a trainer holding the student's vocabulary alone computes it: the teacher's
    top-k already mapped to student ids (`mapped` [N, k], -1 where its text is no student token), its
    log-probs as k+1 buckets (`teacher_buckets` [N, k+1], the top-k then the rest, as
    distill_math.with_rest_bucket makes them), and `unreached` from `unreached_ids`. `loss` names the
    divergence over the shared buckets, any of distill_math.DISTILL_LOSSES (each is 0 x log 0 safe for
    the emptied buckets), with its `options`. With every entry matched and nothing unreached, this is
    exactly that loss over the k+1 buckets."""
    matched = mapped >= 0
    rows = torch.ones(mapped.shape[0], device=student_logp.device)
    k = mapped.shape[-1]
    teacher_top, teacher_rest = teacher_buckets[..., :k].float(), teacher_buckets[..., k:].float()

    # Shared tokens: the divergence over k+1 buckets. An unmatched entry gets no bucket of its own (EMPTY
    # on both sides adds 0): its teacher mass moves to the teacher's rest, and whatever the student puts
    # on that text, through tokens the map does not reach, falls in the student's own rest.
    student = with_rest_bucket(student_logp.gather(-1, mapped.clamp(min=0)).masked_fill(~matched, EMPTY))
    unmatched_mass = teacher_top.masked_fill(matched, float("-inf")).logsumexp(-1, keepdim=True)  # no gradient: the teacher's
    teacher = torch.cat([teacher_top.masked_fill(~matched, EMPTY), torch.logaddexp(teacher_rest, unmatched_mass)], dim=-1)
    shared = DISTILL_LOSSES[loss](student, teacher, rows, {"temperature": 1.0, "beta": 0.5, "alpha": 0.1, **(options or {})})

    # The rest: ULD between the teacher's unmatched top-k probabilities and the student's k largest
    # probabilities among tokens no teacher token maps to. Only k on the student side: the teacher's
    # unmatched mass beyond its top-k is unknown, and comparing more would push those student tokens
    # towards zero. Neither side is renormalised, so the unmatched masses must agree too.
    unreached = unreached.to(student_logp.device)
    student_rest = student_logp.masked_fill(~unreached, EMPTY).topk(min(k, student_logp.shape[-1]), dim=-1).values.exp()
    return shared + uld_weight * masked_mean(uld_distance(teacher_top.exp().masked_fill(matched, 0.0), student_rest), rows)


def uld_loss(student_logp, targets, teacher_buckets, uld_weight: float) -> torch.Tensor:
    """ULD's own loss (Boizard et al., arXiv 2402.12030) over N aligned positions: cross-entropy on the
    answer's tokens (`targets` [N], student ids) plus `uld_weight` x the sorted-probability distance
    between the teacher's whole recorded top-k (`teacher_buckets` [N, k+1], its rest bucket unused)
    and the student's k largest probabilities, token identities ignored."""
    k = teacher_buckets.shape[-1] - 1
    rows = torch.ones(targets.shape[0], device=student_logp.device)
    cross_entropy = -student_logp.gather(-1, targets[:, None])[:, 0]
    student_top = student_logp.topk(min(k, student_logp.shape[-1]), dim=-1).values.exp()
    distance = uld_distance(teacher_buckets[..., :k].float().exp(), student_top)
    return masked_mean(cross_entropy, rows) + uld_weight * masked_mean(distance, rows)
