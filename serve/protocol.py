"""The OpenAI-compatible request bodies, the error body, and the response bodies of the GKT API.

Requests are strict: a field of the wrong type or a field this server does not implement (
`logprobs`, `tools`, ...) is a 400 naming it, rather than being silently ignored.
The one extra field is `guidance_tokens` (k): 0 = the student alone, >= max_tokens = the teacher alone.

Every rule that JSON Schema can state lives in these types, so the OpenAPI schema FastAPI derives from
them is the rule the server applies (serve/contract.py adds the rules that come from config).
"""
import time
import uuid
from typing import Annotated, Literal, Union

from pydantic import BaseModel, BeforeValidator, ConfigDict, Discriminator, Field, Tag


class ApiError(Exception):
    """A client mistake, answered with an OpenAI-style error body and a 4xx status."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind

    def body(self) -> dict:
        return error_body(self.message, self.kind, self.param, self.code)


def error_body(message: str, kind: str, param: str | None = None, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


class _Strict(BaseModel):
    # python-re: patterns match as Python's `re` does, the engine schema-driven clients generate with.
    model_config = ConfigDict(strict=True, extra="forbid", regex_engine="python-re")


NOT_BLANK = r"\S"  # a prompt must have a character that is not whitespace
Prompt = Annotated[str, Field(pattern=NOT_BLANK)]


def _integral(value):
    """4.0 is an integer to JSON Schema (and to JavaScript clients); strict pydantic would refuse it."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


def Int(ge: int, le: int | None = None):
    """An integer field in [ge, le]: 4 or 4.0, never "4" or true. (The bounds go before the validator, or
    pydantic leaves them out of the JSON schema.)"""
    return Annotated[int, Field(ge=ge, le=le), BeforeValidator(_integral)]


class StreamOptions(_Strict):
    include_usage: bool = False


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class Message(_Strict):
    role: Literal["system", "user", "assistant", "developer"]
    content: str | list[TextPart]
    name: str | None = None

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class _Sampling(_Strict):
    model: str
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    stop: str | Annotated[list[str], Field(max_length=4)] | None = Field(None, description="up to 4 strings that end the answer")
    seed: Int(0, 2**32 - 1) | None = Field(None, description="the request's own random stream: the same seed gives "
                                                         "the same answer, whatever else the server is generating")
    guidance_tokens: Int(0) | None = Field(None, description="k: tokens the teacher writes first (default: serve.guidance_tokens)")
    user: str | None = None  # OpenAI's end-user tag; accepted, not used

    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)


class _Generation(_Sampling):
    max_tokens: Int(1) | None = None  # the maximum is serve.max_tokens_limit (serve/contract.py)
    n: Int(1, 1) = Field(1, description="one answer per request")
    stream: bool = False
    stream_options: StreamOptions | None = None
    ignore_eos: bool = False  # vLLM's extension: always generate max_tokens (benchmarks use it for equal lengths)


class CompletionRequest(_Generation):
    prompt: Prompt | Annotated[list[Prompt], Field(min_length=1, max_length=1)] = Field(
        description="one prompt per request: a string, or a list holding one string")

    def prompt_text(self) -> str:
        return self.prompt if isinstance(self.prompt, str) else self.prompt[0]


class ChatRequest(_Generation):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: Int(1) | None = None  # newer clients send this instead of max_tokens


class _Guidance(_Sampling):
    guidance_tokens: Int(1) | None = Field(None, description="k: tokens the teacher writes (default: serve.guidance_tokens, "
                                                                "within [1, serve.max_tokens_limit])")


class GuidancePrompt(_Guidance):
    prompt: Prompt


class GuidanceMessages(_Guidance):
    messages: list[Message] = Field(min_length=1)


def _prompt_or_messages(body) -> str | None:
    """Which body a /v1/guidance request is: the one of prompt and messages it has; None if it has both or neither."""
    if not isinstance(body, dict):
        return "guidance[prompt]"  # not an object: that member reports the type error
    given = [key for key in ("prompt", "messages") if key in body]
    return f"guidance[{given[0]}]" if len(given) == 1 else None


PROMPT_XOR_MESSAGES = "give exactly one of 'prompt' or 'messages'"
# POST /v1/guidance: the teacher's first k tokens alone, for students that run elsewhere. Exactly one of prompt and
# messages: two members that forbid each other's field, so the schema says it too (oneOf).
GuidanceRequest = Annotated[
    Union[Annotated[GuidancePrompt, Tag("guidance[prompt]")], Annotated[GuidanceMessages, Tag("guidance[messages]")]],
    Discriminator(_prompt_or_messages, custom_error_type="prompt_xor_messages", custom_error_message=PROMPT_XOR_MESSAGES)]


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def completion_body(rid: str, model: str, chat: bool, text: str, finish: str, use: dict, gkt: dict) -> dict:
    if chat:
        choice = {"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None, "finish_reason": finish}
    else:
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
    return {"id": rid, "object": "chat.completion" if chat else "text_completion", "created": int(time.time()),
            "model": model, "choices": [choice], "usage": use, "gkt": gkt}


def chunk_body(rid: str, model: str, chat: bool, text: str | None, finish: str | None = None, first: bool = False,
               **extra) -> dict:
    if chat:
        delta = {"role": "assistant", "content": text or ""} if first else ({"content": text} if text else {})
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
    else:
        choice = {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}
    return {"id": rid, "object": "chat.completion.chunk" if chat else "text_completion", "created": int(time.time()),
            "model": model, "choices": [choice], **extra}


def usage_chunk(rid: str, model: str, chat: bool, use: dict) -> dict:
    """The last chunk when stream_options.include_usage is set: no choices, only usage."""
    return {"id": rid, "object": "chat.completion.chunk" if chat else "text_completion", "created": int(time.time()),
            "model": model, "choices": [], "usage": use}
