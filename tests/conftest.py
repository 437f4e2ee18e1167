"""Shared fixtures: a local Ray with 2 CPUs, the tiny preset, and no network."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import ray  # noqa: E402


@pytest.fixture(scope="session")
def ray_local():
    if not ray.is_initialized():
        # address="local": a fresh Ray for the tests, never some other cluster running on the machine
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="session")
def tiny_tokenizer():
    from actors.models import load_tokenizer

    return load_tokenizer("tiny:teacher")
