"""The unlikelihood term's records (OWN_GREEDY) on real Ray actors with the tiny preset: the student
writes them alone, they equal its own generate(do_sample=False) up to its first end of turn, they
carry no teacher scores (unless train.unlikelihood_teacher, and then a plain teacher pass's), and they
count as training-batch generation outside the SWITCH groups."""
import contextlib

import pytest
import torch

from actors.models import eos_ids, load_model, load_tokenizer
from actors.pair import start_pair, stop_pair
from actors.revival import Revival
from studyhall.config import load_config
from studyhall.unlikelihood import OWN_GREEDY
from train.data import Example, prompt_token_ids
from train.records import RecordMaker

pytestmark = pytest.mark.usefixtures("ray_local")

QUESTIONS = ["Name a river in Europe.", "Why is the sky blue? Explain briefly.", "Hi"]


def _generate(model, prompt: list[int], eos: list[int], max_new_tokens: int) -> list[int]:
    with torch.no_grad():
        out = model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                             do_sample=False, max_new_tokens=max_new_tokens, eos_token_id=eos, pad_token_id=eos[0])
    answer = out[0, len(prompt):].tolist()
    ends = [i for i, t in enumerate(answer) if t in eos]
    return answer[:ends[0] + 1] if ends else answer


@contextlib.contextmanager
def _greedy_records(*overrides: str):
    """(the record maker, the examples, the tokenizer, the end-of-turn ids, the OWN_GREEDY records for
    QUESTIONS) on a tiny pair started for it and stopped afterwards."""
    cfg = load_config("tiny", ["answer_tokens=8", *overrides])
    teacher, student = start_pair(cfg)
    try:
        tokenizer = load_tokenizer(cfg.student.path)
        eos = eos_ids(tokenizer, cfg.teacher.path) | eos_ids(tokenizer, cfg.student.path)
        examples = [Example(f"q{i}", [{"role": "user", "content": q}], None) for i, q in enumerate(QUESTIONS)]
        maker = RecordMaker(cfg, tokenizer, teacher, student, Revival.for_pair(teacher, student, cfg), eos, examples, None, None)
        yield maker, examples, tokenizer, eos, maker.run_engine(OWN_GREEDY, examples, seed=0)
    finally:
        stop_pair(teacher, student)


def test_own_greedy_records_are_the_students_generate_with_no_teacher_scores():
    with _greedy_records() as (maker, examples, tokenizer, eos, records):
        model = load_model(maker.cfg.student, torch.device("cpu"))
        for example, record in zip(examples, records):
            prompt = prompt_token_ids(tokenizer, example)
            expected = _generate(model, prompt, sorted(eos), max_new_tokens=8)
            assert record.prompt_id == example.id and record.prompt_token_ids == prompt
            assert record.token_ids == expected and record.source == OWN_GREEDY
            assert record.from_teacher == [False] * len(expected)  # the student wrote every token
            assert record.teacher_logprob == [] and record.teacher_topk_ids == []  # the teacher scored none
        assert maker.counts["generated_tokens"] == sum(len(r.token_ids) for r in records)
        assert maker.counts["generation_seconds"] > 0
        assert maker.batch_rows_by_group == {}  # no SWITCH pipeline group made them


@pytest.mark.parametrize("method, scored", [("switch", True), ("sft", False)])
def test_with_unlikelihood_teacher_the_greedy_answers_carry_a_plain_teacher_pass(method, scored):
    """The same answers, scored exactly as a plain teacher pass scores them, for a method whose loss
    reads the teacher; sft's cross-entropy reads none, so its are not scored."""
    with _greedy_records(f"method={method}", "unlikelihood_teacher=true") as (maker, _, _, _, records):
        if not scored:
            assert all(r.teacher_topk_ids == [] for r in records) and maker.counts["extra_pass_positions"] == 0
            return
        plain, _ = maker.score_with_teacher(records)
        for record, expected in zip(records, plain):
            assert len(record.teacher_topk_ids) == len(record.token_ids) == len(expected["teacher_topk_ids"])
            assert record.teacher_topk_ids == expected["teacher_topk_ids"]
            assert record.teacher_topk_logprobs == expected["teacher_topk_logprobs"]
        assert maker.counts["extra_pass_positions"] == sum(len(r.token_ids) for r in records)
