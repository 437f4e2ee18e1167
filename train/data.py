"""Distillation data: prompts with optional reference answers, from Dolly, Alpaca, chat or plain-prompt files.

One format per file, told apart by its columns. Every row becomes an Example or an error that names
the file, the line (JSONL) or row index (JSON array, Parquet) and the field; nothing is dropped.
A Dolly or Alpaca file gives an answer on every row or on none (prompts only, e.g. for `--prompts`):
a row without one in a file that has them is an error, not a prompt whose answer the teacher writes.
With no path, the embedded prompt set is used and references are left to the teacher (cached here).
"""
import hashlib
import json
import os
import random
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

from actors.embedded import cache_dir
from studyhall.config import ConfigError
from studyhall.prompts import EMBEDDED_PROMPTS, render, to_messages
from studyhall.rows import read_located_rows


@dataclass
class Example:
    id: str
    messages: list[dict]  # the prompt as chat messages, ending with a user turn; no assistant answer
    response: str | None  # the reference answer, or None when the file has none


@dataclass(frozen=True)
class Format:
    name: str
    required: tuple[str, ...]
    optional: tuple[str, ...] = ()

    def describe(self) -> str:
        fields = [*self.required[:1], *(f + "?" for f in self.optional), *self.required[1:]]
        return f"{self.name} {{{', '.join(fields)}}}"


FORMATS = {
    "dolly": Format("Dolly", ("instruction",), ("context", "response")),
    "alpaca": Format("Alpaca", ("instruction",), ("input", "output")),
    "messages": Format("chat", ("messages",)),
    "prompt": Format("plain", ("prompt",), ("response",)),
}
ACCEPTED = "accepted: " + "; ".join(f.describe() for f in FORMATS.values()) + " (plus an optional id; ? = optional)"
# Which formats a present field is compatible with: a row's format is the intersection over its fields.
OWNERS = {field: {key for key, f in FORMATS.items() if field in f.required + f.optional}
          for f in FORMATS.values() for field in f.required + f.optional}
ROLES = ("system", "user", "assistant")
ANSWER_FIELD = {"dolly": "response", "alpaca": "output"}  # all rows or none


def load_examples(path: str | Path | None) -> list[Example]:
    """Every row of a local JSONL, JSON or Parquet file as an Example; None means the embedded prompt set."""
    source = EMBEDDED_PROMPTS if path is None else path
    rows = read_located_rows(source)
    key = _detect_format(rows, source)
    answered = key in ANSWER_FIELD and any(row.get(ANSWER_FIELD[key]) is not None for _, row in rows)
    examples, first_seen = [], {}
    for index, (where, row) in enumerate(rows):
        example = _to_example(key, row, where, index, answered)
        if example.id in first_seen:
            raise ConfigError(f"{where}: id {example.id!r} repeats the id at {first_seen[example.id]}; ids must be unique")
        first_seen[example.id] = where
        examples.append(example)
    return examples


def _detect_format(rows: list[tuple[str, dict]], path) -> str:
    first_at = {}  # format -> where the first row that can only be that format sits
    for where, row in rows:
        present, candidates = _fields_and_candidates(row)
        if not candidates:
            raise ConfigError(f"{where}: fields {', '.join(present)} belong to different formats; {ACCEPTED}")
        if len(candidates) == 1:
            first_at.setdefault(next(iter(candidates)), where)
    if len(first_at) > 1:
        seen = "; ".join(f"{FORMATS[key].name} at {where}" for key, where in first_at.items())
        raise ConfigError(f"{path}: mixes formats ({seen}); use one format per file")
    if not first_at:
        key = _shared_format(rows)
        if key is None:
            columns = sorted({name for _, row in rows for name, value in row.items() if value is not None})
            raise ConfigError(f"{path}: unknown format, columns {columns}; {ACCEPTED}")
        return key
    key = next(iter(first_at))
    for where, row in rows:
        present, candidates = _fields_and_candidates(row)
        if key not in candidates:
            raise ConfigError(f"{where}: fields {', '.join(present)} do not fit this file's format, {FORMATS[key].describe()} "
                              f"(first seen at {first_at[key]}); use one format per file")
    return key


def _shared_format(rows: list[tuple[str, dict]]) -> str | None:
    """The format of a file whose rows fit several, e.g. instruction-only rows (Dolly or Alpaca without
    answers or extra input): every such format reads them as the same prompts, so the first is taken.
    None when a row has none of the known fields."""
    shared = set(FORMATS)
    for _, row in rows:
        present, candidates = _fields_and_candidates(row)
        if not present:
            return None
        shared &= candidates
    return next((key for key in FORMATS if key in shared), None)


def _fields_and_candidates(row: dict) -> tuple[list[str], set[str]]:
    present = [name for name in OWNERS if row.get(name) is not None]
    candidates = set(FORMATS)
    for name in present:
        candidates &= OWNERS[name]
    return present, candidates


def _to_example(key: str, row: dict, where: str, index: int, answered: bool = False) -> Example:
    fmt = FORMATS[key]
    for name in fmt.required + ((ANSWER_FIELD[key],) if answered else ()):
        if row.get(name) is None:
            why = " (other rows of this file have answers: give every row one, or none)" if name not in fmt.required else ""
            raise ConfigError(f"{where}: missing field '{name}' ({fmt.describe()}){why}")
    example_id = _id(row.get("id"), where, index)
    if key == "messages":
        messages, response = _split_chat(row["messages"], where)
        return Example(example_id, messages, response)
    if key == "prompt":
        return Example(example_id, [{"role": "user", "content": _text(row, "prompt", where)}], _text(row, "response", where, optional=True))
    extra_field, label, answer_field = ("context", "Context", "response") if key == "dolly" else ("input", "Input", "output")
    user = _text(row, "instruction", where)
    extra = _text(row, extra_field, where, optional=True, blank_ok=True)
    if extra and extra.strip():
        user = f"{user}\n\n{label}:\n{extra}"
    return Example(example_id, [{"role": "user", "content": user}], _text(row, answer_field, where, optional=True))


def _text(row: dict, name: str, where: str, optional: bool = False, blank_ok: bool = False) -> str | None:
    value = row.get(name)
    if value is None and optional:
        return None
    if not isinstance(value, str):
        raise ConfigError(f"{where}: field '{name}' must be a string, got {type(value).__name__} {_short(value)}")
    if not blank_ok and not value.strip():
        raise ConfigError(f"{where}: field '{name}' is empty")
    return value


def _id(value, where: str, index: int) -> str:
    if value is None or value == "":
        return f"row-{index}"
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise ConfigError(f"{where}: field 'id' must be a string or an integer, got {type(value).__name__} {_short(value)}")
    return str(value)


def _split_chat(value, where: str) -> tuple[list[dict], str | None]:
    """The prompt turns, and the trailing assistant turn (if any) as the reference answer."""
    if not isinstance(value, list):
        raise ConfigError(f"{where}: field 'messages' must be a list of {{role, content}} objects, got {type(value).__name__} {_short(value)}")
    messages = [{"role": m["role"], "content": m["content"]} for m in to_messages({"messages": value}, where)]
    for i, m in enumerate(messages):
        if m["role"] not in ROLES:
            raise ConfigError(f"{where}: messages[{i}] has role {m['role']!r}; expected one of {', '.join(ROLES)}")
    response = messages.pop()["content"] if messages[-1]["role"] == "assistant" else None
    if not messages or messages[-1]["role"] != "user":
        raise ConfigError(f"{where}: field 'messages' must end with a user turn, optionally followed by the assistant's reference answer")
    if response is not None and not response.strip():
        raise ConfigError(f"{where}: the assistant's reference answer (last message) is empty")
    return messages, response


def _short(value) -> str:
    text = json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= 40 else text[:37] + "..."


def split_validation(examples: list[Example], val_fraction: float, val_size: int | None, seed: int) -> tuple[list[Example], list[Example]]:
    """(train, val): a seeded shuffle picks the held-out examples; both keep file order and never overlap."""
    n = len(examples)
    if n < 2:
        raise ConfigError(f"need at least 2 examples to hold out a validation split, got {n}")
    if val_size is not None:
        if isinstance(val_size, bool) or not isinstance(val_size, int) or not 1 <= val_size <= n - 1:
            raise ConfigError(f"val_size={val_size!r}: must be an integer from 1 to {n - 1} (there are {n} examples)")
        k = val_size
    else:
        if not 0 < val_fraction < 1:
            raise ConfigError(f"val_fraction={val_fraction!r}: must be between 0 and 1 (exclusive)")
        k = min(max(round(n * val_fraction), 1), n - 1)
    order = list(range(n))
    random.Random(seed).shuffle(order)
    held_out = set(order[:k])
    return [e for i, e in enumerate(examples) if i not in held_out], [e for i, e in enumerate(examples) if i in held_out]


def render_prompt(tokenizer, example: Example) -> str:
    """The prompt as the model sees it: the chat template with the assistant turn opened."""
    return render(tokenizer, example.messages)


def prompt_token_ids(tokenizer, example: Example) -> list[int]:
    # The rendered template already holds its special tokens; adding them again would double BOS.
    return tokenizer(render_prompt(tokenizer, example), add_special_tokens=False)["input_ids"]


# Teacher-written references, cached once per (teacher, prompt set, answer budget).

def examples_digest(examples: list[Example]) -> str:
    """A stable hash of the prompts (ids and messages); references do not enter it."""
    payload = json.dumps([[e.id, e.messages] for e in examples], sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def references_cache_path(teacher_path: str, prompts_digest: str, max_new_tokens: int) -> Path:
    readable = re.sub(r"[^A-Za-z0-9._-]+", "_", str(teacher_path).strip("/"))[-48:]
    exact = hashlib.sha256(str(teacher_path).encode("utf-8")).hexdigest()[:8]  # the readable part may collide
    return cache_dir() / "references" / f"{readable}-{exact}-{prompts_digest[:16]}-{max_new_tokens}.json"


def save_references(path: str | Path, references: dict[str, str]) -> None:
    """Write atomically (temp file + rename), so a killed run never leaves half a cache behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(references, f, ensure_ascii=False, indent=1)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_references(path: str | Path) -> dict[str, str] | None:
    """The cached {id: text}, or None when there is none or it is unreadable (then it is simply rebuilt)."""
    try:
        value = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        return None
    return value
