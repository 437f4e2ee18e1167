"""A training worker that waits for its batch lends its CPU cores to the teacher and student on its
node while it waits, and they compute with their own threads again once the batch is made."""
import pytest
import ray

from studyhall.config import load_config
from train.data import Example
from train.distill import close, start_rollout

pytestmark = pytest.mark.usefixtures("ray_local")


def _examples():
    questions = ["Name a color.", "What do bees make?", "Count to three.", "Where do fish live?"]
    return [Example(f"q{i}", [{"role": "user", "content": q}], None) for i, q in enumerate(questions)]


@pytest.mark.timeout(240)
def test_a_waiting_worker_lends_its_cores_to_the_pair_on_its_node_only():
    # tiny: teacher 0.5 CPU, student 0.5, the worker 0.5. Strict alternation, so every batch is waited
    # for; one pipeline group, so the two models take turns and the one computing may take all 1.5
    cfg = load_config("tiny", ["max_new_tokens=8", "method=gkd", "gkd_lambda=1.0", "global_batch=2", "micro_batch=2",
                               "steps=2", "max_staleness=0", "pipeline_groups=1"])
    here = ray.get_runtime_context().get_node_id()
    rollout, pair_name = start_rollout(cfg, _examples(), [], None)
    try:
        def threads_now():
            return {role: info["threads"] for role, info in ray.get(rollout.pair_info.remote()).items()}

        assert threads_now() == {"teacher": 1, "student": 1}
        ray.get(rollout.batch.remote(1, 0, 1, "a-node-without-the-pair"))
        summary = ray.get(rollout.summary.remote())
        assert summary["counts"]["cores_lent_seconds"] == 0 and summary["lent_threads"] == {}

        ray.get(rollout.batch.remote(2, 0, 1, here))
        summary = ray.get(rollout.summary.remote())
        assert summary["counts"]["cores_lent_seconds"] > 0
        # one pipeline group: whichever model computes takes 0.5 + 0.5 + 0.5 CPUs, as each actor confirmed
        assert summary["lent_threads"] == {"teacher": 2, "student": 2}
        assert threads_now() == {"teacher": 1, "student": 1}  # their own again, before the next batch
    finally:
        close(rollout, pair_name)
