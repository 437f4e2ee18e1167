"""Helpers of the GKT serving tests: start the app on a free loopback port, plain HTTP calls."""
import json
import os
import urllib.error
import urllib.request

from cluster.bench.served_app import free_port

MODEL = "studyhall-gkt"
# Fractions of a CPU, so the app fits the session's 2-CPU Ray next to other tests' actors.
SMALL = ["serve.guide.num_cpus=0.25", "serve.complete.num_cpus=0.25", "serve.ingress_num_cpus=0",
         "serve.default_max_tokens=8"]


def start_app(overrides: list[str], env: dict | None = None) -> str:
    """Deploy the GKT app with the tiny preset plus overrides; return its base URL."""
    from serve.app import start
    from studyhall.config import load_config

    saved = {k: os.environ.get(k) for k in env or {}}
    os.environ.update(env or {})
    try:
        return start(load_config("tiny", [*SMALL, *overrides, f"serve.port={free_port()}"]))
    finally:
        for k, v in saved.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)


def http(url: str, method: str = "GET", body=None, raw: bytes | None = None, key: str | None = None) -> tuple[int, str]:
    """Plain HTTP with urllib: (status, body text), 4xx/5xx included."""
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()
