"""The GKT application: TeacherGuide and StudentComplete behind the FastAPI ingress, composed with `.bind()`.

`serve run serve/gkt.yaml` and `serve deploy serve/gkt.yaml` call `build(args)`; `studyhall serve`
calls `run_local`. Replicas, autoscaling and resources of each deployment come from the `serve:`
section of the config (studyhall/config.py: ServeConfig).
"""
import os
import time

import ray
from ray import serve
from ray.serve import Application

from actors.models import load_tokenizer, model_config
from serve.deployments import StudentComplete, TeacherGuide
from serve.ingress import GKTServer
from studyhall.config import Config, ConfigError, ServedModel, load_config

APP_NAME = "gkt"


def deployment_options(spec: ServedModel) -> dict:
    options = {
        "ray_actor_options": {"num_cpus": spec.num_cpus, "num_gpus": spec.num_gpus, "resources": dict(spec.resources)},
        # A replica decodes max_batch_size rows and holds as many more, to join as rows free up.
        "max_ongoing_requests": 2 * spec.max_batch_size,
        "max_queued_requests": spec.max_queued_requests,
    }
    if spec.autoscaling_config:
        options["autoscaling_config"] = dict(spec.autoscaling_config)
    else:
        options["num_replicas"] = spec.num_replicas
    return options


def build_app(cfg: Config) -> Application:
    v = cfg.serve
    teacher = TeacherGuide.options(**deployment_options(v.guide)).bind(v.guide, v.sampling_seed)
    student = StudentComplete.options(**deployment_options(v.complete)).bind(v.complete, v.sampling_seed)
    actor_options = {"num_cpus": v.ingress_num_cpus}
    key = os.environ.get(v.api_key_env)
    if key:  # the ingress replica reads the key from its own environment
        actor_options["runtime_env"] = {"env_vars": {v.api_key_env: key}}
    return GKTServer.options(num_replicas=v.ingress_replicas, max_ongoing_requests=1024,
                             ray_actor_options=actor_options).bind(teacher, student, v)


def check_models(cfg: Config) -> None:
    """Both models and tokenizers resolve, before any replica starts (a typo costs no cluster time)."""
    for spec in (cfg.serve.guide, cfg.serve.complete):
        load_tokenizer(spec.path, spec.trust_remote_code)
        model_config(spec)


def check_resources(cfg: Config) -> None:
    have = ray.cluster_resources()
    need: dict = {"CPU": cfg.serve.ingress_num_cpus * cfg.serve.ingress_replicas}
    for role in ("guide", "complete"):
        spec = getattr(cfg.serve, role)
        replicas = spec.autoscaling_config.get("min_replicas", 1) if spec.autoscaling_config else spec.num_replicas
        for name, value in {"CPU": spec.num_cpus, "GPU": spec.num_gpus, **spec.resources}.items():
            need[name] = need.get(name, 0) + value * replicas
    for name, value in need.items():
        if value > have.get(name, 0) + 1e-9:
            raise ConfigError(f"serve: the deployments ask for {value:g} {name} but the Ray cluster has {have.get(name, 0):g}")


def build(args: dict) -> Application:
    """Entry for `serve run` / `serve deploy`: args {preset: tiny|smol, overrides: [key=value, ...]}."""
    cfg = load_config(str(args.get("preset", "smol")), [str(o) for o in args.get("overrides", []) or []])
    check_models(cfg)
    return build_app(cfg)


def start(cfg: Config) -> str:
    """Start Serve on 127.0.0.1 (or the configured host) and deploy the app; return its base URL."""
    check_models(cfg)
    if not ray.is_initialized():
        ray.init(log_to_driver=False)
    check_resources(cfg)
    serve.start(http_options={"host": cfg.serve.host, "port": cfg.serve.port})
    serve.run(build_app(cfg), name=APP_NAME, route_prefix="/", blocking=False)
    return f"http://{cfg.serve.host}:{cfg.serve.port}"


def run_local(cfg: Config) -> None:
    """`studyhall serve`: deploy, print the URL, serve until Ctrl-C."""
    url = start(cfg)
    key_note = f" (API key required: ${cfg.serve.api_key_env})" if os.environ.get(cfg.serve.api_key_env) else ""
    print(f"GKT serving {cfg.serve.model_name!r} at {url}/v1{key_note}  "
          f"teacher={cfg.serve.guide.path} student={cfg.serve.complete.path} k={cfg.serve.guidance_tokens}", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        serve.shutdown()
