"""The methods as planners, without Ray: what each step's batch needs, from which source, and how the
records come back into the batch (train/methods.py). `made` stands in for the rollout: it returns one
record per example, naming the example and the source, so each test can see where every row came from."""
from collections import Counter

import pytest

from studyhall.config import load_config
from train.data import Example
from train.methods import METHOD_CLASSES, SOURCES, make_method

TRAIN = [Example(f"ex{i}", [{"role": "user", "content": f"question {i}"}], f"answer {i}") for i in range(10)]


def _method(name: str, *overrides: str, train=TRAIN):
    return make_method(load_config("tiny", [f"method={name}", *overrides]), train)


def made(needs, step: int) -> list[list[dict]]:
    return [[{"prompt_id": e.id, "source": need.source, "made_at_step": step} for e in need.examples] for need in needs]


def batch(method, step: int, n: int = 5) -> tuple[list, list[dict]]:
    needs = method.plan(step, n)
    return needs, method.assemble(needs, made(needs, step))


@pytest.mark.parametrize("name", sorted(METHOD_CLASSES))
def test_every_method_fills_the_batch_from_known_sources(name):
    method = _method(name, "gkd_lambda=0.5", "distillm_p_init=0.5")
    for step in range(1, 8):
        needs, records = batch(method, step)
        assert len(records) == 5
        assert needs == [] or all(need.source in SOURCES and need.examples for need in needs)
        asked = [e.id for need in needs for e in need.examples]
        assert len(asked) == len(set(asked))  # 5 divides the 10 examples: no step straddles two epochs


@pytest.mark.parametrize("name, source", [("sft", "data"), ("kd", "scored_data"), ("switch", "switch"), ("skd", "skd"),
                                          ("adaswitch", "adaswitch")])
def test_single_source_methods_take_the_steps_examples_from_their_source(name, source):
    method = _method(name)
    needs, records = batch(method, 1)
    assert [need.source for need in needs] == [source]
    assert [r["prompt_id"] for r in records] == [e.id for e in method.examples(1, 5)]


def test_the_pass_over_the_training_set_is_a_seeded_shuffle_per_epoch():
    first, again, other = _method("sft"), _method("sft"), _method("sft", "seed=7")
    epoch = [e.id for step in range(1, 6) for e in first.examples(step, 2)]  # 5 steps of 2 = one epoch of 10
    assert sorted(epoch) == sorted(e.id for e in TRAIN)  # every example once
    assert epoch == [e.id for step in range(1, 6) for e in again.examples(step, 2)]
    assert epoch != [e.id for step in range(1, 6) for e in other.examples(step, 2)]
    next_epoch = [e.id for step in range(6, 11) for e in first.examples(step, 2)]
    assert sorted(next_epoch) == sorted(epoch) and next_epoch != epoch  # a fresh order


def test_seqkd_asks_the_teacher_once_per_prompt_and_reuses_its_answers():
    method = _method("seqkd")
    asked = Counter()
    for step in range(1, 9):  # four epochs of a 10-example set at 5 per step
        needs, records = batch(method, step)
        assert [need.source for need in needs] in ([], ["teacher"])
        asked.update(e.id for need in needs for e in need.examples)
        assert [r["prompt_id"] for r in records] == [e.id for e in method.examples(step, 5)]
        assert all(r["source"] == "teacher" for r in records)
    assert asked == Counter({e.id: 1 for e in TRAIN})
    _, last = batch(method, 9)
    assert all(r["made_at_step"] <= 2 for r in last)  # every prompt was answered in the first epoch's two steps


@pytest.mark.parametrize("lam, student_share", [(0.0, 0.0), (1.0, 1.0)])
def test_gkd_at_lambda_0_and_1_is_all_data_or_all_student(lam, student_share):
    method = _method("gkd", f"gkd_lambda={lam}")
    _, records = batch(method, 1)
    assert sum(r["source"] == "student" for r in records) / len(records) == student_share
    assert {r["source"] for r in records} == ({"student"} if lam else {"scored_data"})


def test_gkd_draws_student_samples_at_rate_lambda_reproducibly():
    sources = [r["source"] for step in range(1, 201) for r in batch(_method("gkd", "gkd_lambda=0.3"), step)[1]]
    share = sources.count("student") / len(sources)
    assert 0.25 < share < 0.35, share  # 1000 Bernoulli(0.3) draws: 0.05 is over 3 standard deviations
    assert batch(_method("gkd", "gkd_lambda=0.3"), 5)[1] == batch(_method("gkd", "gkd_lambda=0.3"), 5)[1]


def test_distillm_raises_p_only_when_validation_loss_rises_up_to_p_max():
    method = _method("distillm", "distillm_p_init=0.2", "distillm_p_step=0.3", "distillm_p_max=0.6")
    for step, loss in [(1, 1.0), (2, 0.9), (3, 1.1), (4, 1.2), (5, 1.3)]:
        method.observe_val_loss(step, loss)
    assert method.state()["p_student"] == 0.6 and method.state()["raised_at_steps"] == [3, 4]  # 0.2 -> 0.5 -> 0.6 (capped)


def test_distillm_replays_half_its_student_slots_from_earlier_samples():
    method = _method("distillm", "distillm_p_init=1.0", "distillm_p_max=1.0", "replay_size=100")
    needs, first = batch(method, 1)
    assert [need.source for need in needs] == ["student"] and len(first) == 5  # an empty buffer: all fresh
    assert method.state()["replay_buffer"] == 5
    needs, second = batch(method, 2)
    assert [len(need.examples) for need in needs] == [3]  # 5 student slots: 3 fresh, 2 (5 // 2) replayed
    replayed = [r for r in second if r["made_at_step"] == 1]
    assert len(second) == 5 and len(replayed) == 2 and all(r in first for r in replayed)
    assert method.state()["replay_buffer"] == 8


def test_distillm_below_p_one_mixes_student_samples_and_scored_data():
    method = _method("distillm", "distillm_p_init=0.5")
    sources = Counter(r["source"] for step in range(1, 51) for r in batch(method, step)[1])
    assert sources["scored_data"] > 0 and sources["student"] > 0 and set(sources) == {"scored_data", "student"}


def test_each_engine_source_runs_the_engine_in_its_own_mode():
    """What the rollout asks the SWITCH engine for, per source: the per-method two-step runs exercise
    the switch source end to end; skd and adaswitch differ from it only here (their records and loss
    are switch's), and their engine behaviour is tested on real actors in tests/actors/test_switch_engine.py."""
    from train.records import sample_settings

    cfg = load_config("tiny", ["tau0=0.3", "schedule=linear", "answer_tokens=9", "teacher_topk=3", "max_new_tokens=50"])
    got = {mode: sample_settings(cfg, mode, seed=7) for mode in ("switch", "skd", "adaswitch", "student", "teacher")}
    assert all((s.seed, s.max_new_tokens, s.teacher_topk) == (7, 9, 3) for s in got.values())  # the owners' values
    assert (got["switch"].tau0, got["switch"].schedule, got["switch"].divergence) == (0.3, "linear", cfg.switch.divergence)
    assert got["switch"].writer == got["skd"].writer == got["adaswitch"].writer == "both"
    assert got["skd"].divergence == "skd" and got["skd"].tau0 == 0.3
    assert got["adaswitch"].schedule == "adaptive" and got["adaswitch"].one_token_rounds()
    assert (got["student"].writer, got["student"].mode, got["student"].divergence) == ("student", "block", "js")
    assert (got["teacher"].writer, got["teacher"].mode, got["teacher"].divergence) == ("teacher", "block", "js")
    assert not got["student"].one_token_rounds() and not got["teacher"].one_token_rounds()


@pytest.mark.parametrize("name", ["switch", "skd", "adaswitch"])
def test_engine_methods_train_switch_data_share_of_their_examples_on_scored_data(name):
    engine_source = METHOD_CLASSES[name].source
    assert {r["source"] for r in batch(_method(name), 1)[1]} == {engine_source}  # the default: every example a rollout
    method = _method(name, "switch_data_share=0.25")
    steps = [batch(method, step, n=8) for step in range(1, 126)]
    sources = [r["source"] for _, records in steps for r in records]
    share = sources.count("scored_data") / len(sources)
    assert set(sources) == {engine_source, "scored_data"}
    assert 0.2 < share < 0.3, share  # 1000 Bernoulli(0.25) draws: 0.05 is over 3.6 standard deviations
    for step, (needs, records) in enumerate(steps, start=1):  # each of the step's examples once, from one source
        assert sorted(r["prompt_id"] for r in records) == sorted(e.id for e in method.examples(step, 8))
    again = _method(name, "switch_data_share=0.25")
    assert [batch(again, step, n=8)[1] for step in (1, 2)] == [steps[0][1], steps[1][1]]


@pytest.mark.parametrize("share", ["1.0", "-0.1"])
def test_a_switch_data_share_outside_0_1_is_refused_by_name(share):
    from studyhall.config import ConfigError

    with pytest.raises(ConfigError, match=f"train.switch_data_share={float(share)}"):
        load_config("tiny", [f"switch_data_share={share}"])


@pytest.mark.parametrize("name, overrides", [("sft", []), ("kd", []), ("gkd", ["gkd_lambda=0.5"]), ("switch", ["switch_data_share=0.4"]),
                                             ("skd", []), ("seqkd", []), ("distillm", ["distillm_p_init=0.5"])])
def test_data_examples_cover_every_data_record_a_step_asks_for_and_change_no_plan(name, overrides):
    """What the rollout has the teacher write before training (Rollout.write_references): every example
    a step's batch reads from the data, none it does not where the plan is fixed ahead (all but
    distillm, whose p the validation loss moves), and asking changes none of the steps' plans."""
    ahead, plain = _method(name, *overrides), _method(name, *overrides)
    for step in range(1, 8):
        wanted = [e.id for e in ahead.data_examples(step, 5)]
        needs, _ = batch(ahead, step)
        assert needs == batch(plain, step)[0]
        read = [e.id for need in needs if need.source in ("data", "scored_data") for e in need.examples]
        assert set(read) <= set(wanted)
        if name == "distillm":
            assert wanted == [e.id for e in ahead.examples(step, 5)]
        else:
            assert wanted == read
    if name in ("switch", "gkd"):  # a mix: some steps read data, and not every example
        assert 0 < sum(len(ahead.data_examples(s, 5)) for s in range(1, 8)) < 35
