"""The warm start's two stages: what each trains, and when a finished warm stage is reused."""
import dataclasses
import json

import pytest

from studyhall.config import ConfigError, load_config
from train.distill import reusable_stage, stages


def test_the_warm_stage_trains_the_given_student_and_the_method_the_saved_one(tmp_path):
    cfg = load_config("tiny", ["method=switch", "loss=fkl", "steps=6", "lr=1e-4", "warmup_steps=2",
                               "warm_start=sft", "warm_steps=3", "warm_lr=1e-3"])
    warm, method = stages(cfg, tmp_path / "warm_start")
    assert (warm.train.method, warm.train.loss, warm.train.steps, warm.train.lr, warm.train.warmup_steps) == ("sft", "auto", 3, 1e-3, 2)
    assert warm.student.path == cfg.student.path and not warm.train.warm_start
    assert (method.train.method, method.train.loss, method.train.steps, method.train.lr) == ("switch", "fkl", 6, 1e-4)
    assert method.student.path == str(tmp_path / "warm_start" / "student") and not method.train.warm_start
    assert dataclasses.replace(method.student, path=cfg.student.path) == cfg.student  # nothing else of the student changes
    assert stages(load_config("tiny", ["warm_start=kd", "warm_steps=2"]), tmp_path)[0].train.lr == cfg.train.lr  # warm_lr=0: train.lr


def test_each_stage_has_its_own_unlikelihood_weight(tmp_path):
    cfg = load_config("tiny", ["warm_start=kd", "warm_steps=2", "warm_unlikelihood=1.0", "unlikelihood=0.25"])
    warm, method = stages(cfg, tmp_path)
    assert (warm.train.unlikelihood, method.train.unlikelihood) == (1.0, 0.25)
    assert (warm.train.warm_unlikelihood, method.train.warm_unlikelihood) == (0.0, 0.0)  # neither stage has a stage after it
    warm, method = stages(load_config("tiny", ["warm_start=kd", "warm_steps=2", "unlikelihood=0.5"]), tmp_path)
    assert (warm.train.unlikelihood, method.train.unlikelihood) == (0.0, 0.5)  # warm_unlikelihood=0: off in the warm stage


def test_the_teacher_scores_the_greedy_answers_in_the_methods_stage_only(tmp_path):
    cfg = load_config("tiny", ["warm_start=kd", "warm_steps=2", "warm_unlikelihood=1.0", "unlikelihood=2.0", "unlikelihood_teacher=true"])
    warm, method = stages(cfg, tmp_path)
    assert (warm.train.unlikelihood_teacher, method.train.unlikelihood_teacher) == (False, True)


def test_a_finished_warm_stage_of_the_same_config_is_reused_and_another_is_not(tmp_path):
    cfg = load_config("tiny", ["warm_start=sft", "warm_steps=2"])
    warm, _ = stages(cfg, tmp_path)
    (tmp_path / "student").mkdir()
    config = json.loads(json.dumps(dataclasses.asdict(warm), default=str))
    (tmp_path / "report.json").write_text(json.dumps({"config": config, "method": "sft"}))
    assert reusable_stage(tmp_path, warm) is None  # no saved student yet
    (tmp_path / "student" / "config.json").write_text("{}")
    assert reusable_stage(tmp_path, warm)["method"] == "sft"
    other, _ = stages(load_config("tiny", ["warm_start=sft", "warm_steps=3"]), tmp_path)
    assert reusable_stage(tmp_path, other) is None
    # the method's SWITCH gate does not change an sft stage; the evaluation's seed does
    assert reusable_stage(tmp_path, stages(load_config("tiny", ["warm_start=sft", "warm_steps=2", "tau0=0.1"]), tmp_path)[0])
    assert reusable_stage(tmp_path, stages(load_config("tiny", ["warm_start=sft", "warm_steps=2", "writer=teacher"]), tmp_path)[0])
    assert reusable_stage(tmp_path, stages(load_config("tiny", ["warm_start=sft", "warm_steps=2", "switch_data_share=0.5"]), tmp_path)[0])
    without = {**config, "train": {k: v for k, v in config["train"].items() if k != "switch_data_share"}}
    (tmp_path / "report.json").write_text(json.dumps({"config": without, "method": "sft"}))
    assert reusable_stage(tmp_path, warm)["method"] == "sft"  # a stage written before the setting existed
    (tmp_path / "report.json").write_text(json.dumps({"config": config, "method": "sft"}))
    assert reusable_stage(tmp_path, stages(load_config("tiny", ["warm_start=sft", "warm_steps=2", "seed=5"]), tmp_path)[0]) is None
    (tmp_path / "report.json").write_text("{not json")
    assert reusable_stage(tmp_path, warm) is None


@pytest.mark.parametrize("overrides, message", [
    (["warm_start=sft"], "train.warm_steps=0: must be >= 1 with warm_start=sft"),
    (["warm_start=bogus", "warm_steps=2"], "train.warm_start='bogus': choose empty (none) or one of sft, kd"),
    (["warm_start=kd", "warm_steps=2", "warm_lr=-1"], "train.warm_lr=-1.0: must be >= 0"),
    (["warm_start=kd", "warm_steps=2", "warm_unlikelihood=-1"], "train.warm_unlikelihood=-1.0: must be >= 0"),
])
def test_bad_warm_start_settings_are_named(overrides, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_config("tiny", overrides)
