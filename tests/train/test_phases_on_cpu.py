"""The per-phase time breakdown of a distillation step (train/phases.py) and its table."""
from cluster.bench.distill import markdown, settings
from train.phases import PHASES, PhaseTimer, postfix, split_wait, steady_state
from train.report import phase_table


def test_timer_adds_up_each_phase_and_starts_afresh():
    clock = iter([0.0, 0.25, 1.0, 1.5, 2.0, 2.125])  # a fixed clock: the sums are exact, not timed
    timer = PhaseTimer(clock=lambda: next(clock))
    for _ in range(2):
        with timer("forward_backward"):
            pass
    with timer("optimizer"):
        pass
    taken = timer.take()
    assert set(taken) == set(PHASES)
    assert taken["forward_backward"] == 0.75 and taken["optimizer"] == 0.125 and taken["waiting"] == 0
    assert sum(timer.take().values()) == 0


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
