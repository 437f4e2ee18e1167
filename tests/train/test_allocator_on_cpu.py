"""train/allocator.py: the tunables reach the workers' environment, and on this machine's glibc they stop a
thread's large allocations from being faulted back in every time."""
import json
import os
import subprocess
import sys

from train.allocator import KEEP_FREED, worker_env

# A training step's shape in miniature, in a thread as Ray Train runs it: a 75 MB buffer (an LM head's fp32
# logits) allocated, written and freed over and over; prints the page faults of the last four times, once
# the heap has grown to the step's peak (in training: after the first micro-batches).
REUSE = """
import json, resource, threading, torch
def step():
    torch.ones(384, 49152).sum()
def run():
    for _ in range(8):
        step()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(4):
        step()
    print(json.dumps(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before))
thread = threading.Thread(target=run); thread.start(); thread.join()
"""


def _faults(env_extra: dict) -> int:
    env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"} | env_extra
    done = subprocess.run([sys.executable, "-c", REUSE], env=env, capture_output=True, text=True, check=True)
    return json.loads(done.stdout)


def test_worker_env_puts_the_tunables_before_the_users_own():
    assert worker_env(True, environ={}) == {"GLIBC_TUNABLES": KEEP_FREED}
    assert worker_env(True, environ={"GLIBC_TUNABLES": "glibc.malloc.arena_max=4"}) == {
        "GLIBC_TUNABLES": f"{KEEP_FREED}:glibc.malloc.arena_max=4"}  # applied in order: the user's wins
    assert worker_env(False, environ={"GLIBC_TUNABLES": "x"}) == {}


def test_the_tunables_keep_a_threads_freed_buffer_for_reuse():
    buffer_pages = 384 * 49152 * 4 // 4096  # 18432 pages of 4 KB
    default, kept = _faults({}), _faults(worker_env(True, environ={}))
    assert default >= 4 * buffer_pages * 0.9  # glibc's defaults: the buffer's pages faulted in at every use
    assert kept < buffer_pages / 4  # kept: reused from the heap, not faulted again
