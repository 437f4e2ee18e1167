"""SWITCH pipeline groups for training batches: two keep the teacher and student busy at once, one
where that would take cores from a trainer stepping beside them (auto), and a set value always."""
import dataclasses

from studyhall.config import load_config
from studyhall.threads import pair_contends_with_trainer
from train.rollout import batch_pipeline_groups, engine_settings


def test_training_batches_run_one_pipeline_group_where_a_second_would_take_the_trainers_cores():
    # smol with overlap: teacher, student and trainer run 1 + 1 + 1 threads on 1 + 0.5 + 0.5 CPUs
    assert pair_contends_with_trainer(load_config("smol", ["max_staleness=1"]))
    assert batch_pipeline_groups(load_config("smol", ["max_staleness=1"])) == 1
    # strict alternation: the trainer waits while the pair generates, so both models may work at once
    assert batch_pipeline_groups(load_config("smol", ["max_staleness=0"])) == 2
    # a whole core each, or GPUs for the models: no contention
    enough = ["max_staleness=1", "teacher.num_cpus=1", "student.num_cpus=1", "cpus_per_worker=1"]
    assert batch_pipeline_groups(load_config("smol", enough)) == 2
    gpus = ["max_staleness=1", "teacher.num_gpus=1", "student.num_gpus=1", "gpus_per_worker=1"]
    assert batch_pipeline_groups(load_config("smol", gpus)) == 2
    # a value the user set is what runs
    assert batch_pipeline_groups(load_config("smol", ["max_staleness=1", "pipeline_groups=2"])) == 2
    assert batch_pipeline_groups(load_config("smol", ["max_staleness=0", "pipeline_groups=1"])) == 1


def test_a_lone_group_runs_one_token_rounds_only_where_both_models_write():
    lone = dataclasses.replace(load_config("smol").switch, pipeline_groups=1)  # as a training batch's engine runs
    assert engine_settings(lone, "switch", 0).one_token_rounds()
    assert engine_settings(lone, "skd", 0).one_token_rounds()
    # one model writes every token: every drafted one stands, so blocks score many at a time
    assert not engine_settings(lone, "student", 0).one_token_rounds()
    assert not engine_settings(lone, "teacher", 0).one_token_rounds()
