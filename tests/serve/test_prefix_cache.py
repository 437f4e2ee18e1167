"""The prefix cache: a prompt starts from the keys and values of the longest prefix it shares with a
cached one and prefills only the rest, without changing any token it generates; memory stays bounded."""
import asyncio

import pytest
import torch

from actors.models import load_model
from actors.prefix_cache import PrefixCache
from serve.decode_loop import DecodeLoop
from serve.decoding import RowOutput, RunningBatch, Sampling
from studyhall.config import ModelConfig

CPU = torch.device("cpu")
SYSTEM = "You are a helpful assistant. The user asks:"


@pytest.fixture(scope="module")
def teacher():
    # float64: a row computes what it would alone to ~1e-15, so greedy choices match exactly
    return load_model(ModelConfig(path="tiny:teacher", dtype="float64"), CPU)


@pytest.fixture(scope="module")
def ids(tiny_tokenizer):
    return lambda text: tiny_tokenizer(text)["input_ids"]


def _alone(model, prompt, n, sampling) -> list[int]:
    """The row's tokens with no cache of any kind: its whole prompt prefilled in its own forward."""
    batch = RunningBatch(model, CPU, torch.Generator().manual_seed(99))
    batch.join([("only", prompt, sampling)])
    return [batch.step()["only"] for _ in range(n)]


def _requests(ids):
    system = ids(SYSTEM)
    first = system + ids(" Name a color of the sea.")
    return system, {  # key -> (prompt, joins before step)
        "a": (first, 0),
        "unrelated": (ids("No prefix here at all, just words."), 0),
        "extends a": (first + ids(" And of the sky at night?"), 3),  # all of a's prefilled tokens, then more
        "same system": (system + ids(" A question about cats?"), 3),  # the pinned system prompt only
        "a again": (list(first), 6),  # a's prompt whole: only its pending token is left to run
        "short": (system[:2] + ids(" x"), 6),  # shares fewer tokens than are worth reusing
    }


@pytest.mark.parametrize("sampling", [Sampling(temperature=0.0), Sampling(temperature=1.0, top_p=0.9, seed=5)],
                         ids=["greedy", "seeded"])
def test_answers_are_the_same_with_and_without_the_cache(teacher, ids, sampling):
    """Rows that share a cached prefix, share none, or repeat a prompt, joining a running batch at
    different steps, generate exactly the tokens they generate alone with no cache; the cache's
    counters say what was reused, and the prefill ran that many fewer tokens."""
    system, requests = _requests(ids)
    cache = PrefixCache(capacity_tokens=4096)
    cache.pin(teacher, CPU, system)
    batch = RunningBatch(teacher, CPU, torch.Generator().manual_seed(99), cache)
    got = {key: [] for key in requests}
    for step in range(12):
        joining = [(key, prompt, sampling) for key, (prompt, at) in requests.items() if at == step]
        if joining:
            batch.join(joining)
        for key, token in batch.step().items():
            got[key].append(token)
    for key, (prompt, _) in requests.items():
        n = len(got[key])
        assert n >= 6 and got[key] == _alone(teacher, prompt, n, sampling), f"{key}: changed by the prefix cache"
    a = len(requests["a"][0]) - 1  # a's prefilled tokens
    reused = {"a": len(system), "extends a": a, "same system": len(system), "a again": a}
    stats = cache.stats()
    assert stats["lookups"] == len(requests) and stats["hits"] == len(reused)
    assert stats["tokens_reused"] == sum(reused.values())
    assert batch.prefill_tokens == sum(len(p) - 1 for p, _ in requests.values()) - sum(reused.values())


def test_memory_stays_within_capacity_least_recently_used_first(teacher, ids):
    """Distinct prompts fill the cache; past its capacity (room for three) the least recently used
    entries go, the pinned system prompt never does, and an entry just reused outlives older ones."""
    system = ids(SYSTEM)
    prompts = [system + ids(f" {word} is what I ask about.") for word in ["Sea", "Sky", "Moon", "Sun", "Rain", "Snow"]]
    assert len({p[len(system)] for p in prompts}) == len(prompts)  # distinct from their first token past the system prompt
    capacity = len(system) + 3 * (max(map(len, prompts)) - 1)
    cache = PrefixCache(capacity_tokens=capacity)
    cache.pin(teacher, CPU, system)
    batch = RunningBatch(teacher, CPU, None, cache)
    for i, prompt in enumerate(prompts):
        batch.join([(i, prompt, Sampling(temperature=0.0))])
        batch.step()
        batch.leave(i)
        if i == 3:  # prompt 2 again: it becomes the most recently used
            batch.join([("again", prompts[2], Sampling(temperature=0.0))])
            batch.step()
            batch.leave("again")
        assert cache.tokens_held <= capacity
    stats = cache.stats()
    assert stats["evictions"] == 3 and stats["pinned_tokens"] == len(system) and stats["entries"] == 4
    reused = [cache.match(p)[1] for p in prompts]
    assert reused == [len(system), len(system), len(prompts[2]) - 1, len(system), len(prompts[4]) - 1, len(prompts[5]) - 1]


def test_a_longer_prompt_replaces_the_entry_it_extends(teacher, ids):
    cache = PrefixCache(capacity_tokens=4096)
    batch = RunningBatch(teacher, CPU, None, cache)
    short = ids("Tell me about the sea and")
    batch.join([(0, short + ids(" its"), Sampling(temperature=0.0)), (1, short + ids(" its moods, please"), Sampling(temperature=0.0))])
    assert len(cache.entries) == 1 and cache.tokens_held == len(short + ids(" its moods, please")) - 1


def test_prefill_ahead_leaves_only_the_guidance_to_prefill(teacher, ids, tiny_tokenizer):
    """The student's path: the prompt is prefilled ahead (no row joins), then the request for prompt +
    guidance prefills only the guidance, and answers as it would with no cache at all."""
    system = ids(SYSTEM)
    prompt, guidance = system + ids(" Why is the sea blue?"), ids(" Because the water")

    async def main():
        cache = PrefixCache(capacity_tokens=4096)
        cache.pin(teacher, CPU, system)
        loop = DecodeLoop(teacher, CPU, None, max_batch_size=4, prefill_budget=512, prefixes=cache)
        await loop.prefill_ahead(prompt)
        after_ahead = loop.stats()
        output = RowOutput(tiny_tokenizer, set(), 8, [], ignore_eos=True)
        [c async for c in loop.generate(prompt + guidance, Sampling(temperature=0.0), output)]
        return after_ahead, loop.stats(), output.text.ids

    after_ahead, after, answer = asyncio.run(main())
    assert after_ahead["running"] == 0 and after_ahead["forwards"] == 0  # nothing decoded, no row joined
    assert after_ahead["prefill_tokens"] == after_ahead["prefill_ahead_tokens"] == len(prompt) - len(system)
    assert after["prefill_tokens"] - after_ahead["prefill_tokens"] == len(guidance) - 1
    assert after["prefill_ahead_tokens"] == after_ahead["prefill_ahead_tokens"]
    assert after["prefix_cache"]["tokens_reused"] == len(system) + len(prompt)
    assert answer == _alone(teacher, prompt + guidance, 8, Sampling(temperature=0.0))


def test_no_cache_means_full_prefills(teacher, ids):
    system = ids(SYSTEM)
    batch = RunningBatch(teacher, CPU, None, None)
    prompts = [system + ids(" One?"), system + ids(" Two?")]
    batch.join([(i, p, Sampling(temperature=0.0)) for i, p in enumerate(prompts)])
    batch.prefill_ahead([prompts[0]])  # nothing to prefill into
    assert batch.prefill_tokens == sum(len(p) - 1 for p in prompts)
