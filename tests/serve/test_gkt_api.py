"""The GKT app over real HTTP on 127.0.0.1 (tiny preset): the official openai client, plain HTTP,
batching under concurrent load, the API key, and the bad-input suite."""
import json
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest
from gkt_helpers import MODEL, http, start_app

KEY = "test-key-123"
EXACT = {"ignore_eos": True}  # answers of exactly max_tokens, so token counts are known


@pytest.fixture(scope="module")
def url(serve_shutdown):
    return start_app(["serve.api_key_env=STUDYHALL_TEST_API_KEY"], env={"STUDYHALL_TEST_API_KEY": KEY})


@pytest.fixture(scope="module")
def client(url):
    return openai.OpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0, timeout=120)


def test_models_and_health(url, client):
    assert [m.id for m in client.models.list().data] == [MODEL]
    assert http(f"{url}/healthz") == (200, json.dumps({"status": "ok"}, separators=(",", ":")))


def test_completion_through_openai_client(client):
    out = client.completions.create(model=MODEL, prompt="The capital of France is", max_tokens=8,
                                    extra_body={"guidance_tokens": 3, **EXACT})
    gkt = out.model_extra["gkt"]
    assert (gkt["guidance_tokens"], gkt["student_tokens"]) == (3, 5)  # k from the teacher, the rest from the student
    assert gkt["guidance"] and out.choices[0].text.startswith(gkt["guidance"])
    assert out.usage.completion_tokens == 8 and out.usage.prompt_tokens > 0
    assert out.choices[0].finish_reason == "length"


def test_streamed_completion_through_openai_client(client):
    chunks = list(client.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=8, stream=True,
                                            stream_options={"include_usage": True}, extra_body={"guidance_tokens": 2, **EXACT}))
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    final = [c for c in chunks if c.choices and c.choices[0].finish_reason][-1]
    assert final.choices[0].finish_reason == "length"
    assert text.startswith(final.model_extra["gkt"]["guidance"]) and len(text) > len(final.model_extra["gkt"]["guidance"])
    assert chunks[-1].usage.completion_tokens == 8  # the usage chunk comes last


def test_chat_completion_through_openai_client(client):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a colour."}]
    out = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=6, extra_body={"guidance_tokens": 2, **EXACT})
    assert out.choices[0].message.role == "assistant"
    assert out.choices[0].message.content.startswith(out.model_extra["gkt"]["guidance"])
    assert out.usage.completion_tokens == 6
    chunks = list(client.chat.completions.create(model=MODEL, messages=messages, max_tokens=6, stream=True,
                                                 extra_body={"guidance_tokens": 2, **EXACT}))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks)
    assert chunks[-1].choices[0].finish_reason == "length" and chunks[-1].model_extra["gkt"]["student_tokens"] == 4


def test_plain_http_modes_and_sse(url):
    base = {"model": MODEL, "prompt": "Hello", "max_tokens": 5, **EXACT}
    teacher_alone = json.loads(http(f"{url}/v1/completions", "POST", {**base, "guidance_tokens": 50}, key=KEY)[1])["gkt"]
    student_alone = json.loads(http(f"{url}/v1/completions", "POST", {**base, "guidance_tokens": 0}, key=KEY)[1])["gkt"]
    assert (teacher_alone["guidance_tokens"], teacher_alone["student_tokens"]) == (5, 0)
    assert (student_alone["guidance_tokens"], student_alone["student_tokens"]) == (0, 5) and student_alone["guidance"] == ""
    status, text = http(f"{url}/v1/chat/completions", "POST",
                        {**{k: v for k, v in base.items() if k != "prompt"}, "messages": [{"role": "user", "content": "Hi"}],
                         "stream": True}, key=KEY)
    events = [line[len("data: "):] for line in text.splitlines() if line.startswith("data: ")]
    assert status == 200 and events[-1] == "[DONE]"
    assert json.loads(events[-2])["choices"][0]["finish_reason"] == "length"
    status, text = http(f"{url}/v1/guidance", "POST", {"model": MODEL, "prompt": "Hello", "guidance_tokens": 4}, key=KEY)
    guide = json.loads(text)
    assert status == 200 and guide["guidance_tokens"] <= 4 and guide["usage"]["completion_tokens"] == guide["guidance_tokens"]


def test_stop_string_cuts_the_answer(client):
    free = client.completions.create(model=MODEL, prompt="Stop test", max_tokens=8, temperature=0,
                                     extra_body={"guidance_tokens": 4, **EXACT}).choices[0].text
    stop = free[len(free) // 2:len(free) // 2 + 2]  # a piece from the middle of the greedy answer
    cut = client.completions.create(model=MODEL, prompt="Stop test", max_tokens=8, temperature=0, stop=[stop],
                                    extra_body={"guidance_tokens": 4}).choices[0]
    assert cut.finish_reason == "stop" and stop not in cut.text and free.startswith(cut.text)


def test_teacher_batches_concurrent_requests(client):
    def ask(i):
        return client.completions.create(model=MODEL, prompt=f"Request number {i}", max_tokens=4,
                                         extra_body={"guidance_tokens": 2, **EXACT}).model_extra["gkt"]

    with ThreadPoolExecutor(8) as pool:
        seen = list(pool.map(ask, range(8)))
    assert max(s["teacher_rows_per_forward"] for s in seen) > 1  # requests shared the teacher's forwards
    assert max(s["student_rows_per_forward"] for s in seen) > 1


def test_a_later_request_joins_the_running_batch(client):
    """Continuous batching: a request sent while another is being decoded shares its forwards at once
    (a batch that formed and ran to the end would leave it waiting, alone, with 1 row per forward).
    The first streams, so the second is sent once the first is surely decoding, however fast the machine."""
    first = client.completions.create(model=MODEL, prompt="A long answer about rivers", max_tokens=200, stream=True,
                                      extra_body={"guidance_tokens": 0, **EXACT})
    chunks = iter(first)
    started = next(chunks)
    late = client.completions.create(model=MODEL, prompt="A short one", max_tokens=20,
                                     extra_body={"guidance_tokens": 0, **EXACT}).model_extra["gkt"]
    rest = [c.choices[0].text for c in chunks if c.choices]
    assert late["student_rows_per_forward"] == 2.0  # every one of its forwards also carried the first request
    assert started.choices[0].text and len("".join(rest)) > 0  # and the first went on after it


def test_a_seed_gives_the_same_sampled_answer_whatever_runs_beside_it(client):
    def ask(i, seed=None):
        return client.completions.create(model=MODEL, prompt="Seeded" if seed else f"Noise {i}", max_tokens=8,
                                         temperature=1.0, seed=seed, extra_body={"guidance_tokens": 3, **EXACT}).choices[0].text

    alone = ask(0, seed=42)
    with ThreadPoolExecutor(4) as pool:
        crowd = [pool.submit(ask, i) for i in range(3)]
        beside = pool.submit(ask, 9, seed=42)
        [c.result() for c in crowd]
    assert beside.result() == alone and ask(0, seed=43) != alone


def _stats() -> dict:
    from cluster.bench.served_app import replica_stats
    return replica_stats()


def _grew(before: dict, after: dict, role: str) -> dict:
    b, a = before[role], after[role]
    return {"prefill_tokens": a["prefill_tokens"] - b["prefill_tokens"],
            **{k: a["prefix_cache"][k] - b["prefix_cache"][k] for k in ("lookups", "hits", "tokens_reused")}}


def test_the_prefix_cache_and_prefill_ahead_through_the_server(client):
    """The student prefills the prompt while the teacher writes the guidance, so the completion reuses
    all of it; the same request again costs the teacher no prefill at all, and answers the same."""
    messages = [{"role": "user", "content": "Explain in plain words why a shared system prompt should be computed "
                                            "once and then reused by every request that starts with it."}]

    def ask():
        return client.chat.completions.create(model=MODEL, messages=messages, max_tokens=8, temperature=0,
                                              extra_body={"guidance_tokens": 3, **EXACT}).choices[0].message.content

    before = _stats()
    first = ask()
    middle = _stats()
    second = ask()
    after = _stats()
    teacher, student = _grew(before, middle, "teacher"), _grew(before, middle, "student")
    prompt = teacher["prefill_tokens"] + teacher["tokens_reused"]  # the prompt's tokens less its pending one
    template = middle["teacher"]["prefix_cache"]["pinned_tokens"]
    assert teacher["hits"] == 1 and teacher["tokens_reused"] == template > 0  # a new prompt: the chat template only
    assert student["lookups"] == 2 and student["tokens_reused"] >= prompt  # ahead (template) + completion (the prompt)
    assert student["prefill_tokens"] <= prompt - template + 3 + 2  # the prompt once, the guidance, the seam
    again = _grew(middle, after, "teacher")
    assert again["prefill_tokens"] == 0 and again["tokens_reused"] == prompt and second == first


def test_api_key(url):
    body = {"model": MODEL, "prompt": "Hi", "max_tokens": 2}
    for key in (None, "wrong-key"):
        status, text = http(f"{url}/v1/completions", "POST", body, key=key)
        assert status == 401 and json.loads(text)["error"]["code"] == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{url}/v1", api_key="wrong-key", max_retries=0).models.list()
    assert http(f"{url}/v1/completions", "POST", body, key=KEY)[0] == 200


LONG = "word " * 3000  # past the 2048-token context of the tiny models
BAD_INPUT = [  # (what, path, body or raw bytes, expected status, expected param)
    ("malformed JSON", "/v1/completions", b'{"model": "studyhall-gkt", "prompt": ', 400, None),
    ("body not an object", "/v1/completions", [1, 2], 400, None),
    ("missing prompt", "/v1/completions", {"model": MODEL}, 400, "prompt"),
    ("missing model", "/v1/completions", {"prompt": "Hi"}, 400, "model"),
    ("prompt wrong type", "/v1/completions", {"model": MODEL, "prompt": 123}, 400, "prompt"),
    ("two prompts", "/v1/completions", {"model": MODEL, "prompt": ["a", "b"]}, 400, "prompt"),
    ("empty prompt", "/v1/completions", {"model": MODEL, "prompt": "  "}, 400, "prompt"),
    ("max_tokens as string", "/v1/completions", {"model": MODEL, "prompt": "Hi", "max_tokens": "8"}, 400, "max_tokens"),
    ("max_tokens zero", "/v1/completions", {"model": MODEL, "prompt": "Hi", "max_tokens": 0}, 400, "max_tokens"),
    ("max_tokens negative", "/v1/completions", {"model": MODEL, "prompt": "Hi", "max_tokens": -3}, 400, "max_tokens"),
    ("max_tokens above limit", "/v1/completions", {"model": MODEL, "prompt": "Hi", "max_tokens": 100000}, 400, "max_tokens"),
    ("negative k", "/v1/completions", {"model": MODEL, "prompt": "Hi", "guidance_tokens": -1}, 400, "guidance_tokens"),
    ("temperature out of range", "/v1/completions", {"model": MODEL, "prompt": "Hi", "temperature": 7}, 400, "temperature"),
    ("top_p zero", "/v1/completions", {"model": MODEL, "prompt": "Hi", "top_p": 0}, 400, "top_p"),
    ("n=2", "/v1/completions", {"model": MODEL, "prompt": "Hi", "n": 2}, 400, "n"),
    ("stream not a bool", "/v1/completions", {"model": MODEL, "prompt": "Hi", "stream": "yes"}, 400, "stream"),
    ("five stop strings", "/v1/completions", {"model": MODEL, "prompt": "Hi", "stop": list("abcde")}, 400, "stop"),
    ("unsupported field", "/v1/completions", {"model": MODEL, "prompt": "Hi", "logprobs": 5}, 400, "logprobs"),
    ("prompt longer than the context", "/v1/completions", {"model": MODEL, "prompt": LONG}, 400, "prompt"),
    ("unknown model", "/v1/completions", {"model": "gpt-4", "prompt": "Hi"}, 404, "model"),
    ("no messages", "/v1/chat/completions", {"model": MODEL, "messages": []}, 400, "messages"),
    ("message without role", "/v1/chat/completions", {"model": MODEL, "messages": [{"content": "Hi"}]}, 400, "messages.0.role"),
    ("unknown role", "/v1/chat/completions", {"model": MODEL, "messages": [{"role": "robot", "content": "Hi"}]}, 400, "messages.0.role"),
    ("chat prompt too long", "/v1/chat/completions", {"model": MODEL, "messages": [{"role": "user", "content": LONG}]}, 400, "messages"),
    ("guidance with neither prompt nor messages", "/v1/guidance", {"model": MODEL}, 400, "prompt"),
    ("guidance k zero", "/v1/guidance", {"model": MODEL, "prompt": "Hi", "guidance_tokens": 0}, 400, "guidance_tokens"),
    ("unknown route", "/v1/embeddings", {"model": MODEL, "input": "Hi"}, 404, None),
]


@pytest.mark.parametrize("what,path,body,status,param", BAD_INPUT, ids=[b[0] for b in BAD_INPUT])
def test_bad_input_is_a_4xx_and_the_server_keeps_serving(url, what, path, body, status, param):
    raw = body if isinstance(body, bytes) else None
    got, text = http(f"{url}{path}", "POST", None if raw else body, raw=raw, key=KEY)
    error = json.loads(text)["error"]
    assert got == status, (what, text)
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    assert error["param"] == param, (what, error)
    ok, answer = http(f"{url}/v1/completions", "POST", {"model": MODEL, "prompt": "Still there?", "max_tokens": 2}, key=KEY)
    assert ok == 200 and json.loads(answer)["choices"][0]["finish_reason"] in ("length", "stop")
