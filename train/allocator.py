"""The training workers' malloc keeps the memory a micro-batch frees for the next one.

glibc gives allocations above its mmap threshold (dynamic, at most 32 MB) their own mapping and unmaps it
on free, and trims the heap's free top back to the kernel. A training step frees and reallocates the
same large buffers every micro-batch: the answer positions' logits over a 49k vocabulary, their fp32
log-softmax and the gradients of both, autocast's bf16 copy of the LM head. Each comes back as freshly
zeroed pages, one page fault per 4 KB: in the smol demo's SWITCH steps, about 500 thousand per step's
forward and backward, and 32 thousand with the tunables (docs/benchmarks.md: the trainer's memory).

The tunables raise the mmap and trim thresholds so freed memory stays in the heap for reuse, and keep
one arena: Ray Train runs the training function in a thread of its own, and a thread's arena (64 MB
heaps) maps any larger chunk however high the threshold. glibc reads them when the process starts, so
they go into the workers' environment (`RunConfig(worker_runtime_env=...)`); other C libraries ignore
them. The cost: the workers' resident memory stays at its peak instead of shrinking between steps.
"""
import os

KEEP_FREED = "glibc.malloc.mmap_threshold=4294967296:glibc.malloc.trim_threshold=17179869184:glibc.malloc.arena_max=1"


def worker_env(keep_freed: bool, environ=os.environ) -> dict[str, str]:
    """The training workers' extra environment: the tunables, before any the user set (glibc applies them in
    order, so the user's own settings win)."""
    if not keep_freed:
        return {}
    user = environ.get("GLIBC_TUNABLES")
    return {"GLIBC_TUNABLES": f"{KEEP_FREED}:{user}" if user else KEEP_FREED}
