"""The OpenAPI contract of the GKT API: every status each route can return, with its body schema.

FastAPI derives the request schemas from serve/protocol.py. This module adds what it cannot derive:
- the responses of each route (`responses(...)`, given to the route decorators in serve/ingress.py):
  200 with its body (chat and completions: JSON, or server-sent events when `stream` is true), and
  the errors, each with the OpenAI-style error body: 400 (a body the schema rejects, or a prompt
  that does not fit the context), 404 (a model this server does not serve) and 405 (a method the
  route does not take; the `Allow` header lists the ones it does);
- the parts that come from the running config (`openapi(...)`, at the ingress replica's start):
  `model` as the enum of the served names, the maxima of `max_tokens` and of `guidance_tokens`,
  and, only when an API key is set, the bearer scheme and the 401 of every route behind it.
There is no 422: a body that fails validation is a 400, as OpenAI answers it, so the 422 that FastAPI
declares by default is taken out.
"""
from typing import Literal

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel

from studyhall.config import ServeConfig

# ---- response bodies (for the schema only: the routes build plain dicts, serve/protocol.py) ----


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorBody(BaseModel):
    error: ErrorDetail


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class GKTInfo(BaseModel):
    """Who wrote the answer: the teacher's guidance, then the student's tokens, and how many rows shared
    each model's forwards while it made them (continuous batching; 0 for a model that wrote nothing)."""
    guidance: str
    guidance_tokens: int
    student_tokens: int
    teacher_rows_per_forward: float
    student_rows_per_forward: float


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: None
    finish_reason: Literal["stop", "length"]


class Completion(BaseModel):
    id: str
    object: Literal["text_completion"]
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage
    gkt: GKTInfo


class AssistantMessage(BaseModel):
    role: Literal["assistant"]
    content: str


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    logprobs: None
    finish_reason: Literal["stop", "length"]


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage
    gkt: GKTInfo


class Guidance(BaseModel):
    id: str
    object: Literal["guidance"]
    created: int
    model: str
    guidance: str
    guidance_tokens: int
    finish_reason: Literal["stop", "length"]
    teacher_rows_per_forward: float
    usage: Usage


class ModelCard(BaseModel):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str
    teacher: str
    student: str
    default_guidance_tokens: int
    max_tokens_limit: int


class ModelList(BaseModel):
    object: Literal["list"]
    data: list[ModelCard]


class Health(BaseModel):
    status: Literal["ok"]


# ---- what each route declares ----

ERRORS = {
    400: "the body is not valid: malformed JSON, a missing, mistyped or unsupported field, a value out of range; "
         "or the prompt and the tokens asked for do not fit a model's context",
    401: "missing or wrong API key (only when the server has one)",
    404: "the model named is not served here (GET /v1/models)",
    405: "the route does not take this method",
    503: "a model replica was lost while answering, or every replica is full; retry after `Retry-After` seconds",
}
ALLOW = {"Allow": {"description": "the methods the route takes", "schema": {"type": "string"}}}
RETRY_AFTER = {"Retry-After": {"description": "seconds to wait before retrying", "schema": {"type": "string"}}}
BEARER = {"WWW-Authenticate": {"description": "the scheme to use: Bearer", "schema": {"type": "string"}}}
GUIDANCE_BODIES = ("GuidancePrompt", "GuidanceMessages")  # /v1/guidance's k is capped; completions' k is not (k >= max_tokens: the teacher alone)
STREAM = {"text/event-stream": {}}  # with "stream": true; each event is a JSON chunk, the last is `data: [DONE]`


def responses(ok: type[BaseModel], *errors: int, stream: bool = False) -> dict:
    """The `responses` of a route: 200 with `ok` (and event-stream when `stream`), then each error status."""
    declared: dict = {200: {"model": ok, **({"content": STREAM} if stream else {})}}
    for status in (*errors, 405):
        headers = {405: ALLOW, 503: RETRY_AFTER}.get(status)
        declared[status] = {"model": ErrorBody, "description": ERRORS[status], **({"headers": headers} if headers else {})}
    return declared


def openapi(app: FastAPI, cfg: ServeConfig, api_key: bool, open_paths: tuple[str, ...]) -> dict:
    """The schema as this server runs: served names, limits from config, and the API key if there is one."""
    schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    components = schema.setdefault("components", {})
    for name in ("HTTPValidationError", "ValidationError"):
        components.get("schemas", {}).pop(name, None)
    for path, operations in schema["paths"].items():
        for operation in operations.values():
            operation["responses"].pop("422", None)
            if api_key and path not in open_paths:
                operation["responses"]["401"] = {"description": ERRORS[401], "headers": BEARER,
                                                 "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}}
            elif api_key:
                operation["security"] = []  # open without the key (load balancer probes)
    if api_key:
        components["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
        schema["security"] = [{"bearer": []}]
    limits = {"max_tokens": cfg.max_tokens_limit, "max_completion_tokens": cfg.max_tokens_limit}
    for name, body in components.get("schemas", {}).items():
        properties = body.get("properties", {})
        if "model" in properties:
            properties["model"]["enum"] = [cfg.model_name]
        for field, maximum in {**limits, **({"guidance_tokens": cfg.max_tokens_limit} if name in GUIDANCE_BODIES else {})}.items():
            if field in properties:
                _set_maximum(properties[field], maximum)
    return schema


def _set_maximum(prop: dict, maximum: int) -> None:
    """`maximum` on the integer form of a property (`int | None` is an anyOf of integer and null)."""
    for form in prop.get("anyOf", [prop]):
        if form.get("type") == "integer":
            form["maximum"] = maximum
