"""The HTTP ingress of GKT serving: OpenAI-compatible routes on FastAPI, in front of the two deployments.

  POST /v1/completions, /v1/chat/completions   teacher guidance (k tokens), then the student streams the rest
  POST /v1/guidance                            the teacher's guidance alone
  GET  /v1/models, /healthz

Every client mistake is answered here with a 4xx and an OpenAI-style error body, before any model
works on it: the error handlers below turn FastAPI's validation errors (malformed JSON, missing or
mistyped fields) and our own checks (model name, max_tokens, context length) into that body.
Each route declares every status it can return (serve/contract.py); `/openapi.json` is that contract.
"""
import contextlib
import hmac
import json
import os
import time

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from ray import serve
from ray.exceptions import RayActorError
from ray.serve.exceptions import BackPressureError
from ray.serve.handle import DeploymentHandle
from ray.util import metrics
from starlette.exceptions import HTTPException as StarletteHTTPException

from actors.models import context_length, load_tokenizer, model_config
from serve import contract
from serve.decode_loop import LoopStopped
from serve.protocol import (
    NOT_BLANK,
    PROMPT_XOR_MESSAGES,
    ApiError,
    ChatRequest,
    CompletionRequest,
    GuidanceRequest,
    chunk_body,
    completion_body,
    error_body,
    new_id,
    usage,
    usage_chunk,
)
from studyhall.config import ServeConfig
from studyhall.prompts import render

LATENCY_BUCKETS_MS = [5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000]
UNAVAILABLE = "a model replica was lost while answering, or every replica is full"
OPEN_PATHS = ("/healthz",)  # answered without the API key (load balancer probes)

app = FastAPI(title="studyhall GKT", description="Teacher guidance + student completion, OpenAI-compatible.")


# ---- errors: every one leaves as {"error": {message, type, param, code}} ----

@app.exception_handler(ApiError)
async def _api_error(request: Request, err: ApiError):
    return JSONResponse(err.body(), status_code=err.status)


@app.exception_handler(RequestValidationError)
async def _validation_error(request: Request, err: RequestValidationError):
    # A union field fails once per member; the member that took the value's type says what is wrong with it.
    errors = sorted(err.errors(), key=lambda e: e["type"].endswith("_type"))
    return JSONResponse(_describe(errors[0]).body(), status_code=400)


@app.exception_handler(StarletteHTTPException)
async def _http_error(request: Request, err: StarletteHTTPException):
    kind = "not_found_error" if err.status_code == 404 else "invalid_request_error"
    # err.headers carries the 405's `Allow` (the methods the route takes)
    return JSONResponse(error_body(f"{request.method} {request.url.path}: {err.detail}", kind), status_code=err.status_code,
                        headers=err.headers)


class ReplicaUnavailable(Exception):
    """A model replica died or is restarting (RayActorError), every replica's queue is full
    (BackPressureError), or a replica's decode loop stopped (LoopStopped). Raised as our own type:
    Serve installs its own plain-text handler for BackPressureError on the app."""


UNAVAILABLE_ERRORS = (RayActorError, BackPressureError, LoopStopped)


@contextlib.contextmanager
def _replicas_answer():
    """Around calls to the model deployments: their unavailability becomes a 503 (ReplicaUnavailable)."""
    try:
        yield
    except UNAVAILABLE_ERRORS as err:
        raise ReplicaUnavailable(type(err).__name__) from err


@app.exception_handler(ReplicaUnavailable)
async def _unavailable(request: Request, err: ReplicaUnavailable):
    retry = request.app.state.retry_after_s
    return JSONResponse(error_body(f"{UNAVAILABLE}: {err}; retry in {retry} s", "server_error", None,
                                   "replica_unavailable"), status_code=503, headers={"Retry-After": str(retry)})


@app.exception_handler(Exception)
async def _server_error(request: Request, err: Exception):  # a bug or a dead replica, never the client's doing
    return JSONResponse(error_body(f"internal error: {type(err).__name__}: {err}", "server_error"), status_code=500)


def _describe(e: dict) -> ApiError:
    """One pydantic/FastAPI validation error as one line naming the field."""
    if e["type"] == "json_invalid":
        return ApiError(400, f"malformed JSON body: {e.get('ctx', {}).get('error', e['msg'])}", None, "invalid_json")
    if e["type"] == "prompt_xor_messages":
        return ApiError(400, PROMPT_XOR_MESSAGES, "prompt", "invalid_value")
    path = [str(p) for p in e["loc"][1:] if not _is_type_tag(p)]  # drop "body" and union-member tags
    param = ".".join(path) or None
    if e["type"] == "extra_forbidden":
        return ApiError(400, f"unsupported field {param!r}: this server does not implement it", param, "unsupported_field")
    if e["type"] == "missing":
        return ApiError(400, f"missing required field {param!r}" if param else "missing JSON body", param, "missing_field")
    if not path:
        return ApiError(400, f"request body: {e['msg']}", None, "invalid_body")
    if e["type"] == "string_pattern_mismatch" and e.get("ctx", {}).get("pattern") == NOT_BLANK:
        return ApiError(400, f"{param}: the prompt is empty or only whitespace", param, "invalid_value")
    return ApiError(400, f"{param}: {e['msg']} (got {_short(e.get('input'))})", param, "invalid_value")


def _is_type_tag(part) -> bool:
    """Pydantic's names for union members in an error's location ("list[str]", "constrained-str",
    "guidance[prompt]"); field names have neither brackets nor dashes."""
    return isinstance(part, str) and ("[" in part or "-" in part or part in ("str", "int", "float", "bool"))


def _short(value) -> str:
    text = json.dumps(value) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


# ---- API key and metrics, around every request ----

@app.middleware("http")
async def _guard(request: Request, call_next):
    state = request.app.state
    started = time.perf_counter()
    key = getattr(state, "api_key", None)
    if key and request.url.path not in OPEN_PATHS:
        given = request.headers.get("authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {key}".encode()):
            response = JSONResponse(error_body("missing or wrong API key: send 'Authorization: Bearer <key>'",
                                               "invalid_request_error", None, "invalid_api_key"), status_code=401,
                                    headers={"WWW-Authenticate": "Bearer"})
        else:
            response = await call_next(request)
    else:
        response = await call_next(request)
    if hasattr(state, "requests"):
        tags = {"route": request.url.path if request.url.path in _ROUTES else "other"}
        state.requests.inc(tags={**tags, "status": str(response.status_code)})
        state.latency.observe(1000 * (time.perf_counter() - started), tags=tags)  # streams: until the first byte
    return response


_ROUTES = ("/v1/completions", "/v1/chat/completions", "/v1/guidance", "/v1/models", "/healthz")


async def _chain(first, rest):
    yield first
    async for item in rest:
        yield item


def _event(payload: dict) -> str:
    return f"data: {json.dumps(payload)}\n\n"


# Everything the class uses must be defined above it: serve.ingress pickles the class (and the globals it
# refers to) when it is decorated.


@serve.deployment
@serve.ingress(app)
class GKTServer:
    def __init__(self, teacher: DeploymentHandle, student: DeploymentHandle, cfg: ServeConfig):
        self.teacher, self.student, self.cfg = teacher, student, cfg
        self.models = {}  # role -> (tokenizer, context length), for checks before any model works
        for role, spec in (("teacher", cfg.guide), ("student", cfg.complete)):
            self.models[role] = (load_tokenizer(spec.path, spec.trust_remote_code), context_length(model_config(spec)))
        app.state.api_key = os.environ.get(cfg.api_key_env) or None
        app.state.retry_after_s = cfg.retry_after_s
        schema = contract.openapi(app, cfg, app.state.api_key is not None, OPEN_PATHS)
        app.openapi = lambda: schema  # what /openapi.json serves (FastAPI would derive one without the config)
        app.state.requests = metrics.Counter("studyhall_gkt_requests", description="HTTP requests by route and status",
                                             tag_keys=("route", "status"))
        app.state.latency = metrics.Histogram("studyhall_gkt_request_latency_ms", description="time to the response (streams: to the first byte)",
                                              boundaries=LATENCY_BUCKETS_MS, tag_keys=("route",))
        self.answer_latency = metrics.Histogram("studyhall_gkt_answer_latency_ms", description="time to the whole answer, by mode",
                                                boundaries=LATENCY_BUCKETS_MS, tag_keys=("mode",))
        self.guidance_tokens = metrics.Counter("studyhall_gkt_guidance_tokens", description="tokens the teacher wrote as guidance")

    # ---- routes ----

    @app.get("/healthz", responses=contract.responses(contract.Health))
    async def healthz(self) -> dict:
        return {"status": "ok"}

    @app.get("/v1/models", responses=contract.responses(contract.ModelList))
    async def models(self) -> dict:
        return {"object": "list", "data": [{
            "id": self.cfg.model_name, "object": "model", "created": 0, "owned_by": "studyhall",
            "teacher": self.cfg.guide.path, "student": self.cfg.complete.path,
            "default_guidance_tokens": self.cfg.guidance_tokens, "max_tokens_limit": self.cfg.max_tokens_limit}]}

    @app.post("/v1/completions", responses=contract.responses(contract.Completion, 400, 404, 503, stream=True))
    async def completions(self, body: CompletionRequest):
        return await self._respond(body, {"prompt": body.prompt_text()}, chat=False)

    @app.post("/v1/chat/completions", responses=contract.responses(contract.ChatCompletion, 400, 404, 503, stream=True))
    async def chat_completions(self, body: ChatRequest):
        return await self._respond(body, {"messages": [{"role": m.role, "content": m.text()} for m in body.messages]}, chat=True)

    @app.post("/v1/guidance", responses=contract.responses(contract.Guidance, 400, 404, 503))
    async def guidance(self, body: GuidanceRequest):
        source = {"prompt": body.prompt} if hasattr(body, "prompt") else {
            "messages": [{"role": m.role, "content": m.text()} for m in body.messages]}
        self._check_model(body.model)
        # The default k is the server's, kept within what this route takes, so a request without k always fits.
        default = min(max(self.cfg.guidance_tokens, 1), self.cfg.max_tokens_limit)
        k = default if body.guidance_tokens is None else body.guidance_tokens
        if not 1 <= k <= self.cfg.max_tokens_limit:
            raise ApiError(400, f"guidance_tokens: must be in [1, {self.cfg.max_tokens_limit}], got {k}", "guidance_tokens", "invalid_value")
        prompt_tokens = self._check_prompt(source, "teacher", k)
        with _replicas_answer():
            out = await self.teacher.guide.remote({**source, "max_new": k, "temperature": body.temperature,
                                                   "top_p": body.top_p, "seed": body.seed, "stop": body.stop_list()})
        self.guidance_tokens.inc(out["tokens"])
        return {"id": new_id("guide"), "object": "guidance", "created": int(time.time()), "model": self.cfg.model_name,
                "guidance": out["text"], "guidance_tokens": out["tokens"], "finish_reason": out["finish_reason"],
                "teacher_rows_per_forward": out["rows_per_forward"], "usage": usage(prompt_tokens, out["tokens"])}

    # ---- checks ----

    def _check_model(self, name: str) -> None:
        if name != self.cfg.model_name:
            raise ApiError(404, f"model {name!r} does not exist; this server serves {self.cfg.model_name!r} (GET /v1/models)",
                           "model", "model_not_found")

    def _check_prompt(self, source: dict, role: str, new_tokens: int) -> int:
        """The prompt's length in this role's tokens; 400 when it and new_tokens do not fit the context."""
        tokenizer, context = self.models[role]
        text = render(tokenizer, source["messages"]) if "messages" in source else source["prompt"]
        if not text.strip():
            raise ApiError(400, "the prompt is empty", "messages" if "messages" in source else "prompt", "invalid_value")
        n = len(tokenizer(text, add_special_tokens="messages" not in source)["input_ids"])
        if n + new_tokens > context:
            raise ApiError(400, f"this model's maximum context length is {context} tokens; the prompt is {n} tokens "
                                f"({role}'s tokenizer) and {new_tokens} more were asked for",
                           "messages" if "messages" in source else "prompt", "context_length_exceeded")
        return n

    def _plan(self, body, source: dict, chat: bool) -> tuple[dict, int, int, int]:
        """(job, max_tokens, k, prompt tokens) for a generation request, or an ApiError."""
        self._check_model(body.model)
        for name in ("max_tokens", "max_completion_tokens") if chat else ("max_tokens",):  # both, as the schema says
            value = getattr(body, name)
            if value is not None and not 1 <= value <= self.cfg.max_tokens_limit:
                raise ApiError(400, f"{name}: must be in [1, {self.cfg.max_tokens_limit}], got {value}", name, "invalid_value")
        max_tokens = body.max_completion_tokens if chat and body.max_completion_tokens is not None else body.max_tokens
        max_tokens = self.cfg.default_max_tokens if max_tokens is None else max_tokens
        k = self.cfg.guidance_tokens if body.guidance_tokens is None else body.guidance_tokens
        k = min(k, max_tokens)
        prompt_tokens = 0
        if k > 0:
            prompt_tokens = self._check_prompt(source, "teacher", k)
        if k < max_tokens:
            prompt_tokens = self._check_prompt(source, "student", max_tokens)
        job = {**source, "temperature": body.temperature, "top_p": body.top_p, "seed": body.seed, "stop": body.stop_list(),
               "ignore_eos": body.ignore_eos, "stream": body.stream}
        return job, max_tokens, k, prompt_tokens

    # ---- generation ----

    async def _respond(self, body, source: dict, chat: bool):
        job, max_tokens, k, prompt_tokens = self._plan(body, source, chat)
        rid = new_id("chatcmpl" if chat else "cmpl")
        name = self.cfg.model_name
        pieces = self._answer(job, max_tokens, k)
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            with _replicas_answer():
                first = await anext(pieces)  # before the headers: a replica lost until here is still a 503
            return StreamingResponse(self._sse(rid, chat, _chain(first, pieces), prompt_tokens, include_usage),
                                     media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        text, info = "", {}
        with _replicas_answer():
            async for piece in pieces:
                if isinstance(piece, str):
                    text += piece
                else:
                    info = piece
        finish, completion_tokens = info.pop("finish_reason"), info.pop("completion_tokens")
        return completion_body(rid, name, chat, text, finish, usage(prompt_tokens, completion_tokens), info)

    async def _sse(self, rid, chat, pieces, prompt_tokens, include_usage):
        name, first = self.cfg.model_name, True
        try:
            async for piece in pieces:
                if isinstance(piece, str):
                    yield _event(chunk_body(rid, name, chat, piece, first=first))
                    first = False
                else:
                    finish, completion_tokens = piece.pop("finish_reason"), piece.pop("completion_tokens")
                    yield _event(chunk_body(rid, name, chat, None, finish, first=first, gkt=piece))
                    if include_usage:
                        yield _event(usage_chunk(rid, name, chat, usage(prompt_tokens, completion_tokens)))
        except UNAVAILABLE_ERRORS as err:  # headers are gone: report in-band
            yield _event(error_body(f"{UNAVAILABLE}: {type(err).__name__}; retry", "server_error", None, "replica_unavailable"))
        except Exception as err:  # headers are gone already: report in-band, the way OpenAI streams do
            yield _event(error_body(f"internal error: {type(err).__name__}: {err}", "server_error"))
        yield "data: [DONE]\n\n"

    async def _answer(self, job: dict, max_tokens: int, k: int):
        """Text deltas (str), then one dict: finish_reason, the guidance and who wrote how many tokens."""
        started = time.perf_counter()
        info = {"guidance": "", "guidance_tokens": 0, "student_tokens": 0, "teacher_rows_per_forward": 0.0,
                "student_rows_per_forward": 0.0}
        finish, ahead = None, None
        if 0 < k < max_tokens and self.cfg.prefill_ahead:
            ahead = self.student.prefill_ahead.remote(job)  # the student's prefill overlaps the teacher's guidance
        if k > 0:
            guide = await self.teacher.guide.remote({**job, "max_new": k})
            self.guidance_tokens.inc(guide["tokens"])
            info.update(guidance=guide["text"], guidance_tokens=guide["tokens"], teacher_rows_per_forward=guide["rows_per_forward"])
            finish = guide["finish_reason"] if (guide["finish_reason"] == "stop" or guide["tokens"] >= max_tokens) else None
            if guide["text"]:
                yield guide["text"]
        if finish is None:
            stream = self.student.options(stream=True).complete.remote(
                {**job, "guidance": info["guidance"], "max_new": max_tokens - info["guidance_tokens"]})
            async for chunk in stream:
                if chunk["text"]:
                    yield chunk["text"]
                if "finish_reason" in chunk:
                    finish = chunk["finish_reason"]
                    info.update(student_tokens=chunk["tokens"], student_rows_per_forward=chunk["rows_per_forward"])
        if ahead is not None:
            with contextlib.suppress(*UNAVAILABLE_ERRORS):  # only a saving: a lost replica's answer is the student's own call
                await ahead
        mode = "student" if k == 0 else "teacher" if k >= max_tokens else "gkt"
        self.answer_latency.observe(1000 * (time.perf_counter() - started), tags={"mode": mode})
        yield {**info, "finish_reason": finish or "length",
               "completion_tokens": info["guidance_tokens"] + info["student_tokens"]}

