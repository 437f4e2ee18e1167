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

Beside the wall seconds, each step records how much of the cores it had (`cores`): the trainer
process's CPU seconds in each phase, and where the node's cores went (train/cores.py). A
forward-backward slower beside the generation actors than alone either waits for a core (its CPU
seconds stay as alone; the share of its wall it ran falls) or runs slower on one (memory bandwidth,
caches: its CPU seconds grow). The two call for different fixes.
"""
import resource
import time
from contextlib import contextmanager

from train.cores import NodeCores

PHASES = ("generation", "waiting", "forward_backward", "optimizer", "weight_push", "barrier", "validation", "checkpoint")
SHORT = {"generation": "gen", "waiting": "wait", "forward_backward": "fwd_bwd", "optimizer": "opt",
         "weight_push": "push", "barrier": "barrier", "validation": "val", "checkpoint": "ckpt"}


def minor_faults() -> int:
    """This process's page faults served without I/O so far: mostly fresh pages for new allocations."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


class PhaseTimer:
    """Seconds per phase for the step in progress, wall and the process's CPU, and the process's page faults
    (each a fresh page the kernel zeroes: train/allocator.py); `take()` hands them over and starts the next
    step. `node`: what reads the node's cores (train/cores.NodeCores), or None."""

    def __init__(self, clock=time.perf_counter, cpu_clock=time.process_time, faults=minor_faults, node: NodeCores | None = None):
        self.clock, self.cpu_clock, self.faults, self.node = clock, cpu_clock, faults, node
        self.seconds = dict.fromkeys(PHASES, 0.0)
        self.cpu = dict.fromkeys(PHASES, 0.0)
        self.faulted = dict.fromkeys(PHASES, 0)

    @contextmanager
    def __call__(self, phase: str):
        started, cpu_started, faults_started = self.clock(), self.cpu_clock(), self.faults()
        try:
            yield
        finally:
            self.seconds[phase] += self.clock() - started
            self.cpu[phase] += self.cpu_clock() - cpu_started
            self.faulted[phase] += self.faults() - faults_started

    def take(self) -> dict:
        """The step's wall seconds per phase, and under `cores` this process's CPU seconds and page faults
        per phase and (with a node reader) where the node's cores went since the last take."""
        taken, cpu, faulted = self.seconds, self.cpu, self.faulted
        self.seconds, self.cpu, self.faulted = dict.fromkeys(PHASES, 0.0), dict.fromkeys(PHASES, 0.0), dict.fromkeys(PHASES, 0)
        cores = {"cpu": {k: round(v, 4) for k, v in cpu.items()}, "page_faults": faulted, **(self.node.take() if self.node else {})}
        return {**{k: round(v, 4) for k, v in taken.items()}, "cores": cores}


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
    return {"steps": len(steps), "seconds_per_step": round(sum(mean.values()), 3), **mean, "cores": steady_cores(steps, mean)}


def steady_cores(steps: list[dict], mean_wall: dict) -> dict | None:
    """The steps' `cores` (PhaseTimer.take), averaged: the trainer's CPU seconds per phase, the share of
    forward_backward's wall it was on a core (CPU / wall; with n threads it can reach n), and, when the
    node was read, its busy share and CPU seconds by process role."""
    cores = [s["cores"] for s in steps if s.get("cores")]
    if not cores:
        return None

    def mean(values) -> float:
        return round(sum(values) / len(cores), 3)

    cpu = {p: mean(c["cpu"][p] for c in cores) for p in PHASES}
    steady = {"trainer_cpu": cpu,
              **({"trainer_page_faults": {p: round(mean(c["page_faults"][p] for c in cores)) for p in PHASES}}
                 if all("page_faults" in c for c in cores) else {}),
              "forward_backward_cpu_per_wall": round(cpu["forward_backward"] / mean_wall["forward_backward"], 3) if mean_wall["forward_backward"] else None}
    if all("cpu_by_role" in c for c in cores):
        roles = sorted({r for c in cores for r in c["cpu_by_role"]})
        steady["node_busy_share"] = mean(c["node_busy_share"] for c in cores)
        steady["cpu_by_role"] = {r: mean(c["cpu_by_role"].get(r, 0.0) for c in cores) for r in roles}
    return steady


def postfix(phases: dict) -> dict:
    """The tqdm postfix of one step's phases: the ones that took time, short names."""
    return {SHORT[p]: f"{phases[p]:.1f}" for p in PHASES if phases.get(p, 0) >= 0.05}
