"""The distillation methods, as what each one trains on. The loss is chosen apart (train/objective.py).

| method   | records                                                                      | default loss |
|----------|------------------------------------------------------------------------------|--------------|
| sft      | ground-truth answers                                                         | ce           |
| kd       | ground-truth answers, scored by the teacher                                  | fkl          |
| seqkd    | the teacher's own answers (generated once per prompt, then reused)           | ce           |
| gkd      | a student sample with probability lambda, else the ground truth              | jsd          |
| skd      | student samples; the teacher replaces tokens outside its top-K               | fkl          |
| distillm | student samples with a probability raised whenever validation loss rises,    | skew_fkl     |
|          | half of them replayed from a buffer; the rest ground truth                   |              |
| switch   | the SWITCH engine: the teacher takes tokens where the two diverge past tau_t | fkl          |
| adaswitch| the same engine with AdaSwitch's gate: the student writes until a divergence | fkl          |
|          | exceeds K x its recent mean, then the teacher writes the rest                |              |
"""
import random
from collections import deque

DEFAULT_LOSS = {"sft": "ce", "kd": "fkl", "seqkd": "ce", "gkd": "jsd", "skd": "fkl", "distillm": "skew_fkl", "switch": "fkl",
                "adaswitch": "fkl"}
NEEDS_SHARED_VOCAB = {"kd", "gkd", "skd", "distillm", "switch", "adaswitch"}  # token-level: the losses compare distributions


def loss_for(method: str, loss: str) -> str:
    return DEFAULT_LOSS[method] if loss == "auto" else loss


class Method:
    """Picks each step's examples (a seeded pass over the training set) and turns them into records."""

    def __init__(self, cfg, rollout):
        self.cfg, self.rollout = cfg, rollout
        self.order: list[int] = []

    def examples(self, step: int, n: int):
        train = self.rollout.train
        start = (step - 1) * n
        while len(self.order) < start + n:  # a fresh seeded shuffle per epoch
            epoch = list(range(len(train)))
            random.Random(self.cfg.switch.seed * 1000 + len(self.order) // len(train)).shuffle(epoch)
            self.order += epoch
        return [train[i] for i in self.order[start:start + n]]

    def seed(self, step: int) -> int:
        return self.cfg.switch.seed * 100003 + step

    def make(self, step: int, n: int) -> list[dict]:
        raise NotImplementedError

    def observe_val_loss(self, step: int, loss: float) -> None:
        pass

    def state(self) -> dict:
        return {}


class SFT(Method):
    def make(self, step, n):
        return self.rollout.data_records(self.examples(step, n), with_teacher=False)


class KD(Method):
    def make(self, step, n):
        return self.rollout.data_records(self.examples(step, n), with_teacher=True)


class SeqKD(Method):
    """The teacher answers each prompt once (SeqKD's offline corpus); later epochs reuse its answers."""
    def __init__(self, cfg, rollout):
        super().__init__(cfg, rollout)
        self.answers: dict[str, dict] = {}

    def make(self, step, n):
        examples = self.examples(step, n)
        new = [e for e in examples if e.id not in self.answers]
        if new:
            for e, r in zip(new, self.rollout.run_engine("teacher", new, self.seed(step))):
                self.answers[e.id] = r
        return [self.answers[e.id] for e in examples]


class Switch(Method):
    mode = "switch"

    def make(self, step, n):
        return self.rollout.run_engine(self.mode, self.examples(step, n), self.seed(step))


class SKD(Switch):
    mode = "skd"


class AdaSwitch(Switch):
    mode = "adaswitch"


class GKD(Method):
    """On-policy with probability lambda per example (GKD's student-data fraction), else the data."""
    def make(self, step, n):
        examples = self.examples(step, n)
        rng = random.Random(self.seed(step))
        on_policy = [rng.random() < self.cfg.train.gkd_lambda for _ in examples]
        return _mix(self.rollout, examples, on_policy, self.seed(step))


class DistiLLM(Method):
    """Adaptive off-policy: p(student sample) starts at p_init and rises by p_step (up to p_max) each
    time the validation loss goes up; half of the student samples are replayed from a buffer."""
    def __init__(self, cfg, rollout):
        super().__init__(cfg, rollout)
        self.p = cfg.train.distillm_p_init
        self.buffer: deque = deque(maxlen=cfg.train.replay_size)
        self.last_val: float | None = None
        self.raised_at: list[int] = []

    def make(self, step, n):
        examples = self.examples(step, n)
        rng = random.Random(self.seed(step))
        k = sum(rng.random() < self.p for _ in examples)  # student slots this step
        replayed = rng.sample(list(self.buffer), min(k // 2, len(self.buffer)))
        fresh, data = examples[: k - len(replayed)], examples[k:]
        new = self.rollout.run_engine("student", fresh, self.seed(step)) if fresh else []
        self.buffer.extend(new)
        return new + replayed + (self.rollout.data_records(data, with_teacher=True) if data else [])

    def observe_val_loss(self, step, loss):
        if self.last_val is not None and loss > self.last_val and self.p < self.cfg.train.distillm_p_max:
            self.p = min(self.p + self.cfg.train.distillm_p_step, self.cfg.train.distillm_p_max)
            self.raised_at.append(step)
        self.last_val = loss

    def state(self):
        return {"p_student": round(self.p, 3), "raised_at_steps": self.raised_at, "replay_buffer": len(self.buffer)}


def _mix(rollout, examples, on_policy, seed):
    """Student samples where on_policy, teacher-scored ground truth elsewhere."""
    student = [e for e, s in zip(examples, on_policy) if s]
    data = [e for e, s in zip(examples, on_policy) if not s]
    records = rollout.run_engine("student", student, seed) if student else []
    return records + (rollout.data_records(data, with_teacher=True) if data else [])


METHOD_CLASSES = {"sft": SFT, "kd": KD, "seqkd": SeqKD, "gkd": GKD, "skd": SKD, "distillm": DistiLLM, "switch": Switch,
                 "adaswitch": AdaSwitch}


def make_method(cfg, rollout) -> Method:
    return METHOD_CLASSES[cfg.train.method](cfg, rollout)
