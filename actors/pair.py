"""Start the teacher and student actors of one SWITCH run, after checking they can work together."""
import gc
import weakref

import ray
from ray.util.placement_group import PlacementGroup, placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from actors.lm_worker import StudentActor, TeacherActor
from actors.models import context_length, load_tokenizer, model_config
from studyhall.config import Config, ConfigError
from studyhall.engine_settings import engine_settings


def check_pair(cfg: Config, across_tokenizers: bool = False):
    """Before any actor starts: both models resolve, share a vocabulary (unless `across_tokenizers`:
    the caller knows how to bridge two), and fit the prompts.

    Returns (the student's tokenizer, context length shared by both models).
    """
    teacher_tok = load_tokenizer(cfg.teacher.path, cfg.teacher.trust_remote_code)
    student_tok = load_tokenizer(cfg.student.path, cfg.student.trust_remote_code)
    configs = model_config(cfg.teacher), model_config(cfg.student)
    if across_tokenizers:
        return student_tok, min(context_length(c) for c in configs)
    if teacher_tok.get_vocab() != student_tok.get_vocab():
        raise ConfigError(
            f"teacher {cfg.teacher.path!r} and student {cfg.student.path!r} use different vocabularies; "
            "SWITCH compares next-token distributions, so both must share one tokenizer")
    if configs[0].vocab_size != configs[1].vocab_size:
        raise ConfigError(f"teacher vocab_size {configs[0].vocab_size} != student vocab_size {configs[1].vocab_size}")
    return student_tok, min(context_length(c) for c in configs)


ROLES = ("teacher", "student")


def ray_demand(spec) -> dict:
    """What one actor asks of the cluster, in Ray's resource names; also its placement group bundle."""
    return {"CPU": spec.num_cpus, "GPU": spec.num_gpus, **spec.resources}


def bundle(spec) -> dict:
    """The actor's demand as a placement group bundle: zero entries dropped, they reserve nothing."""
    return {name: float(value) for name, value in ray_demand(spec).items() if value}


def _fmt(resources: dict) -> str:
    return "{" + ", ".join(f"{name}: {value:g}" for name, value in sorted(resources.items())) + "}"


def _fits(demand: dict, node: dict) -> bool:
    return all(node.get(name, 0) >= value for name, value in demand.items())


def _alive_nodes() -> list[dict]:
    return [node["Resources"] for node in ray.nodes() if node["Alive"]]


def check_resources(cfg: Config) -> None:
    """Fail fast, instead of waiting forever, when the cluster cannot hold what the actors ask for.

    Judges the nodes that are up now: on an autoscaling cluster, keep min_workers >= 1 for the node
    types the teacher and the student need (ray_cluster.yaml does).
    """
    have = ray.cluster_resources()
    bundles = {role: bundle(getattr(cfg, role)) for role in ROLES}
    total: dict = {}
    for role, demand in bundles.items():
        if not demand:
            raise ConfigError(f"{role} asks for no resources; give it num_cpus, num_gpus or resources > 0")
        for name, value in demand.items():
            if value > have.get(name, 0):
                raise ConfigError(f"{role} asks for {value} {name} but the Ray cluster has {have.get(name, 0)}")
            total[name] = total.get(name, 0) + value
    for name, value in total.items():
        if value > have.get(name, 0):
            raise ConfigError(f"teacher and student together ask for {value} {name} but the Ray cluster has {have.get(name, 0)}")
    nodes = _alive_nodes()
    for role, demand in bundles.items():  # a bundle never straddles two nodes
        if not any(_fits(demand, node) for node in nodes):
            short = [name for name, value in demand.items() if not any(node.get(name, 0) >= value for node in nodes)]
            lacking = f"that much {' and '.join(short)}" if short else "all of it at once"
            raise ConfigError(f"{role} asks for {_fmt(demand)} on one node, but no node has {lacking}")
    teacher, student = bundles["teacher"], bundles["student"]
    if cfg.placement_strategy == "STRICT_PACK" and not any(_fits(total, node) for node in nodes):
        raise ConfigError(f"placement_strategy=STRICT_PACK puts teacher and student on one node, but no node has {_fmt(total)}")
    if cfg.placement_strategy == "STRICT_SPREAD" and not any(
            _fits(teacher, a) and _fits(student, b) for i, a in enumerate(nodes) for j, b in enumerate(nodes) if i != j):
        raise ConfigError(f"placement_strategy=STRICT_SPREAD puts teacher {_fmt(teacher)} and student {_fmt(student)} on "
                          f"two different nodes, but the cluster has {len(nodes)} node(s) and no two that hold them")


def reserve(cfg: Config, name: str = "") -> PlacementGroup:
    """A placement group with one bundle per role (teacher = bundle 0, student = bundle 1), ready."""
    bundles = [bundle(getattr(cfg, role)) for role in ROLES]
    pg = placement_group(bundles, strategy=cfg.placement_strategy, name=name)
    ready, _ = ray.wait([pg.ready()], timeout=min(1.0, cfg.placement_timeout_s))
    if not ready:  # a pair its caller dropped inside a reference cycle frees its group only when collected
        gc.collect()
        ready, _ = ray.wait([pg.ready()], timeout=max(cfg.placement_timeout_s - 1.0, 0))
    if not ready:
        remove_placement_group(pg)
        asks = ", ".join(f"{role} {_fmt(b)}" for role, b in zip(ROLES, bundles))
        available = ray.available_resources()  # lists only what is left; a resource all taken is absent
        free = {name: available.get(name, 0) for b in bundles for name in b}
        raise ConfigError(f"teacher and student could not be placed within {cfg.placement_timeout_s:g} s "
                          f"(placement_strategy={cfg.placement_strategy}): asked for {asks}; free now: {_fmt(free)}")
    return pg


def start_pair(cfg: Config, name: str = ""):
    """The two actors in their placement group, with resources from config, ready (models loaded).

    The group lives as long as the caller holds both actor handles (as the actors themselves do);
    `stop_pair` ends both at once. A caller that is itself an actor which may die names the group,
    so that whoever started it can `release_group(name)`: the actors die with their owner, but a
    placement group lives until its job ends.
    """
    check_resources(cfg)
    pg = reserve(cfg, name)
    actors = {}
    for index, (role, cls) in enumerate((("teacher", TeacherActor), ("student", StudentActor))):
        spec = getattr(cfg, role)
        strategy = PlacementGroupSchedulingStrategy(placement_group=pg, placement_group_bundle_index=index)
        # Ray restarts a lost actor in its bundle; its tasks are not retried (they change the actor's
        # batches): the SWITCH controller rebuilds the batches instead (actors/revival.py).
        actors[role] = cls.options(num_cpus=spec.num_cpus, num_gpus=spec.num_gpus, resources=dict(spec.resources),
                                   scheduling_strategy=strategy, max_restarts=cfg.max_restarts,
                                   max_task_retries=0).remote(spec, engine_settings(cfg))
    _release_with_handles(pg, list(actors.values()))
    ray.get([actor.load.remote() for actor in actors.values()])
    return actors["teacher"], actors["student"]


def stop_pair(teacher, student) -> None:
    """Kill both actors and give their placement group's resources back to the cluster now."""
    for actor in (teacher, student):
        ray.kill(actor)
    pg = _GROUPS.pop(teacher._actor_id, None)
    if pg is not None:
        remove_placement_group(pg)


def release_group(name: str) -> None:
    """Remove the named placement group of a pair whose owner died, if it is still there."""
    try:
        remove_placement_group(ray.util.get_placement_group(name))
    except ValueError:  # no such group: its owner removed it
        pass


# A placement group outlives ray.kill of its actors; it is removed when the driver drops both handles
# (what the callers of start_pair already do to end a pair), or by stop_pair.
_GROUPS: dict = {}


def _release_with_handles(pg: PlacementGroup, handles: list) -> None:
    key = handles[0]._actor_id
    _GROUPS[key] = pg
    left = [len(handles)]

    def one_gone():
        left[0] -= 1
        if left[0] == 0 and _GROUPS.pop(key, None) is not None and ray.is_initialized():
            remove_placement_group(pg)

    for handle in handles:
        weakref.finalize(handle, one_gone).atexit = False
