"""One SWITCH round's planning steps on their own (actors/switch_round.py); the whole round runs in
tests/actors/test_controller_in_process_on_cpu.py and, over Ray actors, test_switch_engine.py."""
from types import SimpleNamespace

import numpy as np

from actors.switch_round import DeferredCommit, next_gamma, plan_round, thresholds_for
from studyhall.config import load_config
from studyhall.engine_settings import engine_settings


def _seq(owners: list[bool]):
    return SimpleNamespace(from_teacher=owners, token_ids=[0] * len(owners), divergence=[0.1] * len(owners))


def _cfg(*overrides):
    return engine_settings(load_config("tiny", ["mode=block", "pipeline_groups=2", "max_new_tokens=10", *overrides]))


def test_the_model_that_owned_most_recent_positions_drafts_and_the_block_fits_the_budget():
    gamma = {"teacher": 5, "student": 3}
    assert plan_round(_cfg(), [_seq([True] * 4)], gamma) == ("teacher", 5)
    assert plan_round(_cfg(), [_seq([True] * 6 + [False] * 2)], gamma) == ("teacher", 2)  # 8 of 10 tokens written: 2 left
    assert plan_round(_cfg(), [_seq([False, False, True])], gamma) == ("student", 3)
    assert plan_round(_cfg(), [_seq([])], gamma) == ("student", 3)  # nobody yet: the student starts
    assert plan_round(_cfg("writer=teacher"), [_seq([False] * 3)], gamma) == ("teacher", 5)  # a named writer always drafts
    assert plan_round(_cfg("mode=per_token"), [_seq([True] * 3)], gamma) == ("student", 1)


def test_thresholds_follow_the_schedule_from_each_sequences_position():
    taus = thresholds_for(_cfg("schedule=exponential", "tau0=0.4", "lam=0.1"), [_seq([False] * 2), _seq([])], 3)
    want = 0.4 * np.exp(-0.1 * np.array([[2, 3, 4], [0, 1, 2]]))
    np.testing.assert_allclose(taus, want, rtol=1e-6)
    assert (thresholds_for(_cfg("divergence=skd", "skd_top_k=3"), [_seq([])], 2) == 2.5).all()


def test_the_next_block_is_one_longer_than_the_mean_surviving_run():
    result = {"accepted": np.array([2, 4])}
    assert next_gamma(_cfg(), 4, result) == 4
    assert next_gamma(_cfg("gamma=2", "gamma_max=3"), 4, result) == 3
    assert next_gamma(_cfg("adaptive_gamma=false"), 7, result) == 7


def test_a_deferred_commit_goes_to_the_drafter_once():
    commit = DeferredCommit()
    commit.owe("student", "ref")
    assert commit.take("teacher") is None and commit.take("student") == "ref" and commit.take("student") is None
