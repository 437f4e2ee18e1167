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
    assert (s.temperature, s.top_p, s.max_new_tokens, s.batch_size, s.seed, s.sample) == (0.7, 0.9, 64, 4, 7, False)
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
