"""Training batches made ahead of the trainer (train.max_staleness): one background thread makes them
in step order, so generation for step s+1 runs while the trainer works on step s.

Only the thread makes batches, one at a time, so the models are never shared between two of them.
"""
from concurrent.futures import Future, ThreadPoolExecutor


class BatchesAhead:
    def __init__(self, make, ahead: int, last_step: int):
        """`make(step)` builds one step's batch; up to `ahead` later steps (never past `last_step`)
        are started as soon as a step is handed over."""
        self.make, self.ahead, self.last_step = make, ahead, last_step
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="batches-ahead")
        self.futures: dict[int, Future] = {}

    def get(self, step: int):
        """Step `step`'s batch: the one made ahead, or made now. Its error, if making it failed."""
        future = self.futures.pop(step, None) or self.pool.submit(self.make, step)
        batch = future.result()
        for later in range(step + 1, min(step + self.ahead, self.last_step) + 1):
            if later not in self.futures:
                self.futures[later] = self.pool.submit(self.make, later)
        return batch

    def drop(self) -> None:
        """Forget the batches made ahead (a replaced worker group redoes steps, with other weights),
        once the one in progress is done with the models."""
        for future in self.futures.values():
            future.cancel()
        self.pool.submit(lambda: None).result()  # the thread has finished whatever it had started
        self.futures.clear()

    def close(self) -> None:
        """Stop without waiting: a batch still being made ends when its models are stopped."""
        self.futures.clear()
        self.pool.shutdown(wait=False, cancel_futures=True)
