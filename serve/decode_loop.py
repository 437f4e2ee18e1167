"""One replica's decode loop: continuous batching for a GKT deployment.

Requests wait in a queue; before each step the loop admits as many as fit (`max_batch_size` rows in
all, and at most `prefill_budget` prompt tokens per step, so a burst of long prompts does not stall
the rows already decoding; the first newcomer is always let in). One step is the newcomers' prefill
plus one forward over every row, in a worker thread so that the event loop keeps taking requests.
Tokens go to each request's queue as chunks (serve/decoding.py: RowOutput); a finished or abandoned
request leaves the batch before the next step. A prefill-ahead request only prefills its prompt into
the prefix cache, in the next step, within the same prefill budget, and never joins the batch.

If a step raises, every request in the loop gets the error and the loop stops: the replica's
`check_health` then reports it, and Serve replaces the replica.
"""
import asyncio
import itertools
from collections import deque
from dataclasses import dataclass, field

import torch

from actors.prefix_cache import PrefixCache
from serve.decoding import RowOutput, RunningBatch, Sampling


class LoopStopped(RuntimeError):
    """The replica's decode loop stopped on an error; the replica is about to be replaced."""


@dataclass
class _Request:
    key: int
    prompt: list[int]
    sampling: Sampling
    output: RowOutput
    chunks: asyncio.Queue = field(default_factory=asyncio.Queue)
    abandoned: bool = False
    ahead: bool = False  # prefill into the prefix cache only


class DecodeLoop:
    def __init__(self, model, device, generator: torch.Generator | None, max_batch_size: int, prefill_budget: int,
                 prefixes: PrefixCache | None = None):
        self.model, self.device = model, device
        self.batch = RunningBatch(model, device, generator, prefixes)
        self.max_batch_size, self.prefill_budget = max_batch_size, prefill_budget
        self.waiting: deque[_Request] = deque()
        self.running: dict[int, _Request] = {}
        self.prefilling: list[_Request] = []  # prefill-ahead requests in the step under way
        self._keys = itertools.count()
        self._task: asyncio.Task | None = None
        self._wake: asyncio.Event | None = None
        self._model_lock: asyncio.Lock | None = None  # one forward at a time: the loop's steps and health probes
        self.failure: BaseException | None = None
        self.waiting_at_step = 0  # summed over steps: requests queued behind a full batch or the prefill budget

    async def generate(self, prompt: list[int], sampling: Sampling, output: RowOutput):
        """Yield this request's chunks as the loop makes them; the last one has "finish_reason"."""
        self._check_running()
        request = _Request(next(self._keys), prompt, sampling, output)
        self._start()
        self.waiting.append(request)
        self._wake.set()
        try:
            while True:
                chunk = await request.chunks.get()
                if isinstance(chunk, BaseException):
                    raise chunk
                yield chunk
                if "finish_reason" in chunk:
                    return
        finally:
            request.abandoned = True  # a client that went away: its row leaves before the next step

    async def prefill_ahead(self, prompt: list[int]) -> None:
        """Prefill `prompt` into the prefix cache at the next step (returns when done); a request that
        starts with it then prefills only the rest. Nothing happens without a prefix cache."""
        self._check_running()
        if self.batch.prefixes is None:
            return
        request = _Request(next(self._keys), prompt, Sampling(), None, ahead=True)
        self._start()
        self.waiting.append(request)
        self._wake.set()
        try:
            done = await request.chunks.get()
            if isinstance(done, BaseException):
                raise done
        finally:
            request.abandoned = True

    async def reset_prefix_cache(self) -> None:
        """Drop the cached prefixes but the pinned ones, between two steps (a step may be using them)."""
        if self.batch.prefixes is None:
            return
        self._start()
        async with self._model_lock:
            self.batch.prefixes.clear()

    async def probe(self) -> None:
        """A one-token forward of the model, between two steps: proof that it still answers."""
        self._check_running()
        self._start()
        token = torch.zeros(1, 1, dtype=torch.long, device=self.device)
        async with self._model_lock:
            logits = await asyncio.to_thread(self._forward_one, token)
        if not torch.isfinite(logits).all():
            raise RuntimeError("the model's one-token forward gave non-finite logits")

    @torch.no_grad()
    def _forward_one(self, token: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=token, use_cache=False, logits_to_keep=1).logits

    def stats(self) -> dict:
        b = self.batch
        return {"forwards": b.forwards, "rows_forwarded": b.rows_forwarded, "prefills": b.prefills,
                "prefill_tokens": b.prefill_tokens, "prefill_ahead_tokens": b.prefill_ahead_tokens,
                "waiting_at_step": self.waiting_at_step,
                "prefix_cache": b.prefixes.stats() if b.prefixes is not None else None,
                "mean_rows_per_forward": round(b.rows_forwarded / b.forwards, 3) if b.forwards else 0.0,
                "running": len(self.running), "waiting": len(self.waiting), "max_batch_size": self.max_batch_size}

    def _check_running(self) -> None:
        if self.failure is not None:
            raise LoopStopped(f"the decode loop stopped: {self.failure!r}")

    def _start(self) -> None:
        if self._task is None:  # created on first use, on the replica's event loop
            self._wake, self._model_lock = asyncio.Event(), asyncio.Lock()
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        try:
            await self._serve_forever()
        except Exception as err:  # noqa: BLE001  a step or a row's text failed: every request learns it, check_health reports it
            self._fail(err)

    async def _serve_forever(self) -> None:
        while True:
            self._drop_abandoned()
            if not self.running and not self.waiting:
                self._wake.clear()
                await self._wake.wait()
                continue
            newcomers = self._admit()
            self.waiting_at_step += len(self.waiting)
            self.prefilling = [r for r in newcomers if r.ahead]
            async with self._model_lock:
                tokens = await asyncio.to_thread(self._step, newcomers)
            for request in self.prefilling:
                request.chunks.put_nowait({"prefilled": len(request.prompt)})
            self.prefilling = []
            for key, token in tokens.items():
                request = self.running[key]
                chunk = request.output.push(token)
                if request.output.finished:
                    chunk["rows_per_forward"] = self.batch.rows_per_forward(key)
                    self.batch.leave(key)
                    del self.running[key]
                if chunk is not None:
                    request.chunks.put_nowait(chunk)

    def _admit(self) -> list[_Request]:
        newcomers, tokens = [], 0
        rows = len(self.batch)
        while self.waiting and (self.waiting[0].ahead or rows < self.max_batch_size):
            request = self.waiting[0]
            cost = self.batch.prefill_cost(request.prompt + [0] if request.ahead else request.prompt)
            if newcomers and tokens + cost > self.prefill_budget:
                break
            self.waiting.popleft()
            newcomers.append(request)
            tokens += cost
            if not request.ahead:
                rows += 1
                self.running[request.key] = request
        return newcomers

    def _step(self, newcomers: list[_Request]) -> dict[int, int]:
        self.batch.prefill_ahead([r.prompt for r in newcomers if r.ahead])
        joining = [(r.key, r.prompt, r.sampling) for r in newcomers if not r.ahead]
        if joining:
            self.batch.join(joining)
        return self.batch.step()

    def _drop_abandoned(self) -> None:
        for key in [k for k, r in self.running.items() if r.abandoned]:
            self.batch.leave(key)
            del self.running[key]
        if any(r.abandoned for r in self.waiting):
            self.waiting = deque(r for r in self.waiting if not r.abandoned)

    def _fail(self, err: BaseException) -> None:
        self.failure = err
        for request in [*self.running.values(), *self.waiting, *self.prefilling]:
            request.chunks.put_nowait(LoopStopped(f"the decode loop stopped: {err!r}"))
        self.running.clear()
        self.waiting.clear()
