"""The teacher's reference answers on real Ray actors with the tiny preset: RecordMaker.reference has
the teacher write them alone (HF `generate` at T=0.7, top-p 0.9) and caches them, and
Rollout.write_references writes, before training, every one that any step's batch reads from the data."""
import json

import pytest
import ray

from actors.alone import answer_alone
from actors.models import eos_ids, load_tokenizer
from actors.pair import start_pair, stop_pair
from actors.revival import Revival
from studyhall.config import load_config
from train.data import Example, prompt_token_ids
from train.distill import close, start_rollout
from train.methods import make_method
from train.records import RecordMaker, sample_settings

pytestmark = pytest.mark.usefixtures("ray_local")

EXAMPLES = [Example(f"q{i}", [{"role": "user", "content": f"Question {i}: name a colour and a fruit."}], None) for i in range(12)]


def test_the_teacher_writes_references_alone_at_its_own_law_with_the_student_gone(tmp_path):
    cfg = load_config("tiny", ["answer_tokens=8"])
    teacher, student = start_pair(cfg)
    try:
        tokenizer = load_tokenizer(cfg.student.path)
        eos = eos_ids(tokenizer, cfg.teacher.path) | eos_ids(tokenizer, cfg.student.path)
        revival = Revival.for_pair(teacher, student, cfg)
        settings = sample_settings(cfg, "teacher", cfg.seed, sample=True, temperature=0.7, top_p=0.9)
        expected = [tokenizer.decode(ids, skip_special_tokens=True).strip() for ids in
                    answer_alone(revival, teacher, [prompt_token_ids(tokenizer, e) for e in EXAMPLES[:3]], sorted(eos), settings)]
        ray.kill(student, no_restart=True)  # a reference is the teacher's alone: the student takes no part
        cache = tmp_path / "refs.json"
        maker = RecordMaker(cfg, tokenizer, teacher, student, revival, eos, EXAMPLES, str(cache), None)
        assert maker.reference(EXAMPLES[:3]) == expected
        assert json.loads(cache.read_text()) == {e.id: text for e, text in zip(EXAMPLES[:3], expected)}
        assert maker.counts["generated_tokens"] == 0  # not training data
    finally:
        stop_pair(teacher, student)


def test_before_training_every_answer_a_step_reads_from_the_data_is_written_once(tmp_path):
    cfg = load_config("tiny", ["method=switch", "switch_data_share=0.5", "steps=3", "global_batch=4", "answer_tokens=8"])
    train, val = EXAMPLES[:10], EXAMPLES[10:]
    read = {e.id for step in range(1, 4) for need in make_method(cfg, train).plan(step, 4)
            if need.source == "scored_data" for e in need.examples}
    assert 0 < len(read) < 10  # a mix of data and rollouts over the steps, and not every example
    cache = tmp_path / "refs.json"
    rollout, pair_name = start_rollout(cfg, train, val, str(cache))
    try:
        assert ray.get(rollout.write_references.remote()) == len(read)
        assert set(json.loads(cache.read_text())) == read
        assert ray.get(rollout.write_references.remote()) == 0  # all cached
    finally:
        close(rollout, pair_name)
