"""Where a training step's time goes: the trainer times its phases, the rollout its generation.

The trainer's phases add up to the step's wall time on rank 0:
  waiting           blocked on the step's batch, less the generation inside that wait
  generation        the part of that wait the rollout spent making the batch: generating answers and
                    scoring them with the teacher (when it runs beside training, only what the
                    trainer still had to wait for)
  forward_backward  the student's forward, the loss and the backward
  optimizer         DeepSpeed's step (clipping, the optimizer, zeroing grads)
  weight_push       gathering the state dict and sending it to the generation actor
  barrier           the other ranks waiting for rank 0's push
  validation        DistiLLM's held-out loss (the other methods: 0)
  checkpoint        the DeepSpeed checkpoint and Ray Train's report
"""
import time
from contextlib import contextmanager

PHASES = ("generation", "waiting", "forward_backward", "optimizer", "weight_push", "barrier", "validation", "checkpoint")
SHORT = {"generation": "gen", "waiting": "wait", "forward_backward": "fwd_bwd", "optimizer": "opt",
         "weight_push": "push", "barrier": "barrier", "validation": "val", "checkpoint": "ckpt"}


class PhaseTimer:
    """Seconds per phase for the step in progress; `take()` hands them over and starts the next step."""

    def __init__(self, clock=time.perf_counter):
        self.clock = clock
        self.seconds = dict.fromkeys(PHASES, 0.0)

    @contextmanager
    def __call__(self, phase: str):
        started = self.clock()
        try:
            yield
        finally:
            self.seconds[phase] += self.clock() - started

    def take(self) -> dict:
        taken, self.seconds = self.seconds, dict.fromkeys(PHASES, 0.0)
        return {k: round(v, 4) for k, v in taken.items()}


def split_wait(phases: dict, generation_s: float) -> dict:
    """Carve the rollout's generation seconds for this batch out of the trainer's wait for it."""
    wait = phases["waiting"]
    generation = min(generation_s, wait)
    return {**phases, "generation": round(generation, 4), "waiting": round(wait - generation, 4)}


def steady_state(per_step: list[dict]) -> dict:
    """Mean seconds per phase over the steps after the first (which pays one-off costs), and their sum."""
    steps = per_step[1:] or per_step
    if not steps:
        return {}
    mean = {p: round(sum(s[p] for s in steps) / len(steps), 3) for p in PHASES}
    return {"steps": len(steps), "seconds_per_step": round(sum(mean.values()), 3), **mean}


def postfix(phases: dict) -> dict:
    """The tqdm postfix of one step's phases: the ones that took time, short names."""
    return {SHORT[p]: f"{phases[p]:.1f}" for p in PHASES if phases.get(p, 0) >= 0.05}
