"""A run that dies mid-way keeps every sequence it finished (a real actor is killed under it)."""
import json
import threading
import time

import pytest
import ray

from actors.pair import start_pair, stop_pair
from cluster.generate import GenerationFailed, generate
from studyhall.config import load_config


def test_failure_mid_run_keeps_finished_sequences(ray_local, tmp_path):
    cfg = load_config("tiny", ["max_new_tokens=24", "batch_size=2", "pipeline_groups=1"])
    teacher, student = start_pair(cfg)
    out = tmp_path / "partial.jsonl"

    def kill_teacher_after_two():
        deadline = time.time() + 120
        while time.time() < deadline:
            if out.exists() and len(out.read_text().splitlines()) >= 2:
                ray.kill(teacher)
                return
            time.sleep(0.05)

    killer = threading.Thread(target=kill_teacher_after_two)
    killer.start()
    with pytest.raises(GenerationFailed, match="finished sequences are kept"):
        generate(cfg, None, out, limit=40, progress=False, actors=(teacher, student))
    killer.join()
    kept = [json.loads(line) for line in out.read_text().splitlines()]
    assert 2 <= len(kept) < 40 and all(k["token_ids"] for k in kept)
    stop_pair(teacher, student)
