"""Shared fixtures: a local Ray with 2 CPUs, the tiny preset, and no network."""
import gc
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Ray Train's controller polls its workers every 2 s by default, so each short training run here
# waited up to 2 s to see its workers start and again to see them finish. The processes Ray
# starts inherit this (ray.init below starts the local cluster from this process).
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")

import pytest  # noqa: E402
import ray  # noqa: E402


@pytest.fixture(scope="session")
def ray_local():
    if not ray.is_initialized():
        # address="local": a fresh Ray for the tests, never some other cluster running on the machine
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module", autouse=True)
def collect_dropped_pairs():
    """After each file, collect what its tests dropped inside reference cycles (a pytest.raises
    traceback holds the frames that held a pair's handles): a pair's placement group is removed only
    when its handles are gone, and Ray Train's worker group waits for those CPUs. Under two xdist
    processes a group left this way held one file's CPUs for 10 minutes, until a collection ran."""
    yield
    gc.collect()


@pytest.fixture(scope="session")
def tiny_tokenizer():
    from actors.models import load_tokenizer

    return load_tokenizer("tiny:teacher")


def pytest_collection_modifyitems(items):
    """Files with slow tests run first, in collection order otherwise (make test passes
    --no-loadscope-reorder): with TEST_WORKERS=2 the two xdist processes then share the long runs from
    the start and the many short tests fill in at the end, instead of one finishing a long file alone."""
    slow_files = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow_files)  # stable: each file's tests stay together and in order
