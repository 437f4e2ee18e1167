"""Distillation data: every format from JSONL, JSON and Parquet; located errors; the held-out split; rendering."""
import json
from pathlib import Path

import datasets
import pytest

from studyhall.config import ConfigError
from train.data import (
    Example,
    examples_digest,
    load_examples,
    load_references,
    prompt_token_ids,
    references_cache_path,
    render_prompt,
    save_references,
    split_validation,
)

DOLLY = [
    {"instruction": "Who started the festival?", "context": "A baker started it sixty years ago.", "response": "A local baker.", "category": "closed_qa"},
    {"instruction": "Name a primary color.", "context": "", "response": "Red."},
]
ALPACA = [
    {"instruction": "Translate to French.", "input": "Good morning", "output": "Bonjour"},
    {"instruction": "Give a synonym for happy.", "input": "", "output": "Glad."},
]
CHAT = [
    {"id": "c1", "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hi."},
                              {"role": "assistant", "content": "Hi!"}]},
    {"id": "c2", "messages": [{"role": "user", "content": "Count to three."}]},
]
PLAIN = [{"id": 7, "prompt": "Why is the sky blue?", "response": "Rayleigh scattering."}, {"prompt": "Name a fruit."}]

EXPECTED = {
    "dolly": [Example("row-0", [{"role": "user", "content": "Who started the festival?\n\nContext:\nA baker started it sixty years ago."}], "A local baker."),
              Example("row-1", [{"role": "user", "content": "Name a primary color."}], "Red.")],
    "alpaca": [Example("row-0", [{"role": "user", "content": "Translate to French.\n\nInput:\nGood morning"}], "Bonjour"),
               Example("row-1", [{"role": "user", "content": "Give a synonym for happy."}], "Glad.")],
    "chat": [Example("c1", [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hi."}], "Hi!"),
             Example("c2", [{"role": "user", "content": "Count to three."}], None)],
    "plain": [Example("7", [{"role": "user", "content": "Why is the sky blue?"}], "Rayleigh scattering."),
              Example("row-1", [{"role": "user", "content": "Name a fruit."}], None)],
}
ROWS = {"dolly": DOLLY, "alpaca": ALPACA, "chat": CHAT, "plain": PLAIN}


def write(path: Path, rows: list[dict]) -> Path:
    if path.suffix == ".parquet":
        datasets.Dataset.from_list(rows).to_parquet(str(path))
    elif path.suffix == ".json":
        path.write_text(json.dumps(rows, indent=1), encoding="utf-8")
    else:
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".parquet"])
@pytest.mark.parametrize("fmt", list(ROWS))
def test_every_format_from_every_file_type(tmp_path, fmt, suffix):
    rows = ROWS[fmt]
    if suffix == ".parquet" and fmt == "plain":
        rows = [dict(r, id=str(r.get("id") or "")) for r in rows]  # a Parquet column holds one type
    assert load_examples(write(tmp_path / f"data{suffix}", rows)) == EXPECTED[fmt]


def test_json_file_may_hold_json_lines(tmp_path):
    path = tmp_path / "lines.json"
    path.write_text("".join(json.dumps(r) + "\n" for r in ALPACA), encoding="utf-8")
    assert load_examples(path) == EXPECTED["alpaca"]


def test_embedded_prompt_set_has_no_responses():
    examples = load_examples(None)
    assert len(examples) >= 100 and len({e.id for e in examples}) == len(examples)
    assert all(e.response is None and e.messages[-1]["role"] == "user" and e.messages[-1]["content"] for e in examples)


@pytest.mark.parametrize("suffix, where", [(".jsonl", "line 2"), (".json", "row index 1"), (".parquet", "row index 1")])
def test_missing_field_names_field_row_and_file(tmp_path, suffix, where):
    rows = [DOLLY[0], {"instruction": "No answer here.", "context": "", "response": None}]
    path = write(tmp_path / f"dolly{suffix}", rows)
    with pytest.raises(ConfigError) as err:
        load_examples(path)
    assert str(err.value).startswith(f"{path} {where}: missing field 'response'")
    assert "other rows of this file have answers" in str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("rows, message", [
    ([{"prompt": "a", "response": 5}], "line 1: field 'response' must be a string, got int 5"),
    ([{"prompt": "a"}, {"prompt": "   "}], "line 2: field 'prompt' is empty"),
    ([{"messages": "hello"}], "line 1: field 'messages' must be a list of {role, content} objects, got str"),
    ([{"messages": [{"role": "user"}]}], "line 1: field 'messages' must be a non-empty list of {role, content}"),
    ([{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "assistant", "content": "c"}]}],
     "line 1: field 'messages' must end with a user turn"),
    ([{"messages": [{"role": "tool", "content": "a"}]}], "line 1: messages[0] has role 'tool'"),
    ([{"id": "x", "prompt": "a"}, {"id": "x", "prompt": "b"}], "line 2: id 'x' repeats the id at"),
    ([{"instruction": "a", "input": "b", "response": "c"}], "line 1: fields instruction, response, input belong to different formats"),
])
def test_wrong_values_are_named(tmp_path, rows, message):
    path = write(tmp_path / "bad.jsonl", rows)
    with pytest.raises(ConfigError) as err:
        load_examples(path)
    assert f"{path} {message}" in str(err.value)


def test_mixed_formats_are_refused_naming_both(tmp_path):
    path = write(tmp_path / "mixed.jsonl", [PLAIN[0], DOLLY[0]])
    with pytest.raises(ConfigError) as err:
        load_examples(path)
    assert f"{path}: mixes formats (plain at {path} line 1; Dolly at {path} line 2)" in str(err.value)


def test_unknown_format_lists_accepted_columns(tmp_path):
    path = write(tmp_path / "q.jsonl", [{"question": "?", "answer": "!"}])
    with pytest.raises(ConfigError) as err:
        load_examples(path)
    text = str(err.value)
    assert "unknown format, columns ['answer', 'question']" in text
    assert "Dolly {instruction, context?, response?}" in text and "Alpaca {instruction, input?, output?}" in text
    assert "chat {messages}" in text and "plain {prompt, response?}" in text


@pytest.mark.parametrize("name, content, message", [
    ("e.jsonl", "\n \n", "empty"),
    ("e.json", "[]", "empty"),
    ("broken.json", '[{"prompt": "a"},\n {"prompt": ]', "line 2: malformed JSON"),
    ("scalar.json", '[{"prompt": "a"}, 3]', "row index 1: expected a JSON object, got int"),
    ("data.csv", "prompt\nhi\n", "unsupported file type '.csv'"),
])
def test_unreadable_files(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        load_examples(path)
    assert str(path) in str(err.value) and message in str(err.value)


def test_empty_parquet_and_missing_file(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    empty = tmp_path / "empty.parquet"
    pq.write_table(pa.table({"prompt": pa.array([], pa.string())}), empty)
    with pytest.raises(ConfigError, match="empty"):
        load_examples(empty)
    with pytest.raises(ConfigError, match="not found"):
        load_examples(tmp_path / "nope.jsonl")


def test_split_is_deterministic_disjoint_and_complete():
    examples = [Example(f"e{i}", [{"role": "user", "content": str(i)}], None) for i in range(50)]
    train, val = split_validation(examples, 0.2, None, seed=3)
    assert (len(train), len(val)) == (40, 10)
    assert {e.id for e in train}.isdisjoint(e.id for e in val) and len(train) + len(val) == 50
    assert split_validation(examples, 0.2, None, seed=3) == (train, val)
    assert split_validation(examples, 0.2, None, seed=4)[1] != val
    assert [e.id for e in val] != [f"e{i}" for i in range(10)]  # shuffled, not the head of the file
    assert len(split_validation(examples, 0.2, 7, seed=3)[1]) == 7
    train2, val2 = split_validation(examples[:2], 0.01, None, seed=0)
    assert len(train2) == len(val2) == 1


@pytest.mark.parametrize("n, fraction, size, message", [
    (1, 0.1, None, "at least 2 examples"), (10, 0.0, None, "val_fraction=0.0"), (10, 0.1, 10, "val_size=10"),
])
def test_split_errors(n, fraction, size, message):
    examples = [Example(f"e{i}", [{"role": "user", "content": "x"}], None) for i in range(n)]
    with pytest.raises(ConfigError, match=message):
        split_validation(examples, fraction, size, seed=0)


def test_render_opens_the_assistant_turn(tiny_tokenizer):
    example = EXPECTED["chat"][0]
    text = render_prompt(tiny_tokenizer, example)
    assert text.endswith("<|im_start|>assistant\n")
    assert "Be brief." in text and "Say hi." in text and "Hi!" not in text
    ids = prompt_token_ids(tiny_tokenizer, example)
    assert ids == tiny_tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tiny_tokenizer.decode(ids) == text


def test_reference_cache_round_trip(tmp_path, monkeypatch):
    monkeypatch.setenv("STUDYHALL_CACHE", str(tmp_path / "cache"))
    examples = EXPECTED["plain"]
    digest = examples_digest(examples)
    assert digest == examples_digest([Example(e.id, e.messages, "other answer") for e in examples])  # references do not count
    assert digest != examples_digest(examples[:1])
    path = references_cache_path("embedded:teacher", digest, 128)
    assert path.parent == tmp_path / "cache" / "references" and path != references_cache_path("embedded:teacher", digest, 64)
    assert load_references(path) is None
    save_references(path, {"7": "Because of scattering.", "row-1": "An apple."})
    assert load_references(path) == {"7": "Because of scattering.", "row-1": "An apple."}
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp file left behind
    path.write_text('{"7": ', encoding="utf-8")
    assert load_references(path) is None  # a damaged cache is rebuilt, not trusted


@pytest.mark.parametrize("rows", [
    [{"instruction": "Name a primary color."}, {"instruction": "What do bees make?", "context": "About insects."}],
    [{"instruction": "Name a primary color."}, {"instruction": "Translate to French.", "input": "Good morning"}],
    [{"instruction": "Name a primary color."}, {"instruction": "What do bees make?"}],
], ids=["dolly-without-responses", "alpaca-without-outputs", "instruction-only"])
def test_prompt_only_dolly_and_alpaca_files_are_prompts_for_the_teacher_to_answer(tmp_path, rows):
    examples = load_examples(write(tmp_path / "prompts.jsonl", rows))
    assert [e.response for e in examples] == [None, None]
    assert examples[0].messages == [{"role": "user", "content": "Name a primary color."}]
    label = next(iter(set(rows[1]) - {"instruction"}), None)
    expected = rows[1]["instruction"] + (f"\n\n{label.capitalize()}:\n{rows[1][label]}" if label else "")
    assert examples[1].messages == [{"role": "user", "content": expected}]
