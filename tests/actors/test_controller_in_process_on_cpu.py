"""The SWITCH controller's planning and bookkeeping over two tiny model workers in this process
(actors/in_process.py): the same rounds as over Ray actors, in a fast test. The real-actor runs are
tests/actors/test_switch_engine.py."""
import pytest
import torch

from actors.in_process import InProcess
from actors.lm_worker import LMWorker
from actors.models import load_model, load_tokenizer
from actors.switch_controller import SwitchController
from studyhall.config import load_config
from studyhall.engine_settings import engine_settings
from studyhall.prompts import PromptItem


class Teacher(LMWorker):
    role = "teacher"


class Student(LMWorker):
    role = "student"


@pytest.fixture(scope="module")
def pair():
    threads = torch.get_num_threads()
    cfg = load_config("tiny")
    settings = engine_settings(cfg)
    workers = (Teacher(cfg.teacher, settings), Student(cfg.student, settings))
    for w in workers:
        w.model = load_model(w.spec, w.device)  # what LMWorker.load does, without its Ray runtime info
    yield workers
    torch.set_num_threads(threads)  # LMWorker sets its share's threads in this process


def _items(n: int) -> list[PromptItem]:
    tok = load_tokenizer("tiny:student")
    texts = ["Name a primary color.", "What do bees make?", "Write a haiku about rain.", "Why is the sky blue?",
             "List three rivers.", "Say hello.", "Count to five.", "What is a verb?"]
    return [PromptItem(i, f"p{i}", t, tok(t, add_special_tokens=False)["input_ids"]) for i, t in enumerate(texts[:n])]


def _run(pair, overrides: list[str], n: int = 6):
    settings = engine_settings(load_config("tiny", ["sample=false", "max_new_tokens=16", "tau0=0.3", "lam=0.05", *overrides]))
    teacher, student = pair
    for w in pair:
        w.configure(settings)
    done = {}
    stats = SwitchController(InProcess(teacher), InProcess(student), settings, eos_ids=set()).run(
        _items(n), on_finish=lambda seq: done.__setitem__(seq.prompt_id, seq))
    return stats, done


def test_blocks_and_one_token_rounds_write_the_same_greedy_sequences(pair):
    per_token, reference = _run(pair, ["mode=per_token", "pipeline_groups=1"])
    block, blocks = _run(pair, ["mode=block", "gamma=4", "pipeline_groups=2"])
    assert reference.keys() == blocks.keys() and len(blocks) == 6
    for pid, seq in reference.items():
        assert (blocks[pid].token_ids, blocks[pid].from_teacher) == (seq.token_ids, seq.from_teacher), pid
    # both models wrote, one-token rounds cost one teacher call per token, blocks fewer
    assert 0 < per_token.teacher_tokens < per_token.tokens
    assert per_token.teacher_calls == per_token.tokens and block.teacher_calls < block.tokens
    assert block.rows_by_group == {0: 3, 1: 3}  # the prompts split evenly over the two groups


def test_the_record_follows_the_rule_at_every_position(pair):
    _, seqs = _run(pair, ["mode=block", "pipeline_groups=1", "teacher_topk=3"])
    for seq in seqs.values():
        n = len(seq.token_ids)
        assert n == len(seq.from_teacher) == len(seq.divergence) == len(seq.tau) == len(seq.teacher_topk_ids) == 16
        assert seq.tau == pytest.approx([0.3 * torch.exp(torch.tensor(-0.05 * t)).item() for t in range(n)], rel=1e-5)
        assert seq.from_teacher == [d > t for d, t in zip(seq.divergence, seq.tau)]
        assert seq.finish_reason == "length"


def test_a_named_writer_owns_every_token(pair):
    for writer in ("student", "teacher"):
        stats, seqs = _run(pair, [f"writer={writer}", "pipeline_groups=1"])
        assert all(seq.from_teacher == [writer == "teacher"] * 16 for seq in seqs.values())
        assert stats.row_forwards < 2 * stats.tokens  # blocks: every drafted token stands
