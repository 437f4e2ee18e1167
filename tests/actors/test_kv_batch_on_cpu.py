"""The batched KV cache with per-row rollback computes what each sequence would compute alone."""
import pytest
import torch

from actors.kv_batch import PAD_SLACK, CachedBatch, length_groups
from actors.models import load_model
from studyhall.config import ModelConfig


@pytest.fixture(scope="module")
def teacher():
    return load_model(ModelConfig(path="tiny:teacher", dtype="float64"), torch.device("cpu"))


def _alone(model, ids: list[int], extra: list[int]) -> torch.Tensor:
    """Logits at the positions of `extra`, from one uncached forward of the whole sequence."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids + extra])).logits[0]
    return logits[len(ids) - 1: len(ids) - 1 + len(extra)]


def test_rollback_select_extend_and_compact_match_unbatched(teacher, tiny_tokenizer):
    gen = torch.Generator().manual_seed(0)
    texts = ["Hello there, how are you doing today?", "Hi", "A much longer prompt about cats, dogs and birds."]
    seqs = [tiny_tokenizer(t)["input_ids"] for t in texts]  # "Hi" is one token: nothing to prefill
    batch = CachedBatch(teacher, torch.device("cpu"))
    batch.start(seqs)
    assert batch.length.tolist() == [len(s) - 1 for s in seqs]

    for step in range(12):
        drafted = torch.randint(0, 2000, (batch.rows, 3), generator=gen)
        fed = torch.cat([batch.pending[:, None], drafted], dim=1)  # 4 new slots per row
        start = batch.length.clone()
        logits = batch.forward(fed)
        for row, seq in enumerate(seqs):
            expected = _alone(teacher, seq, drafted[row].tolist())
            torch.testing.assert_close(logits[row, :3], expected, rtol=0, atol=1e-9)
        keep = torch.randint(1, 4, (batch.rows,), generator=gen)  # committed tokens this round
        for row in range(batch.rows):
            seqs[row] = seqs[row] + drafted[row, : keep[row]].tolist()
        batch.keep(start + keep, drafted[torch.arange(batch.rows), keep - 1])
        assert batch.length.tolist() == [len(s) - 1 for s in seqs]
        if step == 5:
            width = batch.valid.shape[1]
            batch.compact()
            assert batch.valid.shape[1] == max(len(s) - 1 for s in seqs) < width
        if step == 8:
            batch.select(torch.tensor([2, 0]))
            seqs = [seqs[2], seqs[0]]
            new = tiny_tokenizer("A new prompt joins the batch")["input_ids"]
            batch.extend([new])
            seqs.append(new)
            assert batch.rows == 3 and batch.pending[-1] == new[-1]

    # holes never grow without bound: the cache stays within 2x the longest row plus slack
    assert batch.valid.shape[1] <= 2 * max(len(s) for s in seqs) + 64


def test_length_groups_bound_the_padding_of_each_prefill():
    costs = [3, 90, 5, 80, 0, 85, 4]
    groups = length_groups(costs)
    assert sorted(i for g in groups for i in g) == list(range(len(costs)))
    assert groups == [[4, 0, 6, 2], [3, 5, 1]]  # the short ones, then the long ones
    for g in groups:
        real = sum(costs[i] for i in g)
        padding = max(costs[i] for i in g) * len(g) - real
        assert padding <= max(0.25 * real, PAD_SLACK)
    assert length_groups([7, 7, 7]) == [[0, 1, 2]] and length_groups([]) == []


def test_prompts_prefilled_in_length_groups_keep_their_rows_and_match_unbatched(teacher):
    gen = torch.Generator().manual_seed(1)
    lengths = [4, 120, 6, 100, 1, 110]
    seqs = [torch.randint(0, 2000, (n,), generator=gen).tolist() for n in lengths]
    assert len(length_groups([n - 1 for n in lengths])) == 2
    batch = CachedBatch(teacher, torch.device("cpu"))
    batch.start(seqs)
    assert batch.length.tolist() == [n - 1 for n in lengths] and batch.pending.tolist() == [s[-1] for s in seqs]
    drafted = torch.randint(0, 2000, (batch.rows, 2), generator=gen)
    logits = batch.forward(torch.cat([batch.pending[:, None], drafted], dim=1))
    for row, seq in enumerate(seqs):
        torch.testing.assert_close(logits[row, :2], _alone(teacher, seq, drafted[row].tolist()), rtol=0, atol=1e-9)
