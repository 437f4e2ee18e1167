"""The Serve config YAML, the app builder and the `serve:` config section, without starting Ray."""
from pathlib import Path

import pytest
import yaml
from ray.serve.schema import ServeDeploySchema

from serve.app import build, deployment_options
from studyhall.config import ConfigError, load_config

SERVE_YAML = Path(__file__).parents[2] / "serve" / "gkt.yaml"


def test_serve_yaml_is_valid_for_serve_run_and_binds_loopback():
    schema = ServeDeploySchema.model_validate(yaml.safe_load(SERVE_YAML.read_text()))
    assert schema.http_options.host == "127.0.0.1"
    app = schema.applications[0]
    assert app.import_path == "serve.app:build"
    assert build({**app.args, "preset": "tiny"}) is not None  # the builder `serve run` calls, with the tiny models


def test_deployment_options_come_from_config():
    cfg = load_config("tiny", ["serve.guide.num_gpus=1", "serve.guide.num_replicas=3", "serve.complete.num_cpus=0.5",
                               "serve.complete.autoscaling_config={min_replicas: 1, max_replicas: 4}"])
    guide, complete = deployment_options(cfg.serve.guide), deployment_options(cfg.serve.complete)
    assert guide["num_replicas"] == 3 and guide["ray_actor_options"]["num_gpus"] == 1
    assert complete["autoscaling_config"] == {"min_replicas": 1, "max_replicas": 4} and "num_replicas" not in complete
    assert complete["ray_actor_options"]["num_cpus"] == 0.5
    assert cfg.serve.guide.path == "tiny:guide-teacher"  # the tiny preset's costlier GKT teacher


@pytest.mark.parametrize("override,fragment", [
    ("serve.guidance_tokens=-1", "serve.guidance_tokens=-1"),
    ("serve.default_max_tokens=0", "serve.default_max_tokens=0"),
    ("serve.guide.max_batch_size=0", "serve.guide.max_batch_size=0"),
    ("serve.complete.autoscaling_config={min_replicas: 3, max_replicas: 1}", "serve.complete.autoscaling_config"),
    ("serve.guide.autoscaling_config={replicas: 2}", "unknown key 'replicas'"),
    ("serve.port=70000", "serve.port=70000"),
])
def test_bad_serve_config_is_one_clear_error(override, fragment):
    with pytest.raises(ConfigError, match=fragment.replace("{", r"\{").replace("}", r"\}")):
        load_config("tiny", [override])


def test_unknown_model_path_fails_before_serving():
    with pytest.raises(ConfigError, match="tiny:nope"):
        build({"preset": "tiny", "overrides": ["serve.guide.path=tiny:nope"]})
