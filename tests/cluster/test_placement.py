"""Placement on a real multi-node Ray cluster (ray.cluster_utils.Cluster: two raylets on this machine)
with fake GPUs and the custom resources ray_cluster.yaml gives its node types.

The pytest process already holds the in-process `ray_local` cluster, so the scenario runs in a
subprocess (this file run as a script) with its own cluster, and prints what it saw as JSON.
"""
import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
SPLIT = ["teacher.num_cpus=1", "student.num_cpus=1", "teacher.num_gpus=1", "teacher.resources={teacher_gpu: 1}", "student.num_gpus=1", "student.resources={student_gpu: 1}"]


class Holder:
    """Takes the teacher's node resource, as another job would."""


def scenario() -> dict:
    import time

    import ray
    from ray.cluster_utils import Cluster
    from ray.util.placement_group import placement_group_table

    from actors.pair import start_pair, stop_pair
    from studyhall.config import ConfigError, load_config

    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 1, "num_gpus": 1, "resources": {"teacher_gpu": 1}, "include_dashboard": False})
    teacher_node = cluster.head_node
    student_node = cluster.add_node(num_cpus=1, num_gpus=1, resources={"student_gpu": 1})
    ray.init(address=cluster.address, log_to_driver=False)
    cluster.wait_for_nodes()
    seen = {"teacher_node": teacher_node.node_id, "student_node": student_node.node_id}

    def error_of(overrides, timeout=None):
        started = time.perf_counter()
        try:
            cfg = load_config("tiny", overrides)
            if timeout:
                cfg.placement_timeout_s = timeout
            pair = start_pair(cfg)
        except ConfigError as err:
            return {"error": str(err), "seconds": time.perf_counter() - started}
        stop_pair(*pair)
        return {"error": None}

    # Teacher and student each on their own (fake) GPU node, STRICT_SPREAD as on a GPU cluster.
    teacher, student = start_pair(load_config("tiny", [*SPLIT, "placement_strategy=STRICT_SPREAD"]))
    seen["spread"] = ray.get([teacher.info.remote(), student.info.remote()])
    seen["spread_pg"] = [
        {"bundles": t["bundles"], "strategy": t["strategy"], "bundles_to_node_id": t["bundles_to_node_id"]}
        for t in placement_group_table().values() if t["state"] == "CREATED"]
    stop_pair(teacher, student)
    time.sleep(1)
    seen["free_after_stop"] = ray.available_resources()

    # Colocation: half a GPU each, both on the teacher's node.
    colocated = ["teacher.num_gpus=0.5", "teacher.resources={teacher_gpu: 0.5}", "student.num_gpus=0.5",
                 "student.resources={teacher_gpu: 0.5}", "placement_strategy=STRICT_PACK"]
    teacher, student = start_pair(load_config("tiny", colocated))
    seen["colocated"] = ray.get([teacher.info.remote(), student.info.remote()])
    stop_pair(teacher, student)

    # Asking for more than the cluster has: fail fast, before anything starts.
    seen["too_many_gpus"] = error_of(["teacher.num_gpus=4"])
    seen["gpus_not_on_one_node"] = error_of(["teacher.num_gpus=2"])
    seen["missing_custom"] = error_of(["teacher.resources={a100: 1}"])
    seen["strict_pack_apart"] = error_of([*SPLIT, "placement_strategy=STRICT_PACK"])
    # Enough in total, but taken right now: the placement group times out, is removed, and says so.
    holder = ray.remote(num_cpus=0)(Holder).options(resources={"teacher_gpu": 1}).remote()
    ray.get(holder.__ray_ready__.remote())
    seen["busy"] = error_of(SPLIT, timeout=3)
    time.sleep(1)
    seen["pending_groups_after_timeout"] = sum(t["state"] != "REMOVED" for t in placement_group_table().values())
    seen["free_after_timeout"] = ray.available_resources()
    ray.kill(holder)
    ray.shutdown()
    cluster.shutdown()
    return seen


@pytest.fixture(scope="module")
def seen(tmp_path_factory):
    out = tmp_path_factory.mktemp("placement") / "seen.json"
    run = subprocess.run([sys.executable, __file__, str(out)], cwd=ROOT, capture_output=True, text=True, timeout=540)
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(out.read_text())


def test_teacher_and_student_land_on_their_own_gpu_nodes(seen):
    teacher, student = seen["spread"]
    assert teacher["node"] == seen["teacher_node"] and student["node"] == seen["student_node"]
    assert teacher["assigned_resources"]["teacher_gpu"] == 1 and "student_gpu" not in teacher["assigned_resources"]
    assert student["assigned_resources"]["student_gpu"] == 1 and student["assigned_resources"]["GPU"] == 1
    assert teacher["device"] == student["device"] == "cpu"  # a GPU by config, none in torch: the CPU fallback
    (group,) = seen["spread_pg"]
    assert group["strategy"] == "STRICT_SPREAD"
    assert group["bundles"] == {"0": {"CPU": 1.0, "GPU": 1.0, "teacher_gpu": 1.0},
                                "1": {"CPU": 1.0, "GPU": 1.0, "student_gpu": 1.0}}
    assert group["bundles_to_node_id"] == {"0": seen["teacher_node"], "1": seen["student_node"]}
    assert seen["free_after_stop"]["teacher_gpu"] == 1 and seen["free_after_stop"]["GPU"] == 2


def test_fractional_gpus_colocate_on_one_node(seen):
    teacher, student = seen["colocated"]
    assert teacher["node"] == student["node"] == seen["teacher_node"]
    assert teacher["assigned_resources"]["GPU"] == student["assigned_resources"]["GPU"] == 0.5


@pytest.mark.parametrize("case, message", [
    ("too_many_gpus", "teacher asks for 4.0 GPU but the Ray cluster has 2.0"),
    ("gpus_not_on_one_node", "GPU: 2} on one node, but no node has that much GPU"),
    ("missing_custom", "teacher asks for 1.0 a100 but the Ray cluster has 0"),
    ("strict_pack_apart", "placement_strategy=STRICT_PACK puts teacher and student on one node, but no node has "
                          "{CPU: 2, GPU: 2, student_gpu: 1, teacher_gpu: 1}"),
])
def test_asking_for_what_the_cluster_lacks_fails_fast(seen, case, message):
    assert message in seen[case]["error"]
    assert seen[case]["seconds"] < 5  # fail fast: no placement wait (the timeout is 60 s)


def test_a_group_that_cannot_be_placed_times_out_and_is_removed(seen):
    error = seen["busy"]["error"]
    assert "teacher and student could not be placed within 3 s (placement_strategy=PACK)" in error
    assert "asked for teacher {CPU: 1, GPU: 1, teacher_gpu: 1}, student {CPU: 1, GPU: 1, student_gpu: 1}" in error
    assert "teacher_gpu: 0" in error  # what is free now names the resource that is taken
    assert seen["pending_groups_after_timeout"] == 0
    assert seen["free_after_timeout"]["GPU"] == 2 and seen["free_after_timeout"]["student_gpu"] == 1


if __name__ == "__main__":
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    sys.path.insert(0, str(ROOT))
    Path(sys.argv[1]).write_text(json.dumps(scenario()))
