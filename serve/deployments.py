"""The two model deployments of GKT serving, each a continuous-batching decode loop (serve/decode_loop.py).

`TeacherGuide` writes the first k tokens of each answer (the guidance). `StudentComplete` continues
from prompt + guidance and streams its text: each request is an async generator that the ingress
reads through `handle.options(stream=True)`. A request joins its replica's running batch at the next
step and leaves it as soon as it is done.

Guidance travels as text. Each model renders the prompt with its own tokenizer and chat template,
so the two models may use different tokenizers.

A job is a plain dict that the ingress builds (serve/ingress.py: `_plan`):
  prompt | messages, max_new, temperature, top_p, seed, stop, ignore_eos, stream, and for the student `guidance`.
"""
import ray
import torch
from ray import serve
from ray.util import metrics

from actors.models import context_length, eos_ids, load_model, load_tokenizer, pick_device
from serve.decode_loop import DecodeLoop
from serve.decoding import RowOutput, RunningBatch, Sampling, prefix_cache
from studyhall.config import ServedModel
from studyhall.prompts import render
from studyhall.threads import threads_for

ROWS_BUCKETS = [1, 2, 4, 8, 16, 32, 64, 128]


class _ModelReplica:
    """A model, its tokenizer and its decode loop in one Serve replica, with the batch limits from config."""

    role: str  # "teacher" or "student": each deployment below sets it

    def __init__(self, spec: ServedModel, sampling_seed: int):
        torch.set_num_threads(threads_for(spec.num_cpus))
        self.spec = spec
        self.device = pick_device(spec)
        self.tokenizer = load_tokenizer(spec.path, spec.trust_remote_code)
        self.model = load_model(spec, self.device)
        self.eos = eos_ids(self.tokenizer, spec.path)
        self.context = context_length(self.model.config)
        generator = torch.Generator(self.device).manual_seed(sampling_seed)
        self.prefixes = prefix_cache(self.model, self.device, self.tokenizer, spec.prefix_cache_tokens)
        self.loop = DecodeLoop(self.model, self.device, generator, spec.max_batch_size, spec.prefill_budget, self.prefixes)
        self.rows = metrics.Histogram(f"studyhall_gkt_{self.role}_rows_per_forward",
                                      description=f"per answer: mean rows in the {self.role} forwards that wrote it", boundaries=ROWS_BUCKETS)
        self.tokens = metrics.Counter(f"studyhall_gkt_{self.role}_tokens", description=f"tokens the {self.role} generated")
        self.counters = {name: metrics.Counter(f"studyhall_gkt_{self.role}_{name}", description=f"{self.role}: {text}") for name, text in (
            ("prefill_tokens", "prompt tokens prefilled (run through the model)"),
            ("prefix_cache_lookups", "prefills that looked up the prefix cache"),
            ("prefix_cache_hits", "prefills that reused a cached prefix"),
            ("prefix_tokens_reused", "prompt tokens taken from the prefix cache instead of being prefilled"))}
        self._exported = dict.fromkeys(self.counters, 0)
        self._warm_up()

    def _warm_up(self) -> None:
        """First forwards pay one-off costs; pay them before traffic arrives."""
        batch = RunningBatch(self.model, self.device, None)  # apart from the loop's, whose counters stay at zero
        batch.join([("warm-up", self.prompt_ids({"prompt": "Hello"}), Sampling())])
        for _ in range(2):
            batch.step()

    async def check_health(self) -> None:
        """Serve calls this every health_check_period_s: the decode loop is alive and the model answers a
        one-token forward. Raising makes Serve replace the replica."""
        await self.loop.probe()

    def stats(self) -> dict:
        """Counters of this replica's decode loop (forwards, rows per forward, prefills and their tokens,
        the prefix cache's lookups, hits and tokens reused, queue), and which replica answered (its
        actor's name in the "serve" namespace)."""
        return {**self.loop.stats(), "actor_name": ray.get_runtime_context().get_actor_name()}

    async def reset_prefix_cache(self) -> None:
        """Drop every cached prefix but the pinned chat template (as vLLM's reset_prefix_cache): benches
        measure each run from the same cold cache."""
        await self.loop.reset_prefix_cache()

    def _export_counters(self) -> None:
        """The loop's cumulative prefill and prefix-cache counters, as Prometheus counters (their growth)."""
        stats = self.loop.stats()
        cache = stats["prefix_cache"] or {}
        now = {"prefill_tokens": stats["prefill_tokens"], "prefix_cache_lookups": cache.get("lookups", 0),
               "prefix_cache_hits": cache.get("hits", 0), "prefix_tokens_reused": cache.get("tokens_reused", 0)}
        for name, value in now.items():
            if value > self._exported[name]:
                self.counters[name].inc(value - self._exported[name])
                self._exported[name] = value

    def prompt_text(self, job: dict) -> str:
        if job.get("messages") is not None:
            return render(self.tokenizer, job["messages"])
        return job["prompt"]

    def prompt_ids(self, job: dict, suffix: str = "") -> list[int]:
        ids = self.tokenizer(self.prompt_text(job) + suffix, add_special_tokens=job.get("messages") is None)["input_ids"]
        return ids or [self.tokenizer.bos_token_id if self.tokenizer.bos_token_id is not None else self.tokenizer.eos_token_id]

    async def run(self, job: dict, prompt: list[int], max_new: int, prefix: str = ""):
        """The request's chunks from the decode loop, counted in this replica's metrics."""
        output = RowOutput(self.tokenizer, self.eos, max_new, job["stop"], job.get("ignore_eos", False),
                           job.get("stream", False), prefix)
        sampling = Sampling(job["temperature"], job["top_p"], job.get("seed"))
        async for chunk in self.loop.generate(prompt, sampling, output):
            if "finish_reason" in chunk:
                self.tokens.inc(chunk["tokens"])
                self.rows.observe(chunk["rows_per_forward"])
                self._export_counters()
            yield chunk


@serve.deployment
class TeacherGuide(_ModelReplica):
    role = "teacher"

    def __init__(self, spec: ServedModel, sampling_seed: int = 0):
        super().__init__(spec, sampling_seed)

    async def guide(self, job: dict) -> dict:
        """The first job["max_new"] tokens of the answer as text: {text, tokens, finish_reason, rows_per_forward}.

        finish_reason is "stop" (EOS or a stop string: the answer ends here) or "length"."""
        async for chunk in self.run({**job, "stream": False}, self.prompt_ids(job), job["max_new"]):
            pass
        return {"text": chunk["text"], "tokens": chunk["tokens"], "finish_reason": chunk["finish_reason"],
                "rows_per_forward": chunk["rows_per_forward"]}


@serve.deployment
class StudentComplete(_ModelReplica):
    role = "student"

    def __init__(self, spec: ServedModel, sampling_seed: int = 0):
        super().__init__(spec, sampling_seed + 1)

    async def prefill_ahead(self, job: dict) -> None:
        """Prefill the job's prompt (without guidance) into the prefix cache, while the teacher writes the
        guidance: the `complete` call that follows prefills only the guidance. It saves the work only
        when that call reaches this replica (always, with one replica)."""
        await self.loop.prefill_ahead(self.prompt_ids(job))
        self._export_counters()

    async def complete(self, job: dict):
        """Stream the continuation of prompt + job["guidance"]: {"text": delta} chunks, the last one
        with "finish_reason", "tokens" and "rows_per_forward"."""
        prompt = self.prompt_ids(job, job["guidance"])
        # The guidance, retokenized by a different tokenizer, may take more room than the ingress counted.
        limit = max(1, min(job["max_new"], self.context - len(prompt)))
        async for chunk in self.run(job, prompt, limit, prefix=job["guidance"]):
            yield chunk
