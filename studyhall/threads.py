"""CPU threads per process, from the CPU shares in config.

A process gets the threads its share allows (at least one). A training worker may also take the
generation side's cores when that side idles while it steps: with strict alternation
(train.max_staleness=0) the teacher and student wait for the push. With generation running beside
training (max_staleness >= 1) both sides are busy at once, and extra threads only contend: on 2
cores, gkd on smol ran 5.08 s/step with 1 trainer thread and 5.86 with 2 (README: Distill).
"""
import math


def threads_for(cpus: float) -> int:
    """The threads a CPU share allows: the nearest whole number of cores, at least one."""
    return max(1, math.floor(cpus + 0.5))


def trainer_threads(cfg) -> int:
    """train.torch_threads when set; else the worker's share, plus (strict alternation only) its
    part of the teacher's and student's cores, which sit idle while it steps."""
    t = cfg.train
    if t.torch_threads:
        return t.torch_threads
    share = t.cpus_per_worker
    if t.max_staleness == 0:
        share += (cfg.teacher.num_cpus + cfg.student.num_cpus) / t.num_workers
    return threads_for(share)
