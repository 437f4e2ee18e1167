"""LMWorker.generate_alone, the one-model path of cross-tokenizer runs: batched left-padded answers
equal one-by-one `generate`, a seed repeats its samples, and each answer stops at its end of turn."""
import dataclasses

import pytest
import torch

from actors.lm_worker import LMWorker
from actors.models import load_model, load_tokenizer
from studyhall.config import load_config


class Student(LMWorker):
    role = "student"


@pytest.fixture(scope="module")
def worker():
    cfg = load_config("tiny", [])
    w = Student(cfg.student, dataclasses.replace(cfg.switch, sample=False, max_new_tokens=6))
    w.model = load_model(cfg.student, torch.device("cpu"))
    return w, cfg, load_tokenizer("tiny:student")


def test_batched_greedy_answers_equal_one_by_one_generate(worker):
    w, cfg, tok = worker
    w.configure(dataclasses.replace(cfg.switch, sample=False, max_new_tokens=6))
    prompts = [tok("Hello there, how are")["input_ids"], tok("Hi")["input_ids"], tok("Name three rivers of Europe.")["input_ids"]]
    got = w.generate_alone(prompts, [tok.eos_token_id])
    with torch.no_grad():
        one_by_one = [w.model.generate(torch.tensor([p]), max_new_tokens=6, do_sample=False, pad_token_id=0)[0, len(p):].tolist()
                      for p in prompts]
    assert got == one_by_one and all(len(a) == 6 for a in got)


def test_a_seed_repeats_its_samples_and_answers_end_at_their_end_of_turn(worker):
    w, cfg, tok = worker
    prompts = [tok("Hello there, how are")["input_ids"], tok("Hi")["input_ids"]]
    sampled = dataclasses.replace(cfg.switch, sample=True, temperature=1.0, top_p=1.0, max_new_tokens=6, seed=3)
    w.configure(sampled)
    first = w.generate_alone(prompts, [tok.eos_token_id])
    w.configure(sampled)
    assert w.generate_alone(prompts, [tok.eos_token_id]) == first
    w.configure(dataclasses.replace(sampled, seed=4))
    assert w.generate_alone(prompts, [tok.eos_token_id]) != first
    # With the first answer's second token as the end of turn, that answer stops there, keeping it.
    w.configure(sampled)
    stop = first[0][1]
    cut = w.generate_alone(prompts, [stop])
    assert cut[0] == first[0][:first[0].index(stop) + 1]
