"""`studyhall retokenize`: a model on its byte-level BPE cut to the first N ids, embedding rows kept."""
import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from actors.models import load_tokenizer
from actors.retokenize import retokenized
from actors.tiny import build_tiny
from cluster.cli import main

TEXT = "Explain why bread goes stale, and what you can do to keep it fresh for longer. Café!"


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny_student")
    tokenizer = load_tokenizer("tiny:student")
    build_tiny("student", tokenizer, torch.float32).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_the_cut_vocabulary_splits_text_into_its_first_ids_and_keeps_their_rows(source, tmp_path):
    done = retokenized(str(source), 1024, tmp_path / "cut")
    assert done["vocab_before"] == 49152 and done["vocab_after"] == 1024
    before, after = AutoTokenizer.from_pretrained(source), AutoTokenizer.from_pretrained(tmp_path / "cut")
    ids = after(TEXT, add_special_tokens=False)["input_ids"]
    assert max(ids) < 1024 and len(ids) > len(before(TEXT, add_special_tokens=False)["input_ids"])
    assert after.decode(ids) == TEXT  # byte-level: every text still has a tokenization
    assert after.eos_token == before.eos_token and after.chat_template == before.chat_template
    old = AutoModelForCausalLM.from_pretrained(source)
    new = AutoModelForCausalLM.from_pretrained(tmp_path / "cut")
    assert new.config.vocab_size == 1024
    assert torch.equal(new.get_input_embeddings().weight, old.get_input_embeddings().weight[:1024])
    assert torch.equal(new.get_output_embeddings().weight, old.get_output_embeddings().weight[:1024])
    assert json.loads((tmp_path / "cut" / "tokenizer.json").read_text())["model"]["merges"]


def test_bad_requests_are_refused_in_one_line(source, tmp_path, capsys):
    assert main(["retokenize", "--model", str(source), "--vocab", "5", "--out", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--vocab 5" in err and "keep at least 17 ids" in err
    assert main(["retokenize", "--model", str(source), "--vocab", "60000", "--out", str(tmp_path / "b")]) == 2
    assert "must be below the tokenizer's 49152 ids" in capsys.readouterr().err
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "x").write_text("")
    assert main(["retokenize", "--model", str(source), "--vocab", "1024", "--out", str(tmp_path / "c")]) == 2
    assert "exists and is not empty" in capsys.readouterr().err
