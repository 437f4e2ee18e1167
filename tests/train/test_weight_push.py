"""The trainer's weight push reaches the student generation actor: its samples change, and come
back exactly when the original weights are pushed again."""
import pytest
import ray
import torch

from actors.models import load_model
from studyhall.config import ModelConfig, load_config
from train.data import Example
from train.distill import close, start_rollout

pytestmark = pytest.mark.usefixtures("ray_local")


@pytest.mark.timeout(240)
def test_pushed_weights_change_what_the_generation_actor_samples():

    cfg = load_config("tiny", ["max_new_tokens=12"])
    val = [Example(f"q{i}", [{"role": "user", "content": q}], "a reference answer")
           for i, q in enumerate(["Name a color.", "What do bees make?", "Count to three."])]
    rollout, pair_name = start_rollout(cfg, [], val, None)
    try:
        def texts():
            return [s["prediction"] for s in ray.get(rollout.sample_student.remote(val, 1, 5))]

        original = texts()
        assert texts() == original  # same seed, same weights: the same samples

        state = load_model(ModelConfig(path="tiny:student"), torch.device("cpu")).state_dict()
        perturbed = {k: v + 0.5 * torch.randn_like(v) if v.dtype.is_floating_point else v for k, v in state.items()}
        ray.get(rollout.push_weights.remote(perturbed, 1))
        changed = texts()
        assert changed != original

        ray.get(rollout.push_weights.remote(state, 2))
        assert texts() == original
    finally:
        close(rollout, pair_name)
