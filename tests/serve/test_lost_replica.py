"""A model replica killed under load: its requests in flight get an OpenAI-style 503 with Retry-After
(not a hang, not a bare 500), Serve replaces the replica, and later requests succeed."""
import time
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest
import ray
from gkt_helpers import MODEL, start_app
from ray import serve

from serve.app import APP_NAME

pytestmark = pytest.mark.timeout(300)
RETRY_AFTER = 3


def _student():
    return serve.get_deployment_handle("StudentComplete", app_name=APP_NAME)


def test_a_killed_student_replica_fails_its_requests_with_503_and_is_replaced(serve_shutdown):
    url = start_app(["serve.guide.path=tiny:teacher", "serve.max_tokens_limit=1500", f"serve.retry_after_s={RETRY_AFTER}"])
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=120)

    def ask(i):  # long answers, so they are still being written when the replica dies
        try:
            out = client.completions.create(model=MODEL, prompt=f"Request {i}", max_tokens=1500,
                                            extra_body={"guidance_tokens": 2, "ignore_eos": True})
            return 200, out.usage.completion_tokens
        except openai.APIStatusError as err:
            return err.status_code, (err.response.headers.get("retry-after"), err.body)

    old = _student().stats.remote().result()["actor_name"]
    with ThreadPoolExecutor(4) as pool:
        answers = [pool.submit(ask, i) for i in range(4)]
        deadline = time.time() + 60
        while _student().stats.remote().result()["running"] < 2 and time.time() < deadline:
            time.sleep(0.2)
        ray.kill(ray.get_actor(old, namespace="serve"), no_restart=True)
        answers = [a.result(timeout=120) for a in answers]

    lost = [detail for status, detail in answers if status == 503]
    assert lost and all(status in (200, 503) for status, _ in answers)
    for retry_after, body in lost:
        assert retry_after == str(RETRY_AFTER)
        assert body["code"] == "replica_unavailable" and body["type"] == "server_error" and "retry" in body["message"]

    deadline, status = time.time() + 120, None
    while time.time() < deadline and status != 200:  # Serve starts a new replica; the next requests succeed
        status, detail = ask(99)
        if status != 200:
            time.sleep(1)
    assert status == 200 and detail == 1500
    assert _student().stats.remote().result()["actor_name"] != old
