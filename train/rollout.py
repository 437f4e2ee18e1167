"""The rollout side of distillation: one Ray actor that keeps the teacher and the student generation
actor alive for the whole run, makes each step's training records, and takes the trainer's weights.

Every record is one (prompt, response) pair with what the loss needs at each response position:
the teacher's log-prob of the actual token and its top-k, taken from generation where the teacher
already scored the position (SWITCH, SKD, student samples) and from one plain teacher pass only
where it did not (ground-truth answers).
"""
import dataclasses
import threading
import time
from functools import wraps

import ray

from actors.models import eos_ids, load_tokenizer
from actors.pair import start_pair, stop_pair
from actors.revival import Revival
from actors.switch_controller import SwitchController, position_bucket
from actors.weights import Packet
from studyhall.config import Config, SwitchConfig
from studyhall.prompts import PromptItem
from studyhall.threads import pair_contends_with_trainer
from studyhall.unlikelihood import OWN_GREEDY
from train.batches_ahead import BatchesAhead
from train.cross_vocab import CrossPair, VocabBridge
from train.data import Example, load_references, prompt_token_ids, render_prompt, save_references
from train.methods import Need, make_method
from train.phases import split_wait

# The teacher writes nothing when tau exceeds any JS value (at most ln 2 < 1), yet still scores
# every block: student samples come with the teacher's log-probs for free.
STUDENT_ONLY_TAU = 1.0e3
# Response positions per chunk of full teacher distributions on their way to the student actor.
KL_CHUNK_POSITIONS = 256


def engine_settings(switch: SwitchConfig, mode: str, seed: int) -> SwitchConfig:
    """The SWITCH engine's settings for each kind of sample a method asks for."""
    modes = {
        "switch": {},
        "adaswitch": {"schedule": "adaptive"},  # one token at a time (SwitchConfig.one_token_rounds)
        "skd": {"divergence": "skd"},
        # One model writes every token of these two, so they run in blocks: every drafted token stands,
        # blocks grow to gamma_max, and the other model scores each in one forward.
        "student": {"divergence": "js", "schedule": "constant", "tau0": STUDENT_ONLY_TAU, "mode": "block"},
        "teacher": {"divergence": "js", "schedule": "constant", "tau0": 0.0, "mode": "block"},  # any JS > 0: the teacher's token
        # train.unlikelihood's records: the student's greedy answers, where its loops show (studyhall/unlikelihood.py)
        OWN_GREEDY: {"divergence": "js", "schedule": "constant", "tau0": STUDENT_ONLY_TAU, "mode": "block", "sample": False},
    }
    return dataclasses.replace(switch, seed=seed, **modes[mode])


def batch_pipeline_groups(cfg: Config) -> int:
    """SWITCH pipeline groups for training batches: switch.pipeline_groups when set; for auto, one
    group when a trainer stepping beside generation would compete with the two models for cores (on
    2 cores, smol switch at max_staleness=1: 9.205 s/step with one group, 9.877 with two; README:
    Distill), else two."""
    if cfg.switch.pipeline_groups:
        return cfg.switch.pipeline_groups
    return 1 if pair_contends_with_trainer(cfg) else 2


def with_models(method):
    """One user of the teacher and student at a time: a batch being made ahead, a scoring, an
    evaluation. The pushed weights are applied first, so the student is the trainer's latest."""
    @wraps(method)
    def exclusive(self, *args, **kwargs):
        with self.models:
            self._apply_pushed()
            return method(self, *args, **kwargs)
    return exclusive


@ray.remote(num_cpus=0, concurrency_groups={"progress": 1})
class Rollout:
    def __init__(self, cfg: Config, train: list[Example], val: list[Example], references_path: str | None, pair_name: str = "",
                 bridge: VocabBridge | None = None):
        """`pair_name` names the teacher and student's placement group, for the driver to free if
        this actor dies (pair.release_group). `bridge`: the pair's tokenizers differ, and records are
        made as train/cross_vocab.py says instead of by the SWITCH engine."""
        self.cfg = cfg
        self.tokenizer = load_tokenizer(cfg.student.path, cfg.student.trust_remote_code)
        self.teacher, self.student = start_pair(cfg, pair_name)
        # A teacher or student actor that dies is restarted by Ray; generation and scoring go on once
        # it is back, the student with the last weights the trainer pushed.
        self.revival = Revival.for_pair(self.teacher, self.student, cfg)
        self.revival.on_restart.append(self._restore_weights)
        # asked once, right after start_pair loaded it: a restarted student has the same spec, so dtype
        self.student_dtype = ray.get(self.student.info.remote())["dtype"].removeprefix("torch.")
        self.teacher_dtype = ray.get(self.teacher.info.remote())["dtype"].removeprefix("torch.")
        # Weights: the trainer's pushes wait as `pushed` until the student is between batches; then
        # they are applied, and kept as `applied` for a restarted student actor to take again.
        self.models = threading.RLock()
        self.weights_lock = threading.Lock()
        self.pushed: tuple | None = None  # (ObjectRef, Packet) not yet applied
        self.applied: Packet | None = None
        self.weights_step = 0  # the optimizer step of the student's weights
        self.eos = eos_ids(self.tokenizer, cfg.teacher.path) | eos_ids(self.tokenizer, cfg.student.path)
        self.cross = None
        if bridge is not None:
            teacher_tok = load_tokenizer(cfg.teacher.path, cfg.teacher.trust_remote_code)
            self.cross = CrossPair(self.teacher, self.student, self.revival, teacher_tok, self.tokenizer, bridge,
                                   eos_ids(teacher_tok, cfg.teacher.path), eos_ids(self.tokenizer, cfg.student.path))
        self.train, self.val = train, val
        self.examples_by_id = {e.id: e for e in train + val}
        self.references_path = references_path
        self.references = dict(load_references(references_path) or {}) if references_path else {}
        self.references.update({e.id: e.response for e in train + val if e.response is not None})
        self.method = make_method(cfg, train)
        self.batch_groups = batch_pipeline_groups(cfg)
        self.batch_rows_by_group: dict[int, int] = {}  # SWITCH pipeline group -> training-batch rows it generated
        self.batch_cache: tuple[int, list] | None = None
        self.ahead = BatchesAhead(self._make_batch, cfg.train.max_staleness, cfg.train.steps)
        self.last_step = 0  # the highest step whose batch a trainer asked for
        self.failures: list[dict] = []  # worker groups Ray Train replaced, and the steps each redid
        self.stop_reason: str | None = None
        self.staleness: dict[int, int] = {}  # step -> optimizer steps its batch's weights lagged the trainer's
        self.generation_seconds: dict[int, float] = {}  # step -> seconds spent making its batch
        self.metrics: list[dict] = []
        self.val_kl: dict[str, dict] = {}
        self.counts = {"reused_positions": 0, "extra_pass_positions": 0, "extra_pass_seconds": 0.0,
                       "generation_seconds": 0.0, "generated_tokens": 0,
                       "weight_loads": 0, "weight_load_seconds": 0.0, "weight_packet_mb": 0.0}
        self.position_tokens: dict[str, int] = {}
        self.position_teacher: dict[str, int] = {}

    # ---- the trainer's side ----
    def batch(self, step: int, rank: int, world: int) -> list[dict]:
        """This rank's share of step `step`'s records; the first rank to ask gets the whole batch
        (made ahead, with max_staleness >= 1), and the next ones are started."""
        if not self.batch_cache or self.batch_cache[0] != step:
            self.batch_cache = (step, self.ahead.get(step))
        self.last_step = max(self.last_step, step)
        records = self.batch_cache[1]
        distill = [r for r in records if r.get("source") != OWN_GREEDY]
        own = [r for r in records if r.get("source") == OWN_GREEDY]
        return distill[rank::world] + own[rank::world]

    @with_models
    def _make_batch(self, step: int) -> list[dict]:
        """Step `step`'s records, with the latest weights the trainer pushed: it pushed step s-1's
        before asking for step s, so a batch made while step s trains has staleness 1."""
        self.staleness[step] = step - 1 - self.weights_step
        started = time.perf_counter()
        n = self.cfg.train.global_batch
        needs = self.method.plan(step, n)
        seed = self.method.seed(step)
        records = self.method.assemble(needs, [self.records_for(need, seed) for need in needs])
        if self.cfg.train.unlikelihood > 0:  # the student's own greedy answers to the same prompts
            records += self.records_for(Need(OWN_GREEDY, self.method.examples(step, n)), seed)
        self.generation_seconds[step] = time.perf_counter() - started
        return records

    def trainer_started(self, step: int) -> bool:
        """A worker group starts at `step`. True when it replaces one that failed (this rollout
        already served it steps): the steps past `step` are redone and their metrics dropped."""
        replaced = self.last_step > 0
        if replaced:
            self.ahead.drop()  # made with weights the replacement does not have
            self.batch_cache = None
            self.failures.append({"resumed_at_step": step, "failed_during_step": self.last_step,
                                  "steps_redone": self.last_step - step})
            self.metrics = [m for m in self.metrics if m["step"] <= step]
            self.last_step = step
        return replaced

    def stop(self, reason: str) -> None:
        """The trainer ended the run on purpose (e.g. a non-finite loss); the driver reports why."""
        self.stop_reason = reason

    def stopped(self) -> str | None:
        return self.stop_reason

    def log_metrics(self, metrics: dict) -> None:
        metrics["phases"] = split_wait(metrics["phases"], self.generation_seconds.get(metrics["step"], 0.0))
        self.metrics.append(metrics)

    def log_val_kl(self, when: str, step: int, value: float) -> None:
        self.val_kl[when] = {"step": step, "kl": round(value, 5)}

    @ray.method(concurrency_group="progress")
    def progress(self) -> list[dict]:
        """The trainer's metrics so far; answered while a batch is being generated."""
        return list(self.metrics)

    def weights_dtype(self) -> str:
        """The student generation actor's dtype ("float32", "bfloat16"): the weights travel in it."""
        return self.student_dtype

    def push_weights(self, sent: list) -> int:
        """The trainer's weights: `[ref]`, the ObjectRef of an actors.weights.Packet the trainer put
        (in a list, so Ray hands over the reference and the arrays stay where they are). Kept until the
        student is between batches, so a push never waits for generation and a batch never mixes weights."""
        ref = sent[0]
        packet = ray.get(ref)  # no copy: the arrays are read where the trainer put them
        with self.weights_lock:
            self.pushed = (ref, packet)
        return packet.step

    def _apply_pushed(self) -> None:
        """Give the student the last pushed weights, if it does not have them yet."""
        with self.weights_lock:
            pushed, self.pushed = self.pushed, None
        if pushed is None:
            return
        started = time.perf_counter()
        ref, packet = pushed
        self.revival.call(self.cfg.switch, lambda: self._load_student(ref, packet))
        # Held here, the arrays stay in the object store after the trainer that put them ends (its
        # reference dies with it): a restarted student takes them again, e.g. for the after-evaluation.
        self.applied, self.weights_step = packet, packet.step
        self.counts["weight_loads"] += 1
        self.counts["weight_load_seconds"] += time.perf_counter() - started
        self.counts["weight_packet_mb"] = packet.nbytes / 2 ** 20

    def _load_student(self, ref, packet: Packet) -> None:
        """The student loads the packet straight from the trainer's object, with no copy made here; or,
        once that object is lost with its owner (a trainer worker that ended, on another node), from
        the arrays held here (Ray puts a copy of them for the call)."""
        try:
            ray.get(self.student.load_weights.remote(ref))
        except ray.exceptions.ObjectLostError:
            ray.get(self.student.load_weights.remote(packet))

    def _restore_weights(self, role: str, actor) -> None:
        if role == "student" and self.applied is not None:
            ray.get(actor.load_weights.remote(self.applied))

    @with_models
    def generation_weights(self) -> dict:
        """The step and digest of the weights the student generates (and is evaluated) with."""
        return self.revival.call(self.cfg.switch, lambda: ray.get(self.student.weights_digest.remote()))

    def observe_val_loss(self, step: int, loss: float) -> None:
        self.method.observe_val_loss(step, loss)

    @with_models
    def val_records(self) -> list[dict]:
        """Held-out references with teacher log-probs: DistiLLM's validation loss is measured on them."""
        if not hasattr(self, "_val_records"):
            self._val_records = self.score_data(self.val, count=False)
        return self._val_records

    # ---- the records methods ask for ----
    def records_for(self, need: Need, seed: int) -> list[dict]:
        """One record per example of `need`, in its order, from its source (train.methods.SOURCES)."""
        if need.source in ("data", "scored_data"):
            return self.data_records(need.examples, with_teacher=need.source == "scored_data")
        return self.run_engine(need.source, need.examples, seed)

    def items(self, examples: list[Example]) -> list[PromptItem]:
        return [PromptItem(i, e.id, render_prompt(self.tokenizer, e), prompt_token_ids(self.tokenizer, e))
                for i, e in enumerate(examples)]

    def run_engine(self, mode: str, examples: list[Example], seed: int, settings: SwitchConfig | None = None) -> list[dict]:
        """Generate one response per example with the SWITCH engine in `mode`; records in input order.
        Without `settings` (a method's training batch), the engine runs the batch pipeline groups."""
        training_batch = settings is None
        settings = settings or dataclasses.replace(engine_settings(self.cfg.switch, mode, seed), pipeline_groups=self.batch_groups)
        if self.cross:
            return self.cross_records(mode, examples, settings)
        self.revival.call(settings, lambda: ray.get([a.configure.remote(settings) for a in (self.teacher, self.student)]))
        controller = SwitchController(self.teacher, self.student, settings, self.eos, self.revival)
        done: dict[int, dict] = {}
        stats = controller.run(self.items(examples), on_finish=lambda seq: done.__setitem__(seq.index, seq.to_record("")))
        self.counts["generation_seconds"] += stats.seconds
        self.counts["generated_tokens"] += stats.tokens
        if training_batch:
            for group, rows in stats.rows_by_group.items():
                self.batch_rows_by_group[group] = self.batch_rows_by_group.get(group, 0) + rows
        records = [done[i] for i in range(len(examples))]
        for r in records:
            r["source"] = mode
            if mode == OWN_GREEDY:
                continue  # the unlikelihood reads no teacher log-probs
            self.counts["reused_positions"] += len(r["token_ids"])
            if mode in ("switch", "skd", "adaswitch"):
                for t, teacher in enumerate(r["from_teacher"]):
                    bucket = position_bucket(t)
                    self.position_tokens[bucket] = self.position_tokens.get(bucket, 0) + 1
                    self.position_teacher[bucket] = self.position_teacher.get(bucket, 0) + int(teacher)
        return records

    def cross_records(self, mode: str, examples: list[Example], settings: SwitchConfig) -> list[dict]:
        """run_engine's records for a pair whose tokenizers differ: one model writes alone, then the
        teacher scores the text (train/cross_vocab.py). The teacher's answers become student tokens."""
        started = time.perf_counter()
        writer = "teacher" if mode == "teacher" else "student"
        answers = self.cross.write(writer, examples, settings)
        self.counts["generation_seconds"] += time.perf_counter() - started
        self.counts["generated_tokens"] += sum(map(len, answers))
        if writer == "teacher":
            answers = [self.response_ids(self.cross.text("teacher", a)) for a in answers]
        records = [{"prompt_id": e.id, "prompt_token_ids": prompt_token_ids(self.tokenizer, e), "token_ids": ids, "source": mode}
                   for e, ids in zip(examples, answers)]
        if mode != OWN_GREEDY:  # the unlikelihood reads no teacher log-probs; across tokenizers every other record has a pass
            self._teacher_pass(records, settings=settings)
        return records

    def response_ids(self, text: str) -> list[int]:
        """A reference answer as the student's tokens, ended by EOS, cut to the answer budget."""
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"][: self.cfg.switch.max_new_tokens - 1]
        return ids + [self.tokenizer.eos_token_id]

    def reference(self, examples: list[Example]) -> list[str]:
        """Reference answers; ones the data lacks are written by the teacher once and cached on disk."""
        missing = [e for e in examples if e.id not in self.references]
        if missing:
            settings = dataclasses.replace(engine_settings(self.cfg.switch, "teacher", self.cfg.switch.seed),
                                           temperature=0.7, top_p=0.9)  # a reference should be a good answer
            saved = dict(self.counts)  # writing references is data preparation, not training records
            if self.cross:  # the teacher's whole answer, not its cut to the student's answer budget
                texts = [self.cross.text("teacher", a) for a in self.cross.write("teacher", missing, settings)]
            else:
                texts = [self.tokenizer.decode(r["token_ids"], skip_special_tokens=True).strip()
                         for r in self.run_engine("teacher", missing, 0, settings)]
            self.references.update({e.id: text for e, text in zip(missing, texts)})
            self.counts = saved
            if self.references_path:
                save_references(self.references_path, self.references)
        return [self.references[e.id] for e in examples]

    def data_records(self, examples: list[Example], with_teacher: bool) -> list[dict]:
        records = []
        for e, text in zip(examples, self.reference(examples)):
            records.append({"prompt_id": e.id, "prompt_token_ids": prompt_token_ids(self.tokenizer, e),
                            "token_ids": self.response_ids(text), "source": "data"})
        if with_teacher:
            self._teacher_pass(records)
        return records

    def score_data(self, examples: list[Example], count: bool = True) -> list[dict]:
        records = self.data_records(examples, with_teacher=False)
        self._teacher_pass(records, count)
        return records

    def _score_with_teacher(self, records: list[dict], settings: SwitchConfig | None = None) -> tuple[list[dict], float]:
        """A plain teacher forward over the records' responses (at the training temperature, or that of
        `settings`), and its seconds."""
        settings = settings or engine_settings(self.cfg.switch, "switch", self.cfg.switch.seed)
        if self.cross:  # the teacher reads the text in its own tokens
            started = time.perf_counter()
            scored = [dict(r) for r in records]
            self.cross.score(scored, [self.examples_by_id[r["prompt_id"]] for r in records], settings)
            return scored, time.perf_counter() - started
        sequences = [(r["prompt_token_ids"], r["token_ids"]) for r in records]

        def score():
            ray.get(self.teacher.configure.remote(settings))
            return ray.get(self.teacher.score_sequences.remote(sequences))

        started = time.perf_counter()
        scored = self.revival.call(settings, score)
        return scored, time.perf_counter() - started

    def _teacher_pass(self, records: list[dict], count: bool = True, settings: SwitchConfig | None = None) -> None:
        """The one extra teacher forward, for responses the teacher did not score while generating."""
        scored, seconds = self._score_with_teacher(records, settings)
        if count:
            self.counts["extra_pass_seconds"] += seconds
            self.counts["extra_pass_positions"] += sum(len(r["token_ids"]) for r in records)
        for r, s in zip(records, scored):
            r.update(s)

    # ---- evaluation and the report ----
    @with_models
    def sample_student(self, examples: list[Example], samples: int, seed: int) -> list[dict]:
        """`samples` student answers per example (sampled at T = 1, so teacher log-probs are the true NLL)."""
        settings = dataclasses.replace(engine_settings(self.cfg.switch, "student", seed), temperature=1.0, top_p=1.0, sample=True)
        references = self.reference(examples)
        repeated = [e for e in examples for _ in range(samples)]
        saved = dict(self.counts)
        records = self.run_engine("student", repeated, seed, settings)
        self.counts = saved  # evaluation is not training data
        by_id = {e.id: (text, self.reference_tokens(text)) for e, text in zip(examples, references)}
        return [{"prompt_id": r["prompt_id"], "prediction": self.tokenizer.decode(r["token_ids"], skip_special_tokens=True).strip(),
                 "reference": by_id[r["prompt_id"]][0], "reference_tokens": by_id[r["prompt_id"]][1],
                 "teacher_logprob": r["teacher_logprob"]} for r in records]

    @with_models
    def greedy_answers(self, examples: list[Example], role: str = "student") -> list[dict]:
        """One greedy answer per example from `role` ("student" or "teacher"), as a user's
        `generate(do_sample=False)` writes it, with the teacher's log-probs of its tokens at T = 1
        (so their mean is the teacher's NLL of the answer), in the same form as sample_student's."""
        settings = dataclasses.replace(engine_settings(self.cfg.switch, role, self.cfg.switch.seed), temperature=1.0, top_p=1.0, sample=False)
        references = self.reference(examples)
        saved = dict(self.counts)
        records = self.run_engine(role, examples, self.cfg.switch.seed, settings)
        self.counts = saved  # evaluation is not training data
        return [{"prompt_id": e.id, "prediction": self.tokenizer.decode(r["token_ids"], skip_special_tokens=True).strip(),
                 "reference": text, "reference_tokens": self.reference_tokens(text), "teacher_logprob": r["teacher_logprob"]}
                for e, text, r in zip(examples, references, records)]

    def reference_tokens(self, text: str) -> int:
        """A reference's length in the student's tokens, uncut: what the length buckets go by."""
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    @with_models
    def heldout_kl(self, examples: list[Example]) -> list[dict]:
        """Full-vocabulary KL(teacher || student) and top-1 agreement on each example's reference
        (as training sees it: cut to the answer budget, ended by EOS), with the generation actor's
        weights of this moment. Per reference: {"prompt_id", "reference_tokens", "tokens", "kl_sum", "top1"}.

        The teacher's distributions go straight to the student actor, a chunk at a time (each ref is
        ~50 MB at a 49k vocabulary), the teacher working on the next chunk while the student uses one;
        only the sums come back here. Across tokenizers the full-vocabulary KL is not defined: none."""
        if self.cross:
            return []
        records = self.data_records(examples, with_teacher=False)
        chunks, size = [[]], 0
        for r in records:
            if chunks[-1] and size + len(r["token_ids"]) > KL_CHUNK_POSITIONS:
                chunks.append([])
                size = 0
            chunks[-1].append((r["prompt_token_ids"], r["token_ids"]))
            size += len(r["token_ids"])

        def kl_sums():
            sums, in_flight = [], []
            for chunk in chunks:
                teacher_logp = self.teacher.full_logprobs.remote(chunk)
                in_flight.append(self.student.kl_from.remote(chunk, teacher_logp))
                if len(in_flight) == 2:  # at most two chunks' distributions in the object store at once
                    sums += ray.get(in_flight.pop(0))
            for ref in in_flight:
                sums += ray.get(ref)
            return sums

        sums = self.revival.call(self.cfg.switch, kl_sums)
        texts = self.reference(examples)
        return [{"prompt_id": e.id, "reference_tokens": self.reference_tokens(text), **s} for e, text, s in zip(examples, texts, sums)]

    @with_models
    def measure_second_pass(self, records: list[dict]) -> dict:
        """What reusing generation's teacher log-probs saves: rescore some records with a plain teacher
        pass, time it, and check the recorded log-probs equal the rescored ones."""
        if not records or "teacher_logprob" not in records[0] or self.cross:  # across tokenizers every record has its pass
            return {}
        rescored, seconds = self._score_with_teacher(records)
        positions = sum(len(r["token_ids"]) for r in records)
        diff = max(abs(a - b) for r, s in zip(records, rescored) for a, b in zip(r["teacher_logprob"], s["teacher_logprob"]))
        per_position = seconds / max(positions, 1)
        return {"second_pass_seconds_per_position": round(per_position, 6),
                "recorded_vs_rescored_max_abs_diff": round(diff, 5),
                "saved_seconds_estimate": round(per_position * self.counts["reused_positions"], 2)}

    def close(self) -> None:
        """End both model actors and free their placement group (it would outlive a killed Rollout)."""
        self.ahead.close()
        stop_pair(self.teacher, self.student)

    def last_batch(self) -> list[dict]:
        return self.batch_cache[1] if self.batch_cache else []

    def summary(self) -> dict:
        by_position = {b: round(self.position_teacher[b] / n, 4) for b, n in
                       sorted(self.position_tokens.items(), key=lambda kv: int(kv[0].split("-")[0]))}
        stale = list(self.staleness.values()) or [0]
        return {"counts": {k: round(v, 3) if isinstance(v, float) else v for k, v in self.counts.items()},
                "generation_dtype": {"teacher": self.teacher_dtype, "student": self.student_dtype},
                "intervention_by_position": by_position,
                "val_kl_to_teacher": self.val_kl,
                "batch_pipeline_groups": {"groups": self.batch_groups, "rows_by_group": dict(sorted(self.batch_rows_by_group.items()))},
                "staleness_steps": {"mean": round(sum(stale) / len(stale), 3), "max": max(stale),
                                    "per_step": {str(s): v for s, v in sorted(self.staleness.items())}},
                "faults": {"worker_group_failures": len(self.failures),
                           "steps_redone": sum(f["steps_redone"] for f in self.failures),
                           "failures": list(self.failures), "generation": self.revival.summary()},
                "method_state": self.method.state()}
