"""SWITCH pipeline groups, resolved once per run (studyhall/engine_settings.py): two keep the teacher and
student busy at once, one for training batches where that would take cores from a trainer stepping
beside them (auto), and a set value always."""
import dataclasses

import pytest

from studyhall.config import load_config
from studyhall.engine_settings import engine_settings, pipeline_groups
from studyhall.threads import pair_contends_with_trainer
from train.records import sample_settings


def test_training_batches_run_one_pipeline_group_where_a_second_would_take_the_trainers_cores():
    # smol with overlap: teacher, student and trainer run 1 + 1 + 1 threads on 1 + 0.5 + 0.5 CPUs
    assert pair_contends_with_trainer(load_config("smol", ["max_staleness=1"]))
    assert pipeline_groups(load_config("smol", ["max_staleness=1"]), beside_trainer=True) == 1
    # no trainer beside the engine (evaluation, studyhall generate): both models may work at once
    assert pipeline_groups(load_config("smol", ["max_staleness=1"]), beside_trainer=False) == 2
    # strict alternation: the trainer waits while the pair generates
    assert pipeline_groups(load_config("smol", ["max_staleness=0"]), beside_trainer=True) == 2
    # a whole core each, or GPUs for the models: no contention
    enough = ["max_staleness=1", "teacher.num_cpus=1", "student.num_cpus=1", "cpus_per_worker=1"]
    assert pipeline_groups(load_config("smol", enough), beside_trainer=True) == 2
    gpus = ["max_staleness=1", "teacher.num_gpus=1", "student.num_gpus=1", "gpus_per_worker=1"]
    assert pipeline_groups(load_config("smol", gpus), beside_trainer=True) == 2
    # a value the user set is what runs
    assert pipeline_groups(load_config("smol", ["max_staleness=1", "pipeline_groups=2"]), beside_trainer=True) == 2
    assert pipeline_groups(load_config("smol", ["max_staleness=0", "pipeline_groups=1"]), beside_trainer=False) == 1


def test_a_lone_group_runs_one_token_rounds_only_where_both_models_write():
    cfg = load_config("smol", ["max_staleness=1"])  # a training batch's engine runs one group here
    assert sample_settings(cfg, "switch", 0, beside_trainer=True).one_token_rounds()
    assert sample_settings(cfg, "skd", 0, beside_trainer=True).one_token_rounds()
    # one model writes every token: every drafted one stands, so blocks score many at a time
    assert not sample_settings(cfg, "student", 0, beside_trainer=True).one_token_rounds()
    assert not sample_settings(cfg, "teacher", 0, beside_trainer=True).one_token_rounds()
    # two groups: blocks, each actor busy with the other group's round meanwhile
    assert not engine_settings(cfg).one_token_rounds() and engine_settings(cfg).mode == "block"


def test_the_engine_refuses_an_unresolved_auto():
    raw = load_config("smol").switch
    with pytest.raises(ValueError, match="unresolved"):
        raw.groups()
    with pytest.raises(ValueError, match="unresolved"):
        dataclasses.replace(raw, pipeline_groups=1).one_token_rounds()
