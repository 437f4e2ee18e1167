"""The per-phase time breakdown of a distillation step (train/phases.py) and its table."""
import time
from collections import namedtuple

from cluster.bench.distill import markdown, settings
from train.cores import NodeCores, role_of
from train.phases import PHASES, PhaseTimer, postfix, split_wait, steady_state
from train.report import phase_table


class Proc:
    """What psutil.process_iter yields for one process: its pid and the attributes asked for."""

    def __init__(self, pid: int, title: str, cpu: float | None):
        self.pid = pid
        self.info = {"cmdline": title.split(" "), "cpu_times": namedtuple("pcputimes", "user system")(cpu / 2, cpu / 2) if cpu is not None else None}


def test_timer_adds_up_each_phase_wall_and_cpu_and_starts_afresh():
    clock = iter([0.0, 0.25, 1.0, 1.5, 2.0, 2.125])  # fixed clocks: the sums are exact, not timed
    cpu_clock = iter([0.0, 0.125, 1.0, 1.25, 2.0, 2.0625])  # the trainer on a core half the time
    faults = iter([100, 150, 150, 250, 250, 251])  # the process's page-fault count at each clock read
    timer = PhaseTimer(clock=lambda: next(clock), cpu_clock=lambda: next(cpu_clock), faults=lambda: next(faults))
    for _ in range(2):
        with timer("forward_backward"):
            pass
    with timer("optimizer"):
        pass
    taken = timer.take()
    assert set(taken) == {*PHASES, "cores"}
    assert taken["forward_backward"] == 0.75 and taken["optimizer"] == 0.125 and taken["waiting"] == 0
    assert taken["cores"] == {"cpu": {**dict.fromkeys(PHASES, 0.0), "forward_backward": 0.375, "optimizer": 0.0625},
                              "page_faults": {**dict.fromkeys(PHASES, 0), "forward_backward": 150, "optimizer": 1}}
    again = timer.take()
    assert sum(again[p] for p in PHASES) == 0 and sum(again["cores"]["cpu"].values()) == 0
    assert sum(again["cores"]["page_faults"].values()) == 0


def test_node_cores_by_role_since_the_last_take():
    assert role_of(["ray::TeacherActor.score"]) == "teacher" and role_of(["ray::RayTrainWorker"]) == "trainer"
    assert role_of(["ray::TrainController.run"]) == "ray_actors" and role_of(["/x/raylet", "--node"]) == "ray_system"
    assert role_of([]) == "other" and role_of(["python3", "train.py"]) == "other"
    readings = iter([
        [Proc(1, "ray::TeacherActor", 10.0), Proc(2, "ray::StudentActor.draft", 4.0), Proc(3, "bash", None)],
        # the student's title changed with its call; a Ray Train actor started; the teacher is gone
        [Proc(2, "ray::StudentActor.score", 6.5), Proc(4, "ray::TrainController.run", 0.75), Proc(5, "ray::RayTrainWorker", 3.0)],
    ])
    percents, windows = iter([0.0, 75.0]), []  # psutil.cpu_percent: 0.0 on its first call, then the share since the last

    def busy_percent(interval):
        windows.append(interval)
        return next(percents)

    cores = NodeCores(busy_percent=busy_percent, processes=lambda attrs: next(readings))
    assert windows == [None]  # the window opens when the reader is made
    taken = cores.take()
    assert taken["cpu_by_role"] == {"student": 2.5, "ray_actors": 0.75, "trainer": 3.0}
    assert taken["node_busy_share"] == 0.75 and windows == [None, None]  # since the last call, never blocking


def test_node_cores_on_this_machine():
    """psutil's real readings: the share is a share, and this test's own process is read."""
    cores = NodeCores()
    started = time.process_time()
    while time.process_time() - started < 0.1:  # this process's CPU time between the reads, beyond a clock tick
        pass
    taken = cores.take()
    assert 0.0 <= taken["node_busy_share"] <= 1.0
    assert taken["cpu_by_role"].get("other", 0.0) > 0.0


def test_generation_is_carved_out_of_the_wait_and_the_sum_is_kept():
    phases = {**dict.fromkeys(PHASES, 0.0), "waiting": 3.0, "forward_backward": 2.0}
    split = split_wait(phases, 2.5)
    assert (split["generation"], split["waiting"]) == (2.5, 0.5)
    assert sum(split.values()) == sum(phases.values())
    overlapped = split_wait(phases, 7.0)  # generated beside training: only the wait itself counts
    assert (overlapped["generation"], overlapped["waiting"]) == (3.0, 0.0)


def test_steady_state_leaves_out_the_first_step():
    first = {**dict.fromkeys(PHASES, 0.0), "generation": 30.0}
    later = [{**dict.fromkeys(PHASES, 0.0), "generation": 2.0, "optimizer": 1.0},
             {**dict.fromkeys(PHASES, 0.0), "generation": 4.0, "optimizer": 1.0}]
    steady = steady_state([first, *later])
    assert steady["steps"] == 2 and steady["generation"] == 3.0 and steady["seconds_per_step"] == 4.0
    assert steady["cores"] is None  # steps without the CPU clocks
    cpu = [{**dict.fromkeys(PHASES, 0.0), "forward_backward": c} for c in (3.0, 5.0)]
    roles = ({"trainer": 3.5, "teacher": 6.0}, {"trainer": 5.5, "teacher": 4.0, "other": 1.0})
    faults = [{**dict.fromkeys(PHASES, 0), "forward_backward": f} for f in (1000, 2000)]
    timed = steady_state([first, *[{**p, "forward_backward": 8.0, "cores": {"cpu": c, "page_faults": f, "node_busy_share": b, "cpu_by_role": r}}
                                   for p, c, f, b, r in zip(later, cpu, faults, (0.9, 1.0), roles)]])
    assert timed["cores"]["trainer_cpu"]["forward_backward"] == 4.0 and timed["cores"]["forward_backward_cpu_per_wall"] == 0.5
    assert timed["cores"]["trainer_page_faults"] == {**dict.fromkeys(PHASES, 0), "forward_backward": 1500}
    assert timed["cores"]["node_busy_share"] == 0.95 and timed["cores"]["cpu_by_role"] == {"other": 0.5, "teacher": 5.0, "trainer": 4.5}
    text = "".join(phase_table(timed))
    assert "ran 4.000 CPU seconds per step in forward_backward (0.50 CPU seconds per wall second)." in text
    assert "cores were 95% busy over the step; CPU seconds per step by process: teacher 5.00, trainer 4.50, other 0.50." in text
    other_ranks = steady_state([first, *[{**p, "cores": {"cpu": c}} for p, c in zip(later, cpu)]])  # no node reader
    assert "cpu_by_role" not in other_ranks["cores"] and "busy" not in "".join(phase_table(other_ranks))
    assert postfix(later[0]) == {"gen": "2.0", "opt": "1.0"}
    table = phase_table(steady)
    assert "| generation | 3.000 | 75% |" in table and any("4.000" in line for line in table)


def test_bench_settings_and_table():
    assert settings(None) == [[]]
    assert settings("train.max_staleness=0,1") == [["train.max_staleness=0"], ["train.max_staleness=1"]]
    steady = {**dict.fromkeys(PHASES, 1.0), "seconds_per_step": 8.0, "steps": 7}
    run = {"setting": "train.max_staleness=0", "phases": steady, "tokens_per_s": 50.0, "padding_share": 0.216, "staleness_steps": {"mean": 0.0, "max": 0},
           "weight_push": {"packet_mb": 310.6, "loads": 8, "seconds_per_load": 0.3},
           "generation": {"tokens": 684, "seconds": 45.6, "pipeline_groups": 1, "rows_by_group": {"0": 32}}}
    table = markdown({"method": "gkd", "preset": "smol", "runs": [run]})
    assert "| **seconds per step** | **8.000** |" in table and "| weight_push | 1.000 |" in table
    assert "| weights into the generation actor (MB, s per load) | 310.6, 0.3 |" in table
    assert "| padding share of the micro-batches | 0.216 |" in table
    assert "| generation (tokens, s, SWITCH pipeline groups) | 684, 45.6, 1 |" in table
    assert "| trainer CPU s in forward_backward (per wall s) | - |" in table  # a report from before the CPU clocks
    cored = {**run, "phases": {**steady, "cores": {"trainer_cpu": {"forward_backward": 0.6}, "forward_backward_cpu_per_wall": 0.6,
                                                    "trainer_page_faults": {"forward_backward": 41234},
                                                    "node_busy_share": 0.984, "cpu_by_role": {"teacher": 4.25, "trainer": 0.75}}}}
    table = markdown({"method": "gkd", "preset": "smol", "runs": [run, cored]})
    assert "| trainer CPU s in forward_backward (per wall s) | - | 0.600 (0.6) |" in table and "| node cores busy over the step | - | 98% |" in table
    assert "| trainer page faults in forward_backward | - | 41234 |" in table
    assert "| CPU s per step: teacher | - | 4.250 |" in table and "| CPU s per step: trainer | - | 0.750 |" in table
