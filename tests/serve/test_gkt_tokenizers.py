"""Guidance travels as text: a teacher on the SmolLM2 tokenizer guides a student on a tokenizer built here
(a byte-level BPE trained on the embedded prompts, with its own chat template and vocabulary)."""
import json

import pytest
import torch
from gkt_helpers import MODEL, http, start_app
from other_tokenizer import build_other_student
from transformers import LlamaForCausalLM

from actors.models import load_tokenizer

pytestmark = pytest.mark.slow
@pytest.fixture(scope="module")
def other_student(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bpe_student")
    return folder, build_other_student(folder)


@pytest.fixture(scope="module")
def url(serve_shutdown, other_student):
    folder, _ = other_student
    return start_app(["serve.guide.path=tiny:student", f"serve.complete.path={folder}"])


def test_student_on_another_tokenizer_continues_the_guidance_text(url, other_student):
    folder, student_tok = other_student
    teacher_tok = load_tokenizer("tiny:student")
    assert len(student_tok) == 600 != len(teacher_tok)  # truly different vocabularies
    messages = [{"role": "user", "content": "Write a short poem about rivers."}]
    status, text = http(f"{url}/v1/chat/completions", "POST", {"model": MODEL, "messages": messages, "max_tokens": 10,
                                                               "guidance_tokens": 4, "temperature": 0, "ignore_eos": True})
    assert status == 200, text
    body = json.loads(text)
    gkt, answer = body["gkt"], body["choices"][0]["message"]["content"]
    assert gkt["guidance_tokens"] == 4 and gkt["student_tokens"] == 6 and answer.startswith(gkt["guidance"])
    # The student read prompt + guidance as text through its own tokenizer and chat template: greedy
    # decoding of the same input in this process gives the same continuation.
    model = LlamaForCausalLM.from_pretrained(folder).eval()
    ids = student_tok(student_tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False) + gkt["guidance"],
                      add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=6, do_sample=False, pad_token_id=student_tok.pad_token_id,
                             eos_token_id=None)
    expected = student_tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
    assert answer == gkt["guidance"] + expected
