"""Continuous batching: requests join the running decode batch between steps and leave when done,
without changing what any other request computes."""
import asyncio

import pytest
import torch

from actors.models import load_model
from serve.decode_loop import DecodeLoop, LoopStopped
from serve.decoding import RowOutput, RunningBatch, Sampling
from studyhall.config import ModelConfig

TEXTS = ["Hello there, how are you doing today?", "Hi", "A much longer prompt about cats, dogs and birds.",
         "Write a short poem about the sea and its moods."]


@pytest.fixture(scope="module")
def teacher():
    # float64: the batched cache computes what each row would alone to ~1e-15, so greedy choices match exactly
    return load_model(ModelConfig(path="tiny:teacher", dtype="float64"), torch.device("cpu"))


@pytest.fixture(scope="module")
def prompts(tiny_tokenizer):
    return [tiny_tokenizer(t)["input_ids"] for t in TEXTS]


def _alone(model, prompt, n, sampling=Sampling(temperature=0.0)) -> list[int]:
    batch = RunningBatch(model, torch.device("cpu"), torch.Generator().manual_seed(99))
    batch.join([("only", prompt, sampling)])
    return [batch.step()["only"] for _ in range(n)]


def test_rows_joining_and_leaving_at_different_steps_match_greedy_alone(teacher, prompts):
    lengths = [5, 14, 9, 12]
    joins_at = {0: [0, 1], 3: [2], 7: [3]}  # step -> rows that join before it
    batch = RunningBatch(teacher, torch.device("cpu"), None)
    got = {row: [] for row in range(len(prompts))}
    widths = []
    for step in range(30):
        newcomers = joins_at.get(step, [])
        if newcomers:
            batch.join([(row, prompts[row], Sampling(temperature=0.0)) for row in newcomers])
        for row, token in batch.step().items():
            got[row].append(token)
            if len(got[row]) == lengths[row]:
                batch.leave(row)  # row 0 leaves early, in the middle of the others
        widths.append(len(batch))
        if not len(batch) and step > max(joins_at):
            break
    for row, prompt in enumerate(prompts):
        assert got[row] == _alone(teacher, prompt, lengths[row]), f"row {row} changed by its batch mates"
    assert max(widths) == 3 and batch.forwards == 7 + 12  # shared forwards: the last row joins at step 7 for 12 tokens
    assert batch.step() == {} and batch.batch.valid.shape[1] == 0  # everyone left: no leftover padding


def test_seeded_sampling_does_not_depend_on_batch_mates(teacher, prompts):
    seeded = Sampling(temperature=1.0, top_p=0.9, seed=7)
    alone = _alone(teacher, prompts[0], 10, seeded)
    batch = RunningBatch(teacher, torch.device("cpu"), torch.Generator().manual_seed(0))
    batch.join([("mate", prompts[1], Sampling(temperature=1.0, top_p=0.9)), ("seeded", prompts[0], seeded)])
    together = []
    for step in range(10):
        if step == 4:
            batch.join([("late", prompts[2], Sampling(temperature=0.7))])
        together.append(batch.step()["seeded"])
    assert together == alone


def test_leaving_rows_free_their_cache_columns(teacher, prompts):
    """A short row that joins beside a long one keeps the cache narrow once the long one leaves."""
    batch = RunningBatch(teacher, torch.device("cpu"), None)
    batch.join([("long", prompts[2] * 4, Sampling(temperature=0.0))])
    batch.step()
    batch.join([("short", prompts[1], Sampling(temperature=0.0))])
    batch.step()
    batch.leave("long")
    batch.step()
    assert batch.batch.valid.shape[1] == int(batch.batch.length.max()) == len(prompts[1]) + 1


def test_decode_loop_admits_within_batch_and_prefill_limits(teacher, tiny_tokenizer, prompts):
    """Through the async loop: at most max_batch_size rows, the prefill budget spreads a burst over
    steps, every request gets its greedy-alone answer, and a finished request's chunk says how many
    rows shared its forwards."""
    async def main():
        loop = DecodeLoop(teacher, torch.device("cpu"), None, max_batch_size=3, prefill_budget=12)

        async def ask(i):
            output = RowOutput(tiny_tokenizer, set(), 6, [], ignore_eos=True, stream=False)
            chunks = [c async for c in loop.generate(prompts[i % len(prompts)], Sampling(temperature=0.0), output)]
            return output.text.ids, chunks

        answers = await asyncio.gather(*(ask(i) for i in range(6)))
        return loop, answers

    loop, answers = asyncio.run(main())
    for i, (ids, chunks) in enumerate(answers):
        assert ids == _alone(teacher, prompts[i % len(prompts)], 6)
        assert len(chunks) == 1 and chunks[0]["finish_reason"] == "length" and chunks[0]["tokens"] == 6
        assert 1 <= chunks[0]["rows_per_forward"] <= 3
    stats = loop.stats()
    assert stats["running"] == stats["waiting"] == 0
    assert stats["mean_rows_per_forward"] > 1.5  # six requests at once shared forwards
    assert stats["rows_forwarded"] == 6 * 6
    # the budget (12 tokens) keeps more than one long prompt out of a step: more prefills than 6/3
    assert stats["prefills"] > 2


def test_an_abandoned_request_leaves_the_batch(teacher, tiny_tokenizer, prompts):
    async def main():
        loop = DecodeLoop(teacher, torch.device("cpu"), None, max_batch_size=4, prefill_budget=512)
        output = RowOutput(tiny_tokenizer, set(), 500, [], ignore_eos=True, stream=True)
        chunks = loop.generate(prompts[0], Sampling(temperature=0.0), output)
        await anext(chunks)
        await chunks.aclose()  # the client went away
        short = RowOutput(tiny_tokenizer, set(), 3, [], ignore_eos=True)
        [c async for c in loop.generate(prompts[1], Sampling(temperature=0.0), short)]
        return loop

    loop = asyncio.run(main())
    # the abandoned 500-token request stopped decoding: a few forwards, not 500
    assert loop.stats()["running"] == 0 and loop.batch.forwards < 20


def test_a_failed_step_fails_every_request_and_the_health_probe(teacher, tiny_tokenizer, prompts):
    class Broken(torch.nn.Module):  # a model whose device went away
        config = teacher.config

        def forward(self, **kwargs):
            raise RuntimeError("device lost")

    async def main():
        loop = DecodeLoop(Broken(), torch.device("cpu"), None, max_batch_size=4, prefill_budget=512)

        async def ask(i):
            output = RowOutput(tiny_tokenizer, set(), 4, [], ignore_eos=True)
            return [c async for c in loop.generate(prompts[i], Sampling(temperature=0.0), output)]

        failed = await asyncio.gather(ask(0), ask(2), return_exceptions=True)
        with pytest.raises(LoopStopped, match="device lost"):
            await loop.probe()  # check_health: Serve replaces the replica
        return failed

    failed = asyncio.run(main())
    assert all(isinstance(f, LoopStopped) and "device lost" in str(f) for f in failed)
