"""A teacher or student actor killed mid-run (Ray restarts it): every prompt still yields exactly one
valid record, and a greedy run equals the unkilled one token for token. Real actors, real kills."""
import json
import threading
import time

import pytest
import ray
import torch

from actors.models import eos_ids, load_model, load_tokenizer
from actors.pair import start_pair, stop_pair
from cluster.generate import GenerationFailed, generate
from studyhall.config import load_config
from studyhall.distill_math import divergence_logprobs

pytestmark = pytest.mark.slow

PROMPTS = 12
COMMON = ["max_new_tokens=32", "tau0=0.3", "lam=0.05", "teacher_topk=5", "max_restarts=2"]
EOS = eos_ids(load_tokenizer("tiny:teacher"), "tiny:teacher")
# "lone": one pipeline group, so each one-token round has the teacher wait inside its call for the
# student's draft (actors/switch_controller.py); killing the student then fails that call too.
MODES = {"greedy": ["sample=false"], "sampled": ["sample=true", "seed=7"], "lone": ["sample=false", "pipeline_groups=1"]}


@pytest.fixture(scope="module")
def pair(ray_local):
    teacher, student = start_pair(load_config("tiny", ["max_restarts=2"]))
    yield {"teacher": teacher, "student": student}
    stop_pair(teacher, student)


@pytest.fixture(scope="module")
def teacher_model():
    return load_model(load_config("tiny").teacher, torch.device("cpu"))


class Killer(threading.Thread):
    """Kills `actor` (letting Ray restart it unless it is out of restarts) each time the output
    file reaches one of `at` records."""

    def __init__(self, actor, out, at):
        super().__init__(daemon=True)
        self.actor, self.out, self.at, self.kills = actor, out, list(at), 0

    def run(self):
        deadline = time.time() + 300
        while self.at and time.time() < deadline:
            if self.out.exists() and len(self.out.read_text().splitlines()) >= self.at[0]:
                ray.kill(self.actor, no_restart=False)
                self.kills += 1
                self.at.pop(0)
            time.sleep(0.02)


def _generate(pair, out, overrides, kill=None, at=(3,)):
    cfg = load_config("tiny", COMMON + overrides)
    killer = Killer(pair[kill], out, at) if kill else None
    if killer:
        killer.start()
    try:
        summary = generate(cfg, None, out, limit=PROMPTS, progress=False, actors=(pair["teacher"], pair["student"]))
    finally:
        if killer:
            killer.join()
    return summary, [json.loads(line) for line in out.read_text().splitlines()], killer


def _check_valid(records, teacher_model):
    """EOS or length, per-position fields of one length, and the recorded teacher log-probs are a plain
    teacher pass over the final sequence: no token appended twice, none lost."""
    for r in records:
        n = len(r["token_ids"])
        assert n == len(r["from_teacher"]) == len(r["divergence"]) == len(r["tau"]) == len(r["teacher_logprob"]) == len(r["teacher_topk_ids"])
        assert (r["finish_reason"] == "length" and n == 32) or (r["finish_reason"] == "stop" and r["token_ids"][-1] in EOS)
        ids = torch.tensor([r["prompt_token_ids"] + r["token_ids"]])
        p = len(r["prompt_token_ids"])
        with torch.no_grad():
            logp = divergence_logprobs(teacher_model(input_ids=ids).logits[0, p - 1:-1], 1.0)
        chosen = logp.gather(-1, torch.tensor(r["token_ids"])[:, None])[:, 0]
        torch.testing.assert_close(torch.tensor(r["teacher_logprob"]), chosen, atol=2e-3, rtol=1e-4)


@pytest.fixture(scope="module")
def unkilled(pair, tmp_path_factory):
    return {mode: _generate(pair, tmp_path_factory.mktemp(mode) / "plain.jsonl", extra)[1] for mode, extra in MODES.items()}


@pytest.mark.parametrize("role, mode", [("teacher", "greedy"), ("student", "greedy"), ("teacher", "sampled"), ("student", "lone")])
def test_a_killed_actor_is_restarted_and_nothing_is_lost_or_doubled(pair, unkilled, teacher_model, tmp_path, role, mode):
    summary, records, killer = _generate(pair, tmp_path / "killed.jsonl", MODES[mode], kill=role)
    assert killer.kills == 1
    assert summary["restarts"] == {"teacher": int(role == "teacher"), "student": int(role == "student")}
    ids = [r["prompt_id"] for r in records]
    assert len(ids) == len(set(ids)) == PROMPTS and set(ids) == {r["prompt_id"] for r in unkilled[mode]}
    assert summary["sequences"] == PROMPTS and summary["tokens"] == sum(len(r["token_ids"]) for r in records)
    _check_valid(records, teacher_model)
    if mode in ("greedy", "lone"):  # exact: the kill changes nothing
        plain = {r["prompt_id"]: r for r in unkilled[mode]}
        for r in records:
            assert r["token_ids"] == plain[r["prompt_id"]]["token_ids"], r["prompt_id"]
            assert r["from_teacher"] == plain[r["prompt_id"]]["from_teacher"], r["prompt_id"]
            assert r["finish_reason"] == plain[r["prompt_id"]]["finish_reason"], r["prompt_id"]


def test_kills_beyond_max_restarts_end_the_run_and_keep_what_finished(ray_local, teacher_model, tmp_path):
    teacher, student = start_pair(load_config("tiny", ["max_restarts=1"]))
    out = tmp_path / "exhausted.jsonl"
    cfg = load_config("tiny", COMMON[:-1] + MODES["greedy"] + ["max_restarts=1"])
    killer = Killer(teacher, out, at=(2, 5))
    killer.start()
    try:
        with pytest.raises(GenerationFailed) as failed:
            generate(cfg, None, out, limit=PROMPTS, progress=False, actors=(teacher, student))
    finally:
        killer.join()
        stop_pair(teacher, student)
    message = str(failed.value)
    assert "\n" not in message and "the teacher actor died and Ray will not restart it again (max_restarts=1" in message
    kept = [json.loads(line) for line in out.read_text().splitlines()]
    assert 5 <= len(kept) < PROMPTS and f"the {len(kept)} finished sequences are kept in {out}" in message
    assert f"{PROMPTS - len(kept)} prompts were not finished" in message
    _check_valid(kept, teacher_model)
