"""CPU threads per process, from the CPU shares in config.

A process gets the threads its share allows (at least one). A training worker may also take the
generation side's cores when that side idles while it steps: with strict alternation
(train.max_staleness=0) the teacher and student wait for the push. With generation running beside
training (max_staleness >= 1) both sides are busy at once, and extra threads only contend: on 2
cores, gkd on smol ran 5.08 s/step with 1 trainer thread and 5.86 with 2 (README: Distill).

The same contention decides SWITCH's pipeline groups in training: two groups keep the teacher and
the student busy at once, which pays only if that does not take cores from a trainer stepping beside them.
With one group the two compute in turn, and while the trainer waits for their batch the one at work
takes the pair's cores and the trainer's (on 2 cores, a 1-token teacher step at batch 4 took 85-92 ms
with 2 threads against 136-147 ms with 1).
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


def threads_while_trainer_waits(cfg, pipeline_groups: int) -> int:
    """Threads for the teacher or student at work while the trainer waits for their batch: with one
    pipeline group, where the pair contends with the trainer (they compute in turn, the trainer
    idles), the pair's and the trainers' cores together; 0 (their own) otherwise."""
    if pipeline_groups != 1 or not pair_contends_with_trainer(cfg):
        return 0
    t = cfg.train
    return threads_for(cfg.teacher.num_cpus + cfg.student.num_cpus + t.cpus_per_worker * t.num_workers)
