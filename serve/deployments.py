"""The two model deployments of GKT serving.

`TeacherGuide` writes the first k tokens of each answer (the guidance). `@serve.batch` gathers
concurrent requests, and one padded forward loop generates for all of them.
`StudentComplete` continues from prompt + guidance, also batched, and streams its text: each
request is an async generator that the ingress reads through `handle.options(stream=True)`.

Guidance travels as text. Each model renders the prompt with its own tokenizer and chat template,
so the two models may use different tokenizers.

A job is a plain dict that the ingress builds (serve/ingress.py: `_plan`):
  prompt | messages, max_new, temperature, top_p, stop, ignore_eos, and for the student `guidance`.
"""
import asyncio
import time

import torch
from ray import serve
from ray.util import metrics

from actors.models import context_length, eos_ids, load_model, load_tokenizer, pick_device
from serve.decoding import BatchDecoder, TextStream
from studyhall.config import ServedModel
from studyhall.prompts import render

BATCH_SIZE_BUCKETS = [1, 2, 4, 8, 16, 32, 64]


class _ModelReplica:
    """A model and its tokenizer in one Serve replica, with the batch settings from config."""

    role = "model"

    def __init__(self, spec: ServedModel, sampling_seed: int):
        torch.set_num_threads(max(1, round(spec.num_cpus)))
        self.spec = spec
        self.device = pick_device(spec)
        self.tokenizer = load_tokenizer(spec.path, spec.trust_remote_code)
        self.model = load_model(spec, self.device)
        self.eos = eos_ids(self.tokenizer, spec.path)
        self.context = context_length(self.model.config)
        self.generator = torch.Generator(self.device).manual_seed(sampling_seed)
        self.batch_size = metrics.Histogram(
            f"studyhall_gkt_{self.role}_batch_size", description=f"requests per {self.role} batch",
            boundaries=BATCH_SIZE_BUCKETS)
        self.tokens = metrics.Counter(f"studyhall_gkt_{self.role}_tokens", description=f"tokens the {self.role} generated")
        self._warm_up()

    def _warm_up(self) -> None:
        """First forwards pay one-off costs; pay them before traffic arrives."""
        decoder = BatchDecoder(self.model, self.device, [self.prompt_ids({"prompt": "Hello"})], [1.0], [1.0], self.generator)
        for _ in range(2):
            decoder.step()

    def configure_batching(self, method) -> None:
        method.set_max_batch_size(self.spec.max_batch_size)
        method.set_batch_wait_timeout_s(self.spec.batch_wait_timeout_s)

    def prompt_text(self, job: dict) -> str:
        if job.get("messages") is not None:
            return render(self.tokenizer, job["messages"])
        return job["prompt"]

    def prompt_ids(self, job: dict, suffix: str = "") -> list[int]:
        ids = self.tokenizer(self.prompt_text(job) + suffix, add_special_tokens=job.get("messages") is None)["input_ids"]
        return ids or [self.tokenizer.bos_token_id if self.tokenizer.bos_token_id is not None else self.tokenizer.eos_token_id]

    def decoder(self, jobs: list[dict], prompts: list[list[int]]) -> BatchDecoder:
        return BatchDecoder(self.model, self.device, prompts, [j["temperature"] for j in jobs],
                            [j["top_p"] for j in jobs], self.generator)


@serve.deployment
class TeacherGuide(_ModelReplica):
    role = "teacher"

    def __init__(self, spec: ServedModel, sampling_seed: int = 0):
        super().__init__(spec, sampling_seed)
        self.configure_batching(self._guide_batch)

    async def guide(self, job: dict) -> dict:
        """The first job["max_new"] tokens of the answer as text: {text, tokens, finish_reason, batch_size}.

        finish_reason is "stop" (EOS or a stop string: the answer ends here) or "length"."""
        return await self._guide_batch(job)

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.02)  # both replaced from config in __init__
    async def _guide_batch(self, jobs: list[dict]) -> list[dict]:
        self.batch_size.observe(len(jobs))
        # In a thread, so requests arriving meanwhile queue up for the next batch.
        return await asyncio.to_thread(self._generate, jobs)

    def _generate(self, jobs: list[dict]) -> list[dict]:
        started = time.perf_counter()
        decoder = self.decoder(jobs, [self.prompt_ids(j) for j in jobs])
        streams = [TextStream(self.tokenizer, j["stop"]) for j in jobs]
        results = [{"text": "", "tokens": 0, "finish_reason": "length", "batch_size": len(jobs)} for _ in jobs]
        while decoder.active:
            for row, token in decoder.step().items():
                out, stream = results[row], streams[row]
                out["tokens"] += 1
                if token in self.eos and not jobs[row].get("ignore_eos"):
                    out["finish_reason"] = "stop"
                else:
                    out["text"] += stream.push(token)
                    if stream.stopped:
                        out["finish_reason"] = "stop"
                if out["finish_reason"] == "stop" or out["tokens"] >= jobs[row]["max_new"]:
                    out["text"] += stream.flush()
                    decoder.finish(row)
        self.tokens.inc(sum(r["tokens"] for r in results))
        for r in results:
            r["batch_seconds"] = round(time.perf_counter() - started, 4)
        return results


@serve.deployment
class StudentComplete(_ModelReplica):
    role = "student"

    def __init__(self, spec: ServedModel, sampling_seed: int = 0):
        super().__init__(spec, sampling_seed + 1)
        self.configure_batching(self._complete_batch)

    async def complete(self, job: dict):
        """Stream the continuation of prompt + job["guidance"]: {"text": delta} chunks, the last one
        with "finish_reason" and "tokens"."""
        async for chunk in self._complete_batch(job):
            if chunk is not None:  # None: nothing to send yet (a non-streaming request gets its text at the end)
                yield chunk

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.02)  # both replaced from config in __init__
    async def _complete_batch(self, jobs: list[dict]):
        self.batch_size.observe(len(jobs))
        prompts = [self.prompt_ids(j, j["guidance"]) for j in jobs]
        # The guidance, retokenized by a different tokenizer, may take more room than the ingress counted.
        limits = [max(1, min(j["max_new"], self.context - len(p))) for j, p in zip(jobs, prompts)]
        decoder = self.decoder(jobs, prompts)
        streams = [TextStream(self.tokenizer, j["stop"], prefix=j["guidance"]) for j in jobs]
        counts = [0] * len(jobs)
        held = [""] * len(jobs)  # text not sent yet: non-streaming requests take it in one piece at the end
        while decoder.active:
            stepped = await asyncio.to_thread(decoder.step)  # the event loop stays free for new requests
            out: list = [StopIteration] * len(jobs)  # rows already finished get nothing more
            for row, token in stepped.items():
                counts[row] += 1
                chunk = {"text": ""}
                if token in self.eos and not jobs[row].get("ignore_eos"):
                    chunk["finish_reason"] = "stop"
                else:
                    chunk["text"] = streams[row].push(token)
                    if streams[row].stopped:
                        chunk["finish_reason"] = "stop"
                if "finish_reason" not in chunk and counts[row] >= limits[row]:
                    chunk["finish_reason"] = "length"
                if "finish_reason" in chunk:
                    chunk["text"] += streams[row].flush()
                    chunk["tokens"] = counts[row]
                    chunk["batch_size"] = len(jobs)
                    decoder.finish(row)
                if not jobs[row].get("stream") and "finish_reason" not in chunk:
                    held[row] += chunk["text"]
                    chunk = None
                elif held[row]:
                    chunk["text"], held[row] = held[row] + chunk["text"], ""
                out[row] = chunk
            self.tokens.inc(len(stepped))
            yield out
