"""Distillation through real faults: a training worker's process is SIGKILLed (Ray Train replaces the
group from the last checkpoint), and the rollout actor's process is killed (the run stops, naming the
checkpoint, and --resume finishes it)."""
import json
import math
import os
import signal
import threading
import time

import psutil
import pytest
import ray
from distill_helpers import _cfg

from train.distill import TrainingFailed, latest_checkpoint, run_distill
from train.train_loop import PROGRESS_FILE

pytestmark = [pytest.mark.usefixtures("ray_local"), pytest.mark.slow]


def _our_processes(title: str) -> list[psutil.Process]:
    """Processes of this test session's Ray (children of its raylet) whose title starts with `title`;
    other Ray instances on the machine are left alone."""
    session = ray._private.worker.global_worker.node.get_session_dir_path()
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmd = " ".join(proc.info["cmdline"] or [])
        if cmd.startswith(title):
            try:
                parent = " ".join(proc.parent().cmdline())
            except (psutil.Error, AttributeError):
                continue
            if f"--session_dir={session}" in parent:
                found.append(proc)
    return found


def _registered_checkpoint(storage) -> bool:
    """Whether Ray Train's controller has registered a checkpoint: only a registered one is what a
    replacement group restores. (A checkpoint on disk is registered a poll later; the controller's
    snapshot file, written on registration, is the signal.)"""
    for snapshot in storage.glob("**/checkpoint_manager_snapshot.json"):
        try:
            if json.loads(snapshot.read_text()).get("latest_checkpoint_result"):
                return True
        except (OSError, ValueError):  # caught mid-write; the next poll reads it whole
            pass
    return False


class KillAfterCheckpoint(threading.Thread):
    """SIGKILLs one of our processes titled `title` once Ray Train has registered a checkpoint."""

    def __init__(self, storage, title):
        super().__init__(daemon=True)
        self.storage, self.title, self.killed = storage, title, None

    def run(self):
        deadline = time.time() + 400
        while time.time() < deadline and self.killed is None:
            if _registered_checkpoint(self.storage):
                procs = _our_processes(self.title)
                if procs:
                    os.kill(procs[-1].pid, signal.SIGKILL)
                    self.killed = procs[-1].pid
            time.sleep(0.2)


def _distill_cfg(data, steps, checkpoint_every):
    return _cfg(data, "method=kd", "num_workers=2", f"steps={steps}", "global_batch=4", "micro_batch=2",
                f"checkpoint_every={checkpoint_every}", "lr_schedule=constant", "max_failures=1")


def test_a_killed_training_worker_is_replaced_and_the_run_finishes(dolly_file, tmp_path):  # noqa: F811
    killer = KillAfterCheckpoint(tmp_path / "ray_train", "ray::RayTrainWorker")
    killer.start()
    report = run_distill(_distill_cfg(dolly_file, steps=6, checkpoint_every=1), str(tmp_path), progress=False)
    killer.join()
    assert killer.killed is not None
    faults = report["faults"]
    assert faults["worker_group_failures"] == 1
    failure = faults["failures"][0]
    assert 1 <= failure["resumed_at_step"] < 6 and failure["steps_redone"] == failure["failed_during_step"] - failure["resumed_at_step"] >= 0
    assert faults["steps_redone"] == failure["steps_redone"]
    # the step count went on from the checkpoint: every step once, in order, each loss finite
    assert [p["step"] for p in report["loss_curve"]] == list(range(1, 7))
    assert all(math.isfinite(p["loss"]) for p in report["loss_curve"])
    assert json.loads((tmp_path / "report.json").read_text())["faults"] == faults
    assert (tmp_path / "student" / "model.safetensors").is_file()


def test_a_dead_rollout_stops_the_run_with_its_checkpoint_and_resume_finishes_it(dolly_file, tmp_path):  # noqa: F811
    killer = KillAfterCheckpoint(tmp_path / "ray_train", "ray::Rollout")
    killer.start()
    with pytest.raises(TrainingFailed) as failed:
        run_distill(_distill_cfg(dolly_file, steps=6, checkpoint_every=2), str(tmp_path), progress=False)
    killer.join()
    message = str(failed.value)
    assert killer.killed is not None and "\n" not in message
    assert "the rollout actor died" in message and f"--resume --out {tmp_path}" in message
    kept = latest_checkpoint(tmp_path / "ray_train")
    assert f"last good checkpoint: {kept}" in message
    step = json.loads((kept / PROGRESS_FILE).read_text())["step"]
    # The dead run's workers left on their own (no retries against a dead rollout): resuming gets
    # the whole cluster again and finishes the steps.
    report = run_distill(_distill_cfg(dolly_file, steps=6, checkpoint_every=2), str(tmp_path), resume=True, progress=False)
    assert [p["step"] for p in report["loss_curve"]] == list(range(step + 1, 7))
    assert report["faults"]["worker_group_failures"] == 0
