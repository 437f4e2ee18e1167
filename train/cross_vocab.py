"""Distillation between a teacher and a student whose tokenizers differ.

The SWITCH engine needs one vocabulary: its two models score each other's tokens. Across tokenizers a
record is made in two passes instead. One model writes its answer alone (LMWorker.generate_alone).
The teacher then reads the answer's text in its own tokens (one plain forward, as for ground-truth
answers), and at each student position that starts after the same text as a teacher token
(studyhall.cross_tokenizer.aligned_positions) its top-k is carried over, each entry mapped to the
student id with the same text, or -1. The trainer reads those positions with GOLD's hybrid loss
(studyhall.cross_tokenizer.mapped_hybrid_loss); the others carry no distillation loss.

SWITCH, AdaSwitch and SKD decide token by token which model writes, comparing the two next-token
laws over one vocabulary and handing the next token to either model; across tokenizers the two
models' positions do not correspond one to one (a word is one token to one and three to the other),
so there is no faithful per-token decision to make, and those methods are refused.
"""
import dataclasses

import ray
import torch

from actors.alone import answer_alone
from actors.models import eos_ids, load_tokenizer, model_config
from studyhall.config import Config, ConfigError
from studyhall.cross_tokenizer import aligned_positions, shared_vocab_map, token_strings, unreached_ids
from train.data import prompt_token_ids

TOKEN_BY_TOKEN = ("switch", "adaswitch", "skd")  # the methods that need one vocabulary
ACROSS_TOKENIZERS = ("sft", "seqkd", "kd", "gkd", "distillm")


@dataclasses.dataclass(frozen=True)
class VocabBridge:
    """What a pair with two tokenizers needs to compare the models' next-token laws, made once."""
    id_map: torch.Tensor  # [teacher model vocab] the student id with the same text, or -1
    unreached: torch.Tensor  # [student model vocab] bool: no teacher token maps here (ULD's side)
    teacher_eos: int  # the end-of-turn id the teacher's tokenization of an answer ends with
    shared: int  # teacher tokens with a student twin


def refuse_token_by_token(method: str, teacher: str, student: str) -> None:
    """The one-line refusal for a method that cannot run across tokenizers."""
    if method in TOKEN_BY_TOKEN:
        raise ConfigError(f"method {method} decides token by token between two models' next-token laws, so it needs one tokenizer; "
                          f"teacher {teacher!r} and student {student!r} tokenize differently: use one of {', '.join(ACROSS_TOKENIZERS)}")


def bridge(teacher_tok, student_tok, teacher_vocab: int, student_vocab: int, teacher_eos: int, student_eos: int) -> VocabBridge:
    """The map between the vocabularies (sized to the models' embedding tables, which may exceed the
    tokenizers), with the teacher's end of turn standing for the student's: the two end an answer alike
    even when their strings differ ("<|im_end|>" and "</s>")."""
    id_map = torch.full((teacher_vocab,), -1, dtype=torch.long)
    strings = shared_vocab_map(token_strings(teacher_tok), token_strings(student_tok))[:teacher_vocab]
    id_map[:len(strings)] = strings
    id_map[id_map == student_eos] = -1  # kept one-to-one
    id_map[teacher_eos] = student_eos
    return VocabBridge(id_map, unreached_ids(id_map, student_vocab), teacher_eos, int((id_map >= 0).sum()))


def end_of_turn(tokenizer, model_path: str) -> int:
    """The id that ends a model's answers: its tokenizer's eos where that is one of its end ids."""
    ends = eos_ids(tokenizer, model_path)
    return tokenizer.eos_token_id if tokenizer.eos_token_id in ends else min(ends)


def pair_bridge(cfg: Config) -> VocabBridge:
    """The bridge between the run's teacher and student."""
    teacher_tok = load_tokenizer(cfg.teacher.path, cfg.teacher.trust_remote_code)
    student_tok = load_tokenizer(cfg.student.path, cfg.student.trust_remote_code)
    return bridge(teacher_tok, student_tok, model_config(cfg.teacher).vocab_size, model_config(cfg.student).vocab_size,
                  end_of_turn(teacher_tok, cfg.teacher.path), end_of_turn(student_tok, cfg.student.path))


def answer_spans(tokenizer, ids: list[int]) -> tuple[str, list[tuple[int, int]]]:
    """The text of answer tokens `ids` and each token's (start, end) in it, from the decoded lengths
    of growing prefixes: the spans of the tokens the model wrote, which a fresh tokenization of the
    text could split otherwise."""
    text, spans, end = "", [], 0
    for i in range(len(ids)):
        text = tokenizer.decode(ids[:i + 1], skip_special_tokens=True)
        spans.append((end, max(end, len(text))))
        end = max(end, len(text))
    return text, spans


def teacher_reading(student_tok, teacher_tok, ids: list[int], student_eos, teacher_eos: int) -> tuple[list[int], list[tuple[int, int]]]:
    """The teacher's tokens for a student answer's text (ended by its end of turn where the student's
    was), and the (teacher index, student index) pairs of tokens that start after the same text."""
    ended = bool(ids) and ids[-1] in student_eos
    text, student_spans = answer_spans(student_tok, ids[:-1] if ended else ids)
    encoded = teacher_tok(text, add_special_tokens=False, return_offsets_mapping=True)
    teacher_ids = encoded["input_ids"] + ([teacher_eos] if ended else [])
    pairs = aligned_positions(encoded["offset_mapping"], student_spans)
    return teacher_ids, pairs + ([(len(teacher_ids) - 1, len(ids) - 1)] if ended else [])


def carry_over(scored: dict, pairs: list[tuple[int, int]], n_student: int, id_map: torch.Tensor) -> dict:
    """The teacher's scoring of its own tokens (`scored`: score_sequences' record) as fields per
    student answer position: its top-k where a pair aligns them, mapped to student ids (-1 where its
    text is no student token), and `aligned`; its log-probs of its own tokens stay as they are (the
    teacher's NLL of the text)."""
    k = len(scored["teacher_topk_ids"][0]) if scored.get("teacher_topk_ids") else 0
    ids, logps, aligned = [[-1] * k for _ in range(n_student)], [[0.0] * k for _ in range(n_student)], [False] * n_student
    for t, s in pairs:
        ids[s] = id_map[torch.tensor(scored["teacher_topk_ids"][t])].tolist() if k else []
        logps[s] = scored["teacher_topk_logprobs"][t] if k else []
        aligned[s] = True
    return {"teacher_logprob": scored["teacher_logprob"], "teacher_topk_ids": ids, "teacher_topk_logprobs": logps, "aligned": aligned}


class CrossPair:
    """The rollout's generation and teacher scoring when the pair's tokenizers differ."""

    def __init__(self, teacher, student, revival, teacher_tok, student_tok, bridge: VocabBridge, teacher_eos: set, student_eos: set):
        self.teacher, self.student, self.revival = teacher, student, revival
        self.tok = {"teacher": teacher_tok, "student": student_tok}
        self.eos = {"teacher": sorted(teacher_eos), "student": sorted(student_eos)}
        self.bridge = bridge

    def write(self, role: str, examples: list, settings) -> list[list[int]]:
        """`role` alone answers each example, in its own tokens."""
        actor = self.teacher if role == "teacher" else self.student
        prompts = [prompt_token_ids(self.tok[role], e) for e in examples]
        return answer_alone(self.revival, actor, prompts, self.eos[role], settings)

    def text(self, role: str, ids: list[int]) -> str:
        return self.tok[role].decode(ids, skip_special_tokens=True).strip()

    def score(self, records: list, examples: list, settings) -> list[dict]:
        """The teacher's scoring of each record's answer text, carried over to its student tokens (the
        fields Record.add_scores takes)."""
        sequences, pairs = [], []
        for r, e in zip(records, examples):
            teacher_ids, aligned = teacher_reading(self.tok["student"], self.tok["teacher"], r.token_ids, self.eos["student"],
                                                   self.bridge.teacher_eos)
            pairs.append(aligned)
            sequences.append((prompt_token_ids(self.tok["teacher"], e), teacher_ids))

        def score():
            ray.get(self.teacher.configure.remote(settings))
            return ray.get(self.teacher.score_sequences.remote(sequences))

        return [carry_over(s, p, len(r.token_ids), self.bridge.id_map) for r, s, p in zip(records, self.revival.call(settings, score), pairs)]
