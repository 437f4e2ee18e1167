"""The record factory: one record per example, made by the SWITCH engine, by one model writing alone
(across tokenizers, and the student's greedy answers for the unlikelihood term), or from a reference
answer, each with what the loss reads at every answer position: the teacher's log-prob of the actual
token and its top-k (none for the unlikelihood term's answers unless train.unlikelihood_teacher).

The teacher's log-probs come from generation wherever the teacher already scored the position
(SWITCH, SKD, student samples) and from one plain teacher pass only where it did not (reference
answers, and every record across tokenizers). Only training batches are counted in the run's
generation figures; references, evaluation samples and rescoring are not training data.
"""
import time

import ray

from actors.alone import answer_alone
from actors.switch_controller import SwitchController
from studyhall.config import Config, SwitchConfig
from studyhall.engine_settings import engine_settings
from studyhall.prompts import PromptItem
from studyhall.record import Record
from studyhall.unlikelihood import OWN_GREEDY
from train.cross_vocab import CrossPair
from train.data import Example, load_references, prompt_token_ids, render_prompt, save_references
from train.methods import Need, loss_for

# What each kind of sample a method asks for changes in the run's engine settings. One model writes
# every token of "student" and "teacher": the other scores each, so the records carry the teacher's
# log-probs (and the JS divergence, e.g. to calibrate tau0) whoever wrote them. OWN_GREEDY's answers
# are the student's alone, unscored (RecordMaker.own_greedy_records).
SAMPLE_KINDS = {
    "switch": {},
    "adaswitch": {"schedule": "adaptive"},  # one token at a time (SwitchConfig.one_token_rounds)
    "skd": {"divergence": "skd"},
    "student": {"writer": "student", "divergence": "js", "schedule": "constant"},
    "teacher": {"writer": "teacher", "divergence": "js", "schedule": "constant"},
    # train.unlikelihood's records: the student's greedy answers, where its loops show (studyhall/unlikelihood.py)
    OWN_GREEDY: {"writer": "student", "divergence": "js", "schedule": "constant", "sample": False},
}
GATED_KINDS = ("switch", "skd", "adaswitch")  # the teacher's share by answer position is counted for these


def sample_settings(cfg: Config, kind: str, seed: int, beside_trainer: bool = False, **changes) -> SwitchConfig:
    """The engine's settings for one kind of sample (SAMPLE_KINDS) at the run's answer length.
    `beside_trainer`: a training batch, made while the trainer steps (it may take one pipeline group)."""
    return engine_settings(cfg, beside_trainer, cfg.train.answer_tokens, seed=seed, **{**SAMPLE_KINDS[kind], **changes})


class RecordMaker:
    def __init__(self, cfg: Config, tokenizer, teacher, student, revival, eos: set[int], examples: list[Example],
                 references_path: str | None, cross: CrossPair | None):
        """`cross`: the pair's tokenizers differ, and records are made as train/cross_vocab.py says."""
        self.cfg, self.tokenizer, self.teacher, self.student = cfg, tokenizer, teacher, student
        self.revival, self.eos, self.cross = revival, eos, cross
        self.examples_by_id = {e.id: e for e in examples}
        self.references_path = references_path
        self.references = dict(load_references(references_path) or {}) if references_path else {}
        self.references.update({e.id: e.response for e in examples if e.response is not None})
        # train.unlikelihood_teacher: the teacher scores the student's greedy answers, for a loss that reads it (not sft's)
        self.score_own_greedy = cfg.train.unlikelihood_teacher and loss_for(cfg.train.method, cfg.train.loss) != "ce"
        # the run's settings outside training batches: rescoring, and what a restarted actor is configured with
        self.settings = sample_settings(cfg, "switch", cfg.seed)
        # the autos as resolved for training batches: one pipeline group where the trainer shares the cores
        batch_engine = sample_settings(cfg, "switch", cfg.seed, beside_trainer=True)
        self.batch_groups, self.batch_mode = batch_engine.pipeline_groups, batch_engine.mode
        self.batch_rows_by_group: dict[int, int] = {}  # SWITCH pipeline group -> training-batch rows it generated
        self.counts = {"reused_positions": 0, "extra_pass_positions": 0, "extra_pass_seconds": 0.0,
                       "generation_seconds": 0.0, "generated_tokens": 0}
        self.position_tokens: dict[str, int] = {}
        self.position_teacher: dict[str, int] = {}

    def records_for(self, need: Need, seed: int) -> list[Record]:
        """A training batch's records for one Need, in its order, from its source (train.methods.SOURCES)."""
        if need.source in ("data", "scored_data"):
            return self.data_records(need.examples, with_teacher=need.source == "scored_data")
        return self.run_engine(need.source, need.examples, seed)

    def items(self, examples: list[Example]) -> list[PromptItem]:
        return [PromptItem(i, e.id, render_prompt(self.tokenizer, e), prompt_token_ids(self.tokenizer, e))
                for i, e in enumerate(examples)]

    def run_engine(self, kind: str, examples: list[Example], seed: int, settings: SwitchConfig | None = None) -> list[Record]:
        """One answer per example for `kind`, in input order: by the SWITCH engine, or by one model alone
        (across tokenizers; the student's greedy answers for the unlikelihood term). Without `settings`
        this is a training batch: counted, at the batch pipeline groups."""
        training_batch = settings is None
        settings = settings or sample_settings(self.cfg, kind, seed, beside_trainer=True)
        if self.cross:
            return self.cross_records(kind, examples, settings, training_batch)
        if kind == OWN_GREEDY:
            return self.own_greedy_records(examples, settings, training_batch)
        self.revival.call(settings, lambda: ray.get([a.configure.remote(settings) for a in (self.teacher, self.student)]))
        controller = SwitchController(self.teacher, self.student, settings, self.eos, self.revival)
        done: dict[int, Record] = {}
        stats = controller.run(self.items(examples), on_finish=lambda seq: done.__setitem__(seq.index, Record.of(seq.__dict__, kind)))
        records = [done[i] for i in range(len(examples))]
        if training_batch:
            self._count_batch(kind, records, stats)
        return records

    def _count_batch(self, kind: str, records: list[Record], stats) -> None:
        self.counts["generation_seconds"] += stats.seconds
        self.counts["generated_tokens"] += stats.tokens
        for group, rows in stats.rows_by_group.items():
            self.batch_rows_by_group[group] = self.batch_rows_by_group.get(group, 0) + rows
        self.counts["reused_positions"] += sum(len(r.token_ids) for r in records)
        if kind in GATED_KINDS:  # the controller counted the teacher's share by answer position
            for bucket, n in stats.position_tokens.items():
                self.position_tokens[bucket] = self.position_tokens.get(bucket, 0) + n
                self.position_teacher[bucket] = self.position_teacher.get(bucket, 0) + stats.position_teacher.get(bucket, 0)

    def own_greedy_records(self, examples: list[Example], settings: SwitchConfig, training_batch: bool) -> list[Record]:
        """The student's greedy answers, written by the student alone (HF `generate` on its actor, with
        its KV cache): the teacher neither drafts nor waits for them, and no SWITCH round runs per token.
        The teacher scores them in one pass only with train.unlikelihood_teacher."""
        prompts = [prompt_token_ids(self.tokenizer, e) for e in examples]
        answers = self.written_alone(lambda: answer_alone(self.revival, self.student, prompts, sorted(self.eos), settings), training_batch)
        records = [Record(e.id, p, ids, OWN_GREEDY, from_teacher=[False] * len(ids)) for e, p, ids in zip(examples, prompts, answers)]
        if self.score_own_greedy:  # the distillation loss reads them too
            self.teacher_pass(records, count=training_batch)
        return records

    def cross_records(self, kind: str, examples: list[Example], settings: SwitchConfig, training_batch: bool) -> list[Record]:
        """run_engine's records for a pair whose tokenizers differ: one model writes alone, then the
        teacher scores the text (train/cross_vocab.py). The teacher's answers become student tokens."""
        writer = "teacher" if kind == "teacher" else "student"
        answers = self.written_alone(lambda: self.cross.write(writer, examples, settings), training_batch)
        if writer == "teacher":
            answers = [self.response_ids(self.cross.text("teacher", a)) for a in answers]
        # one model wrote every token: the unlikelihood term reads who (studyhall/unlikelihood.repeat_marks)
        records = [Record(e.id, prompt_token_ids(self.tokenizer, e), ids, kind, from_teacher=[writer == "teacher"] * len(ids))
                   for e, ids in zip(examples, answers)]
        if kind != OWN_GREEDY or self.score_own_greedy:  # across tokenizers every record the loss reads has a pass
            self.teacher_pass(records, count=training_batch, settings=settings)
        return records

    def written_alone(self, write, training_batch: bool) -> list[list[int]]:
        """`write()`'s answers, one model's alone; a training batch's are counted in the run's generation figures."""
        started = time.perf_counter()
        answers = write()
        if training_batch:
            self.counts["generation_seconds"] += time.perf_counter() - started
            self.counts["generated_tokens"] += sum(map(len, answers))
        return answers

    def response_ids(self, text: str) -> list[int]:
        """A reference answer as the student's tokens, ended by EOS, cut to the answer budget."""
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"][: self.cfg.train.answer_tokens - 1]
        return ids + [self.tokenizer.eos_token_id]

    def reference(self, examples: list[Example]) -> list[str]:
        """Reference answers; ones the data lacks are written by the teacher once (HF `generate` on its
        actor, T=0.7, top-p 0.9) and cached on disk."""
        missing = [e for e in examples if e.id not in self.references]
        if missing:
            settings = sample_settings(self.cfg, "teacher", self.cfg.seed, sample=True, temperature=0.7, top_p=0.9)  # a good answer, whatever switch.sample says
            if self.cross:  # the teacher's whole answer, not its cut to the student's answer budget
                texts = [self.cross.text("teacher", a) for a in self.cross.write("teacher", missing, settings)]
            else:  # the teacher alone: a reference keeps only its text, so the student scores none of it
                prompts = [prompt_token_ids(self.tokenizer, e) for e in missing]
                texts = [self.tokenizer.decode(ids, skip_special_tokens=True).strip()
                         for ids in answer_alone(self.revival, self.teacher, prompts, sorted(self.eos), settings)]
            self.references.update({e.id: text for e, text in zip(missing, texts)})
            if self.references_path:
                save_references(self.references_path, self.references)
        return [self.references[e.id] for e in examples]

    def reference_tokens(self, text: str) -> int:
        """A reference's length in the student's tokens, uncut: what the length buckets go by."""
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def data_records(self, examples: list[Example], with_teacher: bool, count: bool = True) -> list[Record]:
        records = []
        for e, text in zip(examples, self.reference(examples)):
            records.append(Record(e.id, prompt_token_ids(self.tokenizer, e), self.response_ids(text), "data"))
        if with_teacher:
            self.teacher_pass(records, count)
        return records

    def score_with_teacher(self, records: list[Record], settings: SwitchConfig | None = None) -> tuple[list[dict], float]:
        """A plain teacher forward over the records' responses (at the training temperature, or that of
        `settings`): per record, its teacher fields (Record.add_scores), and the seconds it took."""
        settings = settings or self.settings
        if self.cross:  # the teacher reads the text in its own tokens
            started = time.perf_counter()
            scored = self.cross.score(records, [self.examples_by_id[r.prompt_id] for r in records], settings)
            return scored, time.perf_counter() - started
        sequences = [(r.prompt_token_ids, r.token_ids) for r in records]

        def score():
            ray.get(self.teacher.configure.remote(settings))
            return ray.get(self.teacher.score_sequences.remote(sequences))

        started = time.perf_counter()
        scored = self.revival.call(settings, score)
        return scored, time.perf_counter() - started

    def teacher_pass(self, records: list[Record], count: bool = True, settings: SwitchConfig | None = None) -> None:
        """The one extra teacher forward, for responses the teacher did not score while generating."""
        scored, seconds = self.score_with_teacher(records, settings)
        if count:
            self.counts["extra_pass_seconds"] += seconds
            self.counts["extra_pass_positions"] += sum(len(r.token_ids) for r in records)
        for r, s in zip(records, scored):
            r.add_scores(s)

    def summary(self) -> dict:
        by_position = {b: round(self.position_teacher[b] / n, 4) for b, n in
                       sorted(self.position_tokens.items(), key=lambda kv: int(kv[0].split("-")[0]))}
        return {"intervention_by_position": by_position,
                "batch_pipeline_groups": {"groups": self.batch_groups, "mode": self.batch_mode,
                                          "rows_by_group": dict(sorted(self.batch_rows_by_group.items()))}}
