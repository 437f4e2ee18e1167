"""BatchesAhead: batches made in step order on one background thread, up to `ahead` steps ahead of
the trainer and never past the last step; dropped ones are remade; a failure reaches the trainer."""
import threading

import pytest

from train.batches_ahead import BatchesAhead


class Maker:
    def __init__(self, fail_at: int | None = None):
        self.made: list[int] = []
        self.threads: set[str] = set()
        self.version = 0  # what the batch is made with (the weights, in the rollout)
        self.fail_at = fail_at

    def __call__(self, step: int):
        self.threads.add(threading.current_thread().name)
        if step == self.fail_at:
            raise RuntimeError(f"step {step} failed")
        self.made.append(step)
        return (step, self.version)


def test_one_step_ahead_makes_the_next_batch_before_it_is_asked_for():
    maker = Maker()
    ahead = BatchesAhead(maker, ahead=1, last_step=3)
    assert ahead.get(1) == (1, 0)
    ahead.futures[2].result()  # step 2 was started as soon as step 1 was handed over
    maker.version = 1  # the trainer pushes after step 1; step 2's batch already has the old version
    assert ahead.get(2) == (2, 0) and ahead.get(3) == (3, 1)
    assert maker.made == [1, 2, 3] and not ahead.futures  # nothing past the last step
    assert len(maker.threads) == 1 and threading.current_thread().name not in maker.threads
    ahead.close()


def test_zero_ahead_is_strict_alternation():
    maker = Maker()
    ahead = BatchesAhead(maker, ahead=0, last_step=3)
    assert ahead.get(1) == (1, 0) and not ahead.futures
    maker.version = 1
    assert ahead.get(2) == (2, 1)
    ahead.close()


def test_two_ahead_and_a_drop_remakes_with_the_new_version():
    maker = Maker()
    ahead = BatchesAhead(maker, ahead=2, last_step=10)
    ahead.get(1)
    assert sorted(ahead.futures) == [2, 3]
    ahead.drop()  # e.g. a replaced worker group resumes from a checkpoint
    assert not ahead.futures
    maker.version = 5
    assert ahead.get(2) == (2, 5)
    ahead.close()


def test_a_failed_batch_raises_for_the_trainer_and_starts_nothing_more():
    ahead = BatchesAhead(Maker(fail_at=1), ahead=1, last_step=3)
    with pytest.raises(RuntimeError, match="step 1 failed"):
        ahead.get(1)
    assert not ahead.futures
    ahead.close()
