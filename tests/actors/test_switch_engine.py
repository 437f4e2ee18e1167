"""The SWITCH engine on real Ray actors with the tiny preset: exactness, bookkeeping, reuse, failures."""
import json

import numpy as np
import pytest
import ray
import torch

from actors.models import load_model
from actors.pair import start_pair, stop_pair
from cluster.generate import generate
from studyhall.config import load_config
from studyhall.distill_math import divergence_logprobs, js
from studyhall.engine_settings import engine_settings


@pytest.fixture(scope="module")
def pair(ray_local):
    teacher, student = start_pair(load_config("tiny"))
    yield teacher, student
    stop_pair(teacher, student)


def _run(pair, tmp_path, name, overrides, limit=16):
    cfg = load_config("tiny", overrides)
    out = tmp_path / f"{name}.jsonl"
    summary = generate(cfg, None, out, limit=limit, progress=False, actors=pair)
    records = {r["prompt_id"]: r for r in map(json.loads, out.read_text().splitlines())}
    return summary, records


@pytest.mark.parametrize("divergence", ["js", "skd"])
def test_greedy_block_equals_per_token(pair, tmp_path, divergence):
    common = ["sample=false", "max_new_tokens=40", f"divergence={divergence}", "skd_top_k=3", "tau0=0.3", "lam=0.05"]
    ref_summary, reference = _run(pair, tmp_path, "per_token", common + ["mode=per_token"])
    block_summary, block = _run(pair, tmp_path, "block", common + ["mode=block", "gamma=4"])
    assert reference.keys() == block.keys() and len(block) == 16
    for pid in reference:
        assert block[pid]["token_ids"] == reference[pid]["token_ids"], pid
        assert block[pid]["from_teacher"] == reference[pid]["from_teacher"], pid
    # the comparison has bite: both sources wrote tokens, and blocks cut the teacher's calls
    assert 0.1 < ref_summary["teacher_share"] < 0.9
    assert ref_summary["teacher_calls_per_token"] == 1.0
    assert ref_summary["forwards_per_token"] == 2.0  # one student draft and one teacher score per token
    assert block_summary["teacher_calls_per_token"] < 0.8


def test_a_named_writer_writes_every_token_in_blocks_and_the_other_scores_each(pair, tmp_path):
    common = ["sample=false", "max_new_tokens=12", "tau0=0.3", "teacher_topk=3"]
    rule_summary, rule = _run(pair, tmp_path, "rule", common, limit=6)
    assert 0 < rule_summary["teacher_share"] < 1  # at this tau0 the rule hands tokens to both
    for writer in ("student", "teacher"):
        summary, records = _run(pair, tmp_path, writer, common + [f"writer={writer}"], limit=6)
        assert all(r["from_teacher"] == [writer == "teacher"] * len(r["token_ids"]) for r in records.values())
        assert all(len(r["divergence"]) == len(r["teacher_logprob"]) == len(r["teacher_topk_ids"]) == len(r["token_ids"])
                   for r in records.values())
        # the writer drafts every block and every drafted token stands: blocks grow past one token
        assert summary["forwards_per_token"] < 2.0, summary
        # greedy, the writer alone is the writer's own greedy answer, token for token
        model = load_model(getattr(load_config("tiny"), writer), torch.device("cpu"))
        for r in records.values():
            with torch.no_grad():
                own = model.generate(torch.tensor([r["prompt_token_ids"]]), max_new_tokens=len(r["token_ids"]), do_sample=False,
                                     pad_token_id=0)[0, len(r["prompt_token_ids"]):].tolist()
            assert r["token_ids"] == own, (writer, r["prompt_id"])


def test_fewer_prompts_than_batch_size_are_split_across_the_pipeline_groups(pair, tmp_path):
    # a training step's batch is smaller than switch.batch_size; both groups must get rows, or the
    # two models would never work at the same time
    summary, records = _run(pair, tmp_path, "split", ["batch_size=16", "pipeline_groups=2", "max_new_tokens=6"], limit=5)
    assert len(records) == 5 and summary["rows_by_group"] == {0: 3, 1: 2}
    summary, _ = _run(pair, tmp_path, "full", ["batch_size=4", "pipeline_groups=2", "max_new_tokens=6"], limit=9)
    assert summary["rows_by_group"][0] + summary["rows_by_group"][1] == 9 and summary["rows_by_group"][0] >= 2


def test_records_reuse_exact_teacher_logprobs_and_bookkeeping(pair, tmp_path):
    tau0, lam = 0.3, 0.05
    summary, records = _run(pair, tmp_path, "book", [f"tau0={tau0}", f"lam={lam}", "teacher_topk=5", "max_new_tokens=24"], limit=6)
    teacher = load_model(load_config("tiny").teacher, torch.device("cpu"))
    student = load_model(load_config("tiny").student, torch.device("cpu"))
    total = teacher_total = 0
    for r in records.values():
        n = len(r["token_ids"])
        assert n == len(r["from_teacher"]) == len(r["divergence"]) == len(r["tau"]) == len(r["teacher_logprob"]) == len(r["teacher_topk_ids"])
        assert r["finish_reason"] in ("stop", "length") and 1 <= r["teacher_calls"] <= n
        for t in range(n):
            assert r["tau"][t] == pytest.approx(tau0 * torch.exp(torch.tensor(-lam * t)).item(), rel=1e-5)
            assert r["from_teacher"][t] == (r["divergence"][t] > r["tau"][t])
        # One plain forward of each model over the final sequence gives back what was recorded:
        # the teacher log-probs kept during generation are those of the final sequence.
        ids = torch.tensor([r["prompt_token_ids"] + r["token_ids"]])
        p = len(r["prompt_token_ids"])
        with torch.no_grad():
            logp_t = divergence_logprobs(teacher(input_ids=ids).logits[0, p - 1: -1], 1.0)
            logp_s = divergence_logprobs(student(input_ids=ids).logits[0, p - 1: -1], 1.0)
        chosen = logp_t.gather(-1, torch.tensor(r["token_ids"])[:, None])[:, 0]
        torch.testing.assert_close(torch.tensor(r["teacher_logprob"]), chosen, atol=2e-3, rtol=1e-4)
        torch.testing.assert_close(torch.tensor(r["divergence"]), js(logp_t, logp_s), atol=2e-3, rtol=1e-3)
        top_ids = logp_t.topk(5).indices
        assert (torch.tensor(r["teacher_topk_ids"]) == top_ids).float().mean() > 0.99  # ties may swap
        total += n
        teacher_total += sum(r["from_teacher"])
    assert summary["tokens"] == total
    assert summary["teacher_share"] == pytest.approx(teacher_total / total, abs=1e-4)


def test_a_one_token_round_scored_beside_its_draft_equals_one_scored_after_it(pair):
    # A lone group's one-token rounds hand the scorer the draft's ref inside a list: it runs its forward
    # on the pending token first and fetches the draft after. Two groups with the same prompts, one
    # scored each way, must agree exactly, round after round (greedy, so no random draws differ).
    teacher, student = pair
    ray.get([a.configure.remote(load_config("tiny", ["sample=false"]).switch) for a in pair])
    prompts = [[1, 2, 3, 4, 5], [6, 7, 8], [9, 10, 11, 12]]
    taus = np.full((len(prompts), 1), 0.3, dtype=np.float32)
    rounds = {}
    for group, beside in ((7, True), (8, False)):
        ray.get([a.extend.remote(group, prompts) for a in pair])
        commit, rounds[beside] = None, []
        for _ in range(6):
            draft = student.draft.remote(group, 1, commit=commit)
            commit = teacher.score.remote(group, [draft] if beside else draft, taus)
            rounds[beside].append(ray.get(commit))
    for concurrent, serial in zip(rounds[True], rounds[False]):
        assert concurrent.keys() == serial.keys()
        for key in serial:
            np.testing.assert_array_equal(concurrent[key], serial[key], err_msg=key)
    # both sources wrote tokens, so the commits fed back into the next round took both paths
    taken = np.concatenate([r["from_teacher"] for r in rounds[False]])
    assert taken.any() and not taken.all()
    ray.get([a.configure.remote(load_config("tiny").switch) for a in pair])


def test_auto_mode_runs_one_token_rounds_for_a_lone_group_only():
    def rounds(*overrides):
        return engine_settings(load_config("tiny", list(overrides))).one_token_rounds()

    assert rounds("pipeline_groups=1")
    assert not rounds("pipeline_groups=2")
    assert not rounds("pipeline_groups=1", "mode=block")
    assert rounds("pipeline_groups=2", "mode=per_token")
    assert not rounds("pipeline_groups=1", "writer=student")  # one model writes alone: blocks


def test_adaswitch_hands_each_answer_to_the_teacher_once_at_its_first_spike(pair, tmp_path):
    from studyhall.distill_math import adaptive_switch_point

    k, window = 1.3, 4
    summary, records = _run(pair, tmp_path, "adaswitch", ["schedule=adaptive", f"adaptive_k={k}", f"adaptive_window={window}",
                                                          "max_new_tokens=24", "sample=true", "seed=3"])
    firsts = []
    for pid, r in records.items():
        owners = r["from_teacher"]
        first = owners.index(True) if True in owners else None
        assert owners == [False] * (first if first is not None else len(owners)) + [True] * (len(owners) - (first or len(owners))), pid
        # the recorded divergences put the switch exactly where the rule says; tau was K x the mean before it
        assert first == adaptive_switch_point(r["divergence"][: (first or len(owners)) + 1], k, window), pid
        for i in range(1, first if first is not None else len(owners)):
            recent = r["divergence"][max(0, i - window):i]
            assert r["tau"][i] == pytest.approx(k * sum(recent) / len(recent), rel=1e-5), (pid, i)
        firsts.append(first)
    # the test has bite: answers switched, at different positions, none at position 0 (no average there yet)
    switch_points = [f for f in firsts if f is not None]
    assert switch_points and len(set(switch_points)) > 1 and min(switch_points) >= 1, firsts
    assert summary["teacher_calls_per_token"] == 1.0  # one token at a time
