"""The rollout actor: the generation side of distillation, alive for the whole run.

It holds the teacher and student generation actors (one placement group) and three parts, each in
its own module:
- the trainer's batch source: each step's records, made ahead (train/batches_ahead.py) as the
  method plans them (train/methods.py) by the record factory (train/records.py);
- the weights inbox: the trainer's pushes, applied between batches (train/weights_inbox.py);
- the evaluator the driver calls before and after training (train/evaluator.py).

One user of the models at a time (`with_models`): a batch being made ahead, a scoring, an evaluation.
"""
import threading
import time
from functools import wraps

import ray

from actors.models import eos_ids, load_tokenizer
from actors.pair import start_pair, stop_pair
from actors.revival import Revival
from studyhall.config import Config
from studyhall.unlikelihood import OWN_GREEDY
from train.batches_ahead import BatchesAhead
from train.cross_vocab import CrossPair, VocabBridge
from train.data import Example
from train.evaluator import Evaluator
from train.methods import Need, make_method
from train.phases import split_wait
from train.records import RecordMaker
from train.weights_inbox import WeightsInbox


def with_models(method):
    """One user of the teacher and student at a time. The pushed weights are applied first, so the
    student is the trainer's latest."""
    @wraps(method)
    def exclusive(self, *args, **kwargs):
        with self.models:
            self.inbox.apply()
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
        tokenizer = load_tokenizer(cfg.student.path, cfg.student.trust_remote_code)
        self.teacher, self.student = start_pair(cfg, pair_name)
        # A teacher or student actor that dies is restarted by Ray; generation and scoring go on once
        # it is back, the student with the last weights the trainer pushed.
        self.revival = Revival.for_pair(self.teacher, self.student, cfg)
        self.models = threading.RLock()
        # asked once, right after start_pair loaded it: a restarted actor has the same spec, so dtype
        self.dtypes = {role: ray.get(actor.info.remote())["dtype"].removeprefix("torch.")
                       for role, actor in (("teacher", self.teacher), ("student", self.student))}
        cross = None
        if bridge is not None:
            teacher_tok = load_tokenizer(cfg.teacher.path, cfg.teacher.trust_remote_code)
            cross = CrossPair(self.teacher, self.student, self.revival, teacher_tok, tokenizer, bridge,
                              eos_ids(teacher_tok, cfg.teacher.path), eos_ids(tokenizer, cfg.student.path))
        eos = eos_ids(tokenizer, cfg.teacher.path) | eos_ids(tokenizer, cfg.student.path)
        self.records = RecordMaker(cfg, tokenizer, self.teacher, self.student, self.revival, eos, train + val, references_path, cross)
        self.inbox = WeightsInbox(self.student, self.revival, self.records.settings)
        self.evaluator = Evaluator(self.records)
        self.method = make_method(cfg, train)
        self.val = val
        self.batch_cache: tuple[int, list] | None = None
        self.ahead = BatchesAhead(self._make_batch, cfg.train.max_staleness, cfg.train.steps)
        self.last_step = 0  # the highest step whose batch a trainer asked for
        self.failures: list[dict] = []  # worker groups Ray Train replaced, and the steps each redid
        self.stop_reason: str | None = None
        self.staleness: dict[int, int] = {}  # step -> optimizer steps its batch's weights lagged the trainer's
        self.generation_seconds: dict[int, float] = {}  # step -> seconds spent making its batch
        self.metrics: list[dict] = []
        self.val_kl: dict[str, dict] = {}

    # ---- the trainer's batch source ----
    def batch(self, step: int, rank: int, world: int) -> list[dict]:
        """This rank's share of step `step`'s records; the first rank to ask gets the whole batch
        (made ahead, with max_staleness >= 1), and the next ones are started."""
        if not self.batch_cache or self.batch_cache[0] != step:
            self.batch_cache = (step, self.ahead.get(step))
        self.last_step = max(self.last_step, step)
        records = self.batch_cache[1]
        distill = [r for r in records if r.source != OWN_GREEDY]
        own = [r for r in records if r.source == OWN_GREEDY]
        return distill[rank::world] + own[rank::world]

    @with_models
    def _make_batch(self, step: int) -> list[dict]:
        """Step `step`'s records, with the latest weights the trainer pushed: it pushed step s-1's
        before asking for step s, so a batch made while step s trains has staleness 1."""
        self.staleness[step] = step - 1 - self.inbox.step
        started = time.perf_counter()
        n = self.cfg.train.global_batch
        needs = self.method.plan(step, n)
        seed = self.method.seed(step)
        records = self.method.assemble(needs, [self.records.records_for(need, seed) for need in needs])
        if self.cfg.train.unlikelihood > 0:  # the student's own greedy answers to the same prompts
            records += self.records.records_for(Need(OWN_GREEDY, self.method.examples(step, n)), seed)
        self.generation_seconds[step] = time.perf_counter() - started
        return records

    @with_models
    def write_references(self) -> int:
        """Before the first step, the teacher's answers that any step's batch may read and the cache
        lacks (Method.data_examples), in one pass while no trainer shares the cores, instead of a
        batch's worth beside the trainer at every step. How many it wrote."""
        n, seen = self.cfg.train.global_batch, {}
        for step in range(1, self.cfg.train.steps + 1):
            seen.update((e.id, e) for e in self.method.data_examples(step, n))
        missing = [e for e in seen.values() if e.id not in self.records.references]
        if missing:
            self.records.reference(missing)
        return len(missing)

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

    def observe_val_loss(self, step: int, loss: float) -> None:
        self.method.observe_val_loss(step, loss)

    @with_models
    def val_records(self) -> list[dict]:
        """Held-out references with teacher log-probs: DistiLLM's validation loss is measured on them."""
        if not hasattr(self, "_val_records"):
            self._val_records = self.records.data_records(self.val, with_teacher=True, count=False)
        return self._val_records

    # ---- the weights inbox ----
    def weights_dtype(self) -> str:
        """The student generation actor's dtype ("float32", "bfloat16"): the weights travel in it."""
        return self.dtypes["student"]

    def push_weights(self, sent: list) -> int:
        """The trainer's weights (train/weights_inbox.py): kept until the student is between batches."""
        return self.inbox.put(sent)

    @with_models
    def generation_weights(self) -> dict:
        """The step and digest of the weights the student generates (and is evaluated) with."""
        return self.revival.call(self.inbox.settings, lambda: ray.get(self.student.weights_digest.remote()))

    # ---- the evaluator (train/evaluator.py), for the driver ----
    @with_models
    def sample_student(self, examples: list[Example], samples: int, seed: int) -> list[dict]:
        return self.evaluator.sample_student(examples, samples, seed)

    @with_models
    def greedy_answers(self, examples: list[Example], role: str = "student") -> list[dict]:
        return self.evaluator.greedy_answers(examples, role)

    @with_models
    def heldout_kl(self, examples: list[Example]) -> list[dict]:
        return self.evaluator.heldout_kl(examples)

    @with_models
    def measure_second_pass(self, records: list[dict]) -> dict:
        return self.evaluator.measure_second_pass(records)

    # ---- the end of the run ----
    def close(self) -> None:
        """End both model actors and free their placement group (it would outlive a killed Rollout)."""
        self.ahead.close()
        stop_pair(self.teacher, self.student)

    def last_batch(self) -> list[dict]:
        return self.batch_cache[1] if self.batch_cache else []

    def summary(self) -> dict:
        stale = list(self.staleness.values()) or [0]
        counts = {**self.records.counts, **self.inbox.counts}
        return {"counts": {k: round(v, 3) if isinstance(v, float) else v for k, v in counts.items()},
                "generation_dtype": dict(self.dtypes),
                **self.records.summary(),
                "val_kl_to_teacher": self.val_kl,
                "staleness_steps": {"mean": round(sum(stale) / len(stale), 3), "max": max(stale),
                                    "per_step": {str(s): v for s, v in sorted(self.staleness.items())}},
                "faults": {"worker_group_failures": len(self.failures),
                           "steps_redone": sum(f["steps_redone"] for f in self.failures),
                           "failures": list(self.failures), "generation": self.revival.summary()},
                "method_state": self.method.state()}
