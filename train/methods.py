"""The distillation methods, as what each one trains on: planners that say where each example's record
comes from (a Need); train/records.py makes the records. The loss is chosen apart (train/objective.py).

| method   | records                                                                      | default loss |
|----------|------------------------------------------------------------------------------|--------------|
| sft      | ground-truth answers                                                         | ce           |
| kd       | ground-truth answers, scored by the teacher                                  | fkl          |
| seqkd    | the teacher's own answers (generated once per prompt, then reused)           | ce           |
| gkd      | a student sample with probability lambda, else the ground truth              | jsd          |
| skd      | student samples; the teacher replaces tokens outside its top-K               | fkl          |
| distillm | student samples with a probability raised whenever validation loss rises,    | skew_fkl     |
|          | half of them replayed from a buffer; the rest ground truth                   |              |
| switch   | the SWITCH engine: the teacher takes tokens where the two diverge past tau_t | skew_fkl     |
|          | (train.switch_data_share of them: the teacher-scored ground truth instead)   |              |
| adaswitch| the same engine with AdaSwitch's gate: the student writes until a divergence | skew_fkl     |
|          | exceeds K x its recent mean, then the teacher writes the rest                |              |
"""
import random
from collections import deque
from dataclasses import dataclass

DEFAULT_LOSS = {"sft": "ce", "kd": "fkl", "seqkd": "ce", "gkd": "jsd", "skd": "fkl", "distillm": "skew_fkl",
                "switch": "skew_fkl", "adaswitch": "skew_fkl"}  # SWITCH follows DistiLLM's setup, whose loss is the skew KL
NEEDS_SHARED_VOCAB = {"kd", "gkd", "skd", "distillm", "switch", "adaswitch"}  # token-level: the losses compare distributions

# Where a record can come from. "data": the reference answer; "scored_data": the same, with the
# teacher's log-probs from one plain teacher pass; the others: the SWITCH engine in that mode
# (train.records.SAMPLE_KINDS), whose records come with the teacher's log-probs already.
SOURCES = ("data", "scored_data", "student", "teacher", "switch", "skd", "adaswitch")
DATA_SOURCES = ("data", "scored_data")  # the records that train on the data's (or the teacher's cached) answers
# (train.unlikelihood adds the rollout's own source, studyhall.unlikelihood.OWN_GREEDY, to every method's steps.)


def loss_for(method: str, loss: str) -> str:
    return DEFAULT_LOSS[method] if loss == "auto" else loss


@dataclass(frozen=True)
class Need:
    """Records a step's batch needs: one per example, from `source`."""
    source: str
    examples: list


class Method:
    """A planner: picks each step's examples (a seeded pass over the training set) and says where each
    one's record comes from; the rollout makes the records and hands them back to `assemble`, which
    orders them into the batch. A method never calls the models itself, so it runs without Ray."""

    def __init__(self, cfg, train: list):
        self.cfg, self.train = cfg, train
        self.order: list[int] = []

    def examples(self, step: int, n: int):
        start = (step - 1) * n
        while len(self.order) < start + n:  # a fresh seeded shuffle per epoch
            epoch = list(range(len(self.train)))
            random.Random(self.cfg.seed * 1000 + len(self.order) // len(self.train)).shuffle(epoch)
            self.order += epoch
        return [self.train[i] for i in self.order[start:start + n]]

    def seed(self, step: int) -> int:
        return self.cfg.seed * 100003 + step

    def plan(self, step: int, n: int) -> list[Need]:
        """What step `step`'s batch of `n` needs, made in this order (no empty Need)."""
        raise NotImplementedError

    def data_examples(self, step: int, n: int) -> list:
        """The examples of step `step` whose data answers (a reference) its batch may read: the rollout
        has the teacher write the missing ones for every step before training, in one pass."""
        return [e for need in self.plan(step, n) if need.source in DATA_SOURCES for e in need.examples]

    def assemble(self, needs: list[Need], made: list[list[dict]]) -> list[dict]:
        """The batch, from the records made for each Need (made[i] for needs[i], in its examples' order)."""
        return [r for records in made for r in records]

    def observe_val_loss(self, step: int, loss: float) -> None:
        pass

    def state(self) -> dict:
        return {}


class SFT(Method):
    def plan(self, step, n):
        return [Need("data", self.examples(step, n))]


class KD(Method):
    def plan(self, step, n):
        return [Need("scored_data", self.examples(step, n))]


class SeqKD(Method):
    """The teacher answers each prompt once (SeqKD's offline corpus); later epochs reuse its answers."""
    def __init__(self, cfg, train):
        super().__init__(cfg, train)
        self.answers: dict[str, dict] = {}
        self.batch: list = []

    def data_examples(self, step, n):
        return []  # the teacher's own samples, never the data's answers

    def plan(self, step, n):
        self.batch = self.examples(step, n)
        new = [e for e in self.batch if e.id not in self.answers]
        return [Need("teacher", new)] if new else []

    def assemble(self, needs, made):
        for need, records in zip(needs, made):
            self.answers.update({e.id: r for e, r in zip(need.examples, records)})
        return [self.answers[e.id] for e in self.batch]


class Switch(Method):
    """The engine's rollout for each example; with train.switch_data_share, that share of them (drawn
    per example, seeded per step) trains on the teacher-scored data instead, as GKD's lambda and
    DistiLLM's ground-truth share mix fixed answers into on-policy ones."""
    source = "switch"

    def plan(self, step, n):
        examples = self.examples(step, n)
        rng = random.Random(self.seed(step))
        return _mix(examples, [rng.random() >= self.cfg.train.switch_data_share for _ in examples], self.source)


class SKD(Switch):
    source = "skd"


class AdaSwitch(Switch):
    source = "adaswitch"


class GKD(Method):
    """On-policy with probability lambda per example (GKD's student-data fraction), else the data."""
    def plan(self, step, n):
        examples = self.examples(step, n)
        rng = random.Random(self.seed(step))
        on_policy = [rng.random() < self.cfg.train.gkd_lambda for _ in examples]
        return _mix(examples, on_policy)


class DistiLLM(Method):
    """Adaptive off-policy: p(student sample) starts at p_init and rises by p_step (up to p_max) each
    time the validation loss goes up; half of the student samples are replayed from a buffer."""
    def __init__(self, cfg, train):
        super().__init__(cfg, train)
        self.p = cfg.train.distillm_p_init
        self.buffer: deque = deque(maxlen=cfg.train.replay_size)
        self.replayed: list = []  # studyhall.record.Record
        self.last_val: float | None = None
        self.raised_at: list[int] = []

    def data_examples(self, step, n):
        return self.examples(step, n)  # which are data depends on p, which the validation loss moves

    def plan(self, step, n):
        examples = self.examples(step, n)
        rng = random.Random(self.seed(step))
        k = sum(rng.random() < self.p for _ in examples)  # student slots this step
        self.replayed = rng.sample(list(self.buffer), min(k // 2, len(self.buffer)))
        fresh, data = examples[: k - len(self.replayed)], examples[k:]
        return [need for need in (Need("student", fresh), Need("scored_data", data)) if need.examples]

    def assemble(self, needs, made):
        by_source = {need.source: records for need, records in zip(needs, made)}
        new = by_source.get("student", [])
        self.buffer.extend(new)
        return new + self.replayed + by_source.get("scored_data", [])

    def observe_val_loss(self, step, loss):
        if self.last_val is not None and loss > self.last_val and self.p < self.cfg.train.distillm_p_max:
            self.p = min(self.p + self.cfg.train.distillm_p_step, self.cfg.train.distillm_p_max)
            self.raised_at.append(step)
        self.last_val = loss

    def state(self):
        return {"p_student": round(self.p, 3), "raised_at_steps": self.raised_at, "replay_buffer": len(self.buffer)}


def _mix(examples, on_policy, source: str = "student") -> list[Need]:
    """Records from `source` (student samples, or an engine's rollouts) where on_policy, teacher-scored
    ground truth elsewhere."""
    rollouts = [e for e, s in zip(examples, on_policy) if s]
    data = [e for e, s in zip(examples, on_policy) if not s]
    return [need for need in (Need(source, rollouts), Need("scored_data", data)) if need.examples]


METHOD_CLASSES = {"sft": SFT, "kd": KD, "seqkd": SeqKD, "gkd": GKD, "skd": SKD, "distillm": DistiLLM, "switch": Switch,
                 "adaswitch": AdaSwitch}
# The methods whose records come from the SWITCH engine: they alone read its gate and train.switch_data_share.
ENGINE_METHODS = tuple(name for name, cls in METHOD_CLASSES.items() if issubclass(cls, Switch))


def make_method(cfg, train: list) -> Method:
    return METHOD_CLASSES[cfg.train.method](cfg, train)
