"""Presets, key=value overrides and validation."""
import pytest

from studyhall.config import ConfigError, load_config, preset_names


def test_presets_load_and_overrides_apply():
    assert {"tiny", "smol"} <= set(preset_names())
    cfg = load_config("tiny", ["tau0=0.2", "switch.lam=0.1", "gamma=6", "divergence=kl_ts", "schedule=linear",
                               "temperature=0.7", "top_p=0.9", "max_new_tokens=64", "batch_size=4", "seed=7",
                               "sample=false", "teacher.num_cpus=0.25", "tau0=1e-3"])
    s = cfg.switch
    assert (s.tau0, s.lam, s.gamma, s.divergence, s.schedule) == (1e-3, 0.1, 6, "kl_ts", "linear")
    assert (s.temperature, s.top_p, s.max_new_tokens, s.batch_size, s.sample) == (0.7, 0.9, 64, 4, False)
    assert cfg.seed == 7  # the run's seed is the top level's, not the engine section's
    assert cfg.teacher.num_cpus == 0.25 and cfg.student.num_cpus == 0.5  # the override, and the preset's own
    assert isinstance(s.tau0, float) and isinstance(s.gamma, int)


@pytest.mark.parametrize("overrides, fragment", [
    (["tau0=-0.1"], "switch.tau0=-0.1"),
    (["gamma=0"], "switch.gamma=0"),
    (["temperature=0"], "switch.temperature=0.0"),
    (["temperature=-1", "sample=true"], "must be > 0 when sampling"),
    (["divergence=hellinger"], "switch.divergence='hellinger'"),
    (["schedule=cosine"], "switch.schedule='cosine'"),
    (["top_p=1.5"], "switch.top_p=1.5"),
    (["gamma=2.5"], "'gamma=2.5': must be a whole number"),
    (["tau0=abc"], "'tau0=abc': must be a number"),
    (["num_cpus=1"], "ambiguous"),
    (["nonsense=1"], "unknown key"),
    (["tau0"], "not key=value"),
    (["writer=nobody"], "switch.writer='nobody': choose one of both, student, teacher"),
    (["answer_tokens=0"], "train.answer_tokens=0: must be >= 1"),
    # keys that moved to the section that owns them name the new key
    (["switch.seed=3"], "switch.seed moved to seed; set seed=3"),
    (["switch.teacher_topk=5"], "switch.teacher_topk moved to train.teacher_topk; set train.teacher_topk=5"),
])
def test_bad_values_name_the_field(overrides, fragment):
    with pytest.raises(ConfigError, match=None) as err:
        load_config("tiny", overrides)
    assert fragment in str(err.value)


def test_greedy_allows_any_temperature():
    assert load_config("tiny", ["sample=false", "temperature=0"]).switch.sample is False


def test_unknown_preset_lists_the_known_ones():
    with pytest.raises(ConfigError, match="unknown preset 'huge'.*smol.*tiny"):
        load_config("huge")


def test_a_preset_with_a_moved_key_names_the_new_one(tmp_path, monkeypatch):
    import studyhall.config as config

    (tmp_path / "old.yaml").write_text("switch:\n  tau0: 0.3\n  seed: 4\n")
    monkeypatch.setattr(config, "PRESET_DIR", tmp_path)
    with pytest.raises(ConfigError) as err:
        load_config("old")
    assert str(err.value) == f"{tmp_path / 'old.yaml'}: switch: switch.seed moved to seed"


def test_run_filled_engine_fields_are_not_keys():
    from studyhall.config import _leaf_paths

    keys = _leaf_paths(load_config("tiny"))
    assert {"seed", "train.teacher_topk", "switch.writer"} <= set(keys)
    assert not {"switch.seed", "switch.teacher_topk"} & set(keys)
    cfg = load_config("tiny", ["teacher_topk=7", "seed=2"])  # leaf names now reach the owners alone
    assert (cfg.train.teacher_topk, cfg.seed) == (7, 2)
