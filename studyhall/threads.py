"""CPU threads per process, from the CPU shares in config.

A process gets the threads its share allows (at least one). A training worker may also take the
generation side's cores when that side idles while it steps: with strict alternation
(train.max_staleness=0) the teacher and student wait for the push. With generation running beside
training (max_staleness >= 1) both sides are busy at once, and extra threads only contend: on 2
cores, gkd on smol ran 5.08 s/step with 1 trainer thread and 5.86 with 2 (README: Distill).

The same contention decides SWITCH's pipeline groups in training: two groups keep the teacher and
the student busy at once, which pays only if that does not take cores from a trainer stepping beside them.
"""
import math


def threads_for(cpus: float) -> int:
    """The threads a CPU share allows: the nearest whole number of cores, at least one."""
    return max(1, math.floor(cpus + 0.5))


# Methods whose training records need no model at all (ground-truth answers, tokenized): the teacher
# and the student sit idle for the whole of training.
PAIR_IDLE_METHODS = ("sft",)


def trainer_threads(cfg) -> int:
    """train.torch_threads when set; else the worker's share, plus (strict alternation, or a method
    that needs neither model to make its records) its part of the teacher's and student's cores,
    which sit idle while it steps."""
    t = cfg.train
    if t.torch_threads:
        return t.torch_threads
    share = t.cpus_per_worker
    if t.max_staleness == 0 or t.method in PAIR_IDLE_METHODS:
        share += (cfg.teacher.num_cpus + cfg.student.num_cpus) / t.num_workers
    return threads_for(share)


def cpu_threads(model) -> int:
    """The threads a teacher or student actor computes with on CPU; none when it has a GPU."""
    return 0 if model.num_gpus > 0 else threads_for(model.num_cpus)


def pair_contends_with_trainer(cfg) -> bool:
    """True when batches are made ahead (max_staleness >= 1) and the teacher, the student and the
    training workers, all busy at once, run more CPU threads than the CPUs they reserve together:
    then a second model working at the same time only slows the other two."""
    t = cfg.train
    if t.max_staleness == 0:
        return False  # the trainer waits while the pair generates
    worker_threads = 0 if t.gpus_per_worker > 0 else trainer_threads(cfg)
    threads = cpu_threads(cfg.teacher) + cpu_threads(cfg.student) + worker_threads * t.num_workers
    cpus = cfg.teacher.num_cpus + cfg.student.num_cpus + t.cpus_per_worker * t.num_workers
    return threads > cpus
