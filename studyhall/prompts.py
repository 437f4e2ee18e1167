"""Prompt files: JSONL rows with a `prompt` string or chat `messages`, rendered with the chat template.

Loaded through HF `datasets`; every mistake is reported with the file and line it sits on.
"""
from dataclasses import dataclass
from pathlib import Path

from studyhall.config import ConfigError
from studyhall.rows import read_jsonl

EMBEDDED_PROMPTS = Path(__file__).parent / "data" / "prompts.jsonl"


@dataclass
class PromptItem:
    index: int
    prompt_id: str
    prompt: str  # the text as rendered for the model
    token_ids: list[int]


def read_rows(path: str | Path) -> list[tuple[int, dict]]:
    """(line number, row) for each non-blank line of a JSONL prompt file."""
    return read_jsonl(path, what="prompt file")


def to_messages(row: dict, where: str) -> list[dict]:
    messages = row.get("messages")
    if messages is not None:
        if not isinstance(messages, list) or not messages or not all(
                isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in messages):
            raise ConfigError(f"{where}: field 'messages' must be a non-empty list of {{role, content}} strings")
        return messages
    prompt = row.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise ConfigError(f"{where}: needs a non-empty string field 'prompt' (or a 'messages' list)")
    return [{"role": "user", "content": prompt}]


def embedded_messages(limit: int | None = None, last: bool = False) -> list[list[dict]]:
    """The embedded prompts as chat messages: all, the first `limit`, or with `last` the last `limit`."""
    rows = read_rows(EMBEDDED_PROMPTS)
    rows = rows[-limit:] if (last and limit) else rows[:limit]
    return [to_messages(row, f"{EMBEDDED_PROMPTS} line {line}") for line, row in rows]


def render(tokenizer, messages: list[dict]) -> str:
    """The prompt as the model sees it: the chat template with the assistant turn opened."""
    if tokenizer.chat_template:
        return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return "\n".join(m["content"] for m in messages)


def load_prompts(path, tokenizer, context: int, max_new_tokens: int, limit: int | None = None) -> list[PromptItem]:
    """Read, render and tokenize; refuse a prompt that leaves no room for max_new_tokens in the context."""
    items = []
    for index, (line, row) in enumerate(read_rows(path)[:limit]):
        where = f"{path} line {line}"
        text = render(tokenizer, to_messages(row, where))
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if not ids:
            raise ConfigError(f"{where}: prompt renders to no tokens")
        if len(ids) + max_new_tokens > context:
            raise ConfigError(f"{where}: prompt is {len(ids)} tokens; with max_new_tokens={max_new_tokens} it exceeds the model context of {context}")
        items.append(PromptItem(index, str(row.get("id") or f"line{line}"), text, ids))
    return items
