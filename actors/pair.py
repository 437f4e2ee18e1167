"""Start the teacher and student actors of one SWITCH run, after checking they can work together."""
import ray

from actors.lm_worker import StudentActor, TeacherActor
from actors.models import context_length, load_tokenizer, model_config
from cluster.config import Config, ConfigError


def check_pair(cfg: Config):
    """Before any actor starts: both models resolve, share a vocabulary, and fit the prompts.

    Returns (tokenizer, context length shared by both models).
    """
    teacher_tok = load_tokenizer(cfg.teacher.path, cfg.teacher.trust_remote_code)
    student_tok = load_tokenizer(cfg.student.path, cfg.student.trust_remote_code)
    if teacher_tok.get_vocab() != student_tok.get_vocab():
        raise ConfigError(
            f"teacher {cfg.teacher.path!r} and student {cfg.student.path!r} use different vocabularies; "
            "SWITCH compares next-token distributions, so both must share one tokenizer")
    configs = model_config(cfg.teacher), model_config(cfg.student)
    if configs[0].vocab_size != configs[1].vocab_size:
        raise ConfigError(f"teacher vocab_size {configs[0].vocab_size} != student vocab_size {configs[1].vocab_size}")
    return student_tok, min(context_length(c) for c in configs)


def actor_options(spec) -> dict:
    return {"num_cpus": spec.num_cpus, "num_gpus": spec.num_gpus, "resources": dict(spec.resources)}


def ray_demand(spec) -> dict:
    """What one actor asks of the cluster, in Ray's resource names."""
    return {"CPU": spec.num_cpus, "GPU": spec.num_gpus, **spec.resources}


def check_resources(cfg: Config) -> None:
    """Fail fast, instead of waiting forever, when the cluster lacks what the actors ask for."""
    have = ray.cluster_resources()
    total: dict = {}
    for role in ("teacher", "student"):
        for name, value in ray_demand(getattr(cfg, role)).items():
            if value > have.get(name, 0):
                raise ConfigError(f"{role} asks for {value} {name} but the Ray cluster has {have.get(name, 0)}")
            total[name] = total.get(name, 0) + value
    for name, value in total.items():
        if value > have.get(name, 0):
            raise ConfigError(f"teacher and student together ask for {value} {name} but the Ray cluster has {have.get(name, 0)}")


def start_pair(cfg: Config):
    """The two actors, with resources from config, ready (models loaded)."""
    check_resources(cfg)
    actors = {
        "teacher": TeacherActor.options(**actor_options(cfg.teacher)).remote(cfg.teacher, cfg.switch),
        "student": StudentActor.options(**actor_options(cfg.student)).remote(cfg.student, cfg.switch),
    }
    placed = {role: actor.__ray_ready__.remote() for role, actor in actors.items()}
    ready, _ = ray.wait(list(placed.values()), num_returns=len(placed), timeout=cfg.placement_timeout_s)
    waiting = [role for role, ref in placed.items() if ref not in ready]
    if waiting:
        for actor in actors.values():
            ray.kill(actor)
        asks = {role: actor_options(getattr(cfg, role)) for role in waiting}
        raise ConfigError(f"{' and '.join(waiting)} could not be placed within {cfg.placement_timeout_s:g} s: "
                          f"asked for {asks}; free now: {ray.available_resources()}")
    ray.get([actor.load.remote() for actor in actors.values()])
    return actors["teacher"], actors["student"]
