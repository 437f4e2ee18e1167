"""CPU threads from CPU shares: each process its share, the trainer also the idle generation side's
cores when the two take turns (max_staleness=0)."""
import pytest

from studyhall.config import load_config
from studyhall.threads import threads_for, trainer_threads


@pytest.mark.parametrize("cpus, threads", [(0, 1), (0.25, 1), (0.5, 1), (1, 1), (1.5, 2), (2, 2), (3.4, 3)])
def test_a_share_gives_the_nearest_whole_number_of_cores_at_least_one(cpus, threads):
    assert threads_for(cpus) == threads


def test_the_trainer_takes_the_generation_cores_only_when_generation_waits_for_it():
    # smol: teacher 1 CPU, student 0.5, one worker of 0.5
    assert trainer_threads(load_config("smol", ["max_staleness=1"])) == 1  # both sides busy at once
    assert trainer_threads(load_config("smol", ["max_staleness=0"])) == 2  # 0.5 + 1 + 0.5
    assert trainer_threads(load_config("smol", ["max_staleness=1", "method=sft"])) == 2  # sft needs neither model while it trains
    # two workers share the idle generation cores: 0.5 + 1.5 / 2
    assert trainer_threads(load_config("smol", ["max_staleness=0", "num_workers=2", "global_batch=8"])) == 1
    assert trainer_threads(load_config("smol", ["max_staleness=1", "torch_threads=3"])) == 3  # set: it wins
