"""One training or evaluation record: an answer to a prompt, with what the loss reads at each answer
position. The SWITCH engine, a model writing alone, and a reference answer all make one; the
teacher's scoring fills its teacher fields; collation (train/objective.py) reads it."""
from dataclasses import dataclass, field, fields


@dataclass
class Record:
    prompt_id: str
    prompt_token_ids: list[int]
    token_ids: list[int]  # the answer, in the student's tokens
    # what made it: "data" (a reference answer), "student", "teacher", "switch", "skd", "adaswitch", or
    # studyhall.unlikelihood.OWN_GREEDY (the student's greedy answer, for the unlikelihood term)
    source: str = ""
    # per answer position: the teacher's log-prob of the token, and its top-k ids and log-probs
    teacher_logprob: list[float] = field(default_factory=list)
    teacher_topk_ids: list[list[int]] = field(default_factory=list)
    teacher_topk_logprobs: list[list[float]] = field(default_factory=list)
    # across tokenizers: the positions whose teacher top-k aligns (the loss reads only those); None = every position
    aligned: list[bool] | None = None
    # the SWITCH engine's per-position record: who wrote the token, the divergence and its threshold
    from_teacher: list[bool] = field(default_factory=list)
    divergence: list[float] = field(default_factory=list)
    tau: list[float] = field(default_factory=list)

    @classmethod
    def of(cls, fields_by_name: dict, source: str) -> "Record":
        """A record from a dict of fields (a finished engine Sequence's, say), keeping those a record has."""
        return cls(**{k: v for k, v in fields_by_name.items() if k in RECORD_FIELDS}, source=source)

    def add_scores(self, scored: dict) -> None:
        """The teacher's scoring of this answer (teacher_logprob, teacher_topk_*, and across
        tokenizers aligned), as an actor's score_sequences or cross_vocab.carry_over returns it."""
        for name, value in scored.items():
            if name in RECORD_FIELDS:
                setattr(self, name, value)

    @property
    def length(self) -> int:
        """Prompt and answer tokens."""
        return len(self.prompt_token_ids) + len(self.token_ids)


RECORD_FIELDS = {f.name for f in fields(Record)} - {"source"}
