"""The GKT app holds to its own /openapi.json: schemathesis, every check, against a live tiny app on 127.0.0.1.

Bounded: max_tokens_limit=4 keeps each generated request to a few tokens; the coverage phase's
boundary cases plus a fixed number of fuzzed cases per operation (~640 in all, ~45 s on 2 busy cores);
a time box stops the run if it takes far longer. Derandomized with a fixed seed, so a failure replays:
the same cases come in the same order on every run (the failing request's curl line is in the message).
Not schemathesis's own max-time: with it, fuzzing repeats until the time is spent, so the cases would
depend on the machine's speed.
"""
import json
import time

import pytest
import schemathesis
from gkt_helpers import MODEL, http, start_app
from schemathesis.engine import Status, StopReason, events, from_schema

pytestmark = pytest.mark.slow
KEY = "contract-key"
SEED = 11  # with deterministic generation, the cases do not depend on it; kept fixed so nothing random can creep in
LIMIT = 4  # serve.max_tokens_limit: every max_tokens and guidance_tokens the schema allows is cheap
CASES_PER_OPERATION = 15  # fuzzing-phase examples for each operation and mode (valid, invalid), besides the coverage phase's
TIME_BOX_S = 150


@pytest.fixture(scope="module")
def url(serve_shutdown):
    return start_app([f"serve.max_tokens_limit={LIMIT}", f"serve.default_max_tokens={LIMIT}", "serve.guidance_tokens=2",
                      "serve.guide.path=tiny:teacher",  # the contract is the same with the cheaper tiny teacher: 3x faster
                      "serve.api_key_env=STUDYHALL_CONTRACT_KEY"], env={"STUDYHALL_CONTRACT_KEY": KEY})


def _schema(url: str):
    config = schemathesis.Config.from_dict({
        "seed": SEED,
        "cache": {"enabled": False},  # nothing written to the work tree
        "headers": {"Authorization": f"Bearer {KEY}"},
        "request-timeout": 60,
        "checks": {"enabled": True},  # all of them
        "generation": {"max-examples": CASES_PER_OPERATION, "deterministic": True, "database": "none"},
        # Cases made from the server's answers would change with them (ids, timings): off, so a run replays.
        "phases": {"coverage": {"extra-data-sources": {"responses": False}},
                   "fuzzing": {"extra-data-sources": {"responses": False}, "error-feedback": {"enabled": False}}},
    })
    return schemathesis.openapi.from_url(f"{url}/openapi.json", config=config, headers={"Authorization": f"Bearer {KEY}"})


def test_schema_declares_every_status_and_the_served_names(url):
    status, text = http(f"{url}/openapi.json", key=KEY)
    schema = json.loads(text)
    assert status == 200 and schema["security"] == [{"bearer": []}]
    for path, operations in schema["paths"].items():
        for operation in operations.values():
            declared = set(operation["responses"])
            assert "422" not in declared and {"200", "405"} <= declared, path
            assert ("401" in declared) == (path != "/healthz"), path
            assert "Allow" in operation["responses"]["405"]["headers"]
            if operation.get("requestBody"):
                assert {"400", "404"} <= declared, path
    bodies = schema["components"]["schemas"]
    assert bodies["CompletionRequest"]["properties"]["model"]["enum"] == [MODEL]
    assert [ref["$ref"].rsplit("/", 1)[1] for ref in
            schema["paths"]["/v1/guidance"]["post"]["requestBody"]["content"]["application/json"]["schema"]["oneOf"]] == \
        ["GuidancePrompt", "GuidanceMessages"]
    assert {"minimum": 1, "maximum": LIMIT, "type": "integer"} in bodies["ChatRequest"]["properties"]["max_tokens"]["anyOf"]


def test_schemathesis_all_checks_find_nothing(url):
    failures, cases, tested, stop = [], 0, set(), None
    started = time.monotonic()
    run = from_schema(_schema(url)).execute()
    for event in run:
        if time.monotonic() - started > TIME_BOX_S:
            run.stop()  # the engine ends with StopReason.INTERRUPTED, which fails below
        if isinstance(event, events.ScenarioFinished):
            cases += len(event.recorder.cases)
            if event.status != Status.SKIP:
                tested.add(event.recorder.label)
            for checks in event.recorder.checks.values():
                for check in checks:
                    if check.status == Status.FAILURE and check.failure_info:
                        steps = check.failure_info.steps
                        failures.append(f"{check.failure_info.failure.title} ({check.name}): "
                                        f"{check.failure_info.failure.message} | {steps[-1].curl if steps else ''}")
        elif isinstance(event, (events.NonFatalError, events.FatalError)):
            failures.append(f"error: {getattr(event, 'info', None) or event.exception}")
        elif isinstance(event, events.EngineFinished):
            stop = event.stop_reason
            failures += [f"{f.title}: {f.message}" for f in event.failures]
    assert not failures, "\n".join(sorted(set(failures)))
    assert tested == {"GET /healthz", "GET /v1/models", "POST /v1/completions", "POST /v1/chat/completions", "POST /v1/guidance"}
    assert stop == StopReason.COMPLETED and cases >= 300, f"{stop} after {cases} cases in {time.monotonic() - started:.0f} s"
    status, _ = http(f"{url}/v1/completions", "POST", {"model": MODEL, "prompt": "Still there?"}, key=KEY)
    assert status == 200  # and the server kept serving
