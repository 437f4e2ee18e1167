"""What the serving benches share: a free local port, the served app's replica counters and prefix
caches, and progress lines on stderr."""
import socket
import sys

from ray import serve

from serve.app import APP_NAME

MODEL_DEPLOYMENTS = (("teacher", "TeacherGuide"), ("student", "StudentComplete"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def reset_prefix_caches() -> None:
    """Both model deployments drop their cached prefixes (the pinned chat template stays): each run starts cold."""
    for _, name in MODEL_DEPLOYMENTS:
        serve.get_deployment_handle(name, app_name=APP_NAME).reset_prefix_cache.remote().result()


def replica_stats() -> dict:
    """Each model deployment's decode-loop counters (one replica each in the bench)."""
    return {role: serve.get_deployment_handle(name, app_name=APP_NAME).stats.remote().result()
            for role, name in MODEL_DEPLOYMENTS}


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
