"""The OpenAI wire format: request schemas, response shapes, and the error envelope.

Requests are parsed by hand from the raw body (not by FastAPI's body binding) so that every
failure — malformed JSON, a body that is not an object, a wrong type, an out-of-range value —
becomes a 400 in OpenAI's `{"error": {...}}` envelope, which the official SDKs turn into typed
exceptions. FastAPI's own 422 responses would break those clients.
"""

from __future__ import annotations

import json
import math
import re
import time
import uuid
from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from tunesmith.data.bounded import depth_over, has_lone_surrogate

# OpenAI accepts at most 4 stop sequences; the bound also keeps the per-token stop scan cheap.
MAX_STOP_SEQUENCES = 4
MAX_STOP_LENGTH = 256
# Below this a temperature or top_p means greedy decoding: such values are greedy in effect, and in
# float32 they vanish (1e-300 becomes 0) or make logits / temperature overflow, so sampling would fail.
GREEDY_BELOW = 1e-6
# Deeper JSON than any OpenAI request needs; the check runs before anything walks the value.
MAX_JSON_DEPTH = 64


class APIError(Exception):
    """An HTTP error in OpenAI's envelope: `{"error": {"message", "type", "param", "code"}}`."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error",
                 param: Optional[str] = None, code: Optional[str] = None,
                 headers: Optional[dict[str, str]] = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def bad_request(message: str, *, param: Optional[str] = None, code: str = "invalid_value") -> APIError:
    return APIError(400, message, param=param, code=code)


def model_not_found(name: str, available: list[str]) -> APIError:
    return APIError(404, f"The model `{name}` does not exist. Available models: {', '.join(available)}",
                    param="model", code="model_not_found")


# --------------------------------------------------------------------------- parsing


def _refuse_constant(name: str) -> float:
    raise ValueError(f"{name} is not valid JSON")


_TOO_DEEP = object()
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def _finite_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):  # 1e999 parses as infinity
        raise ValueError(f"the number {text[:40]} is out of range")
    return value


def parse_json_object(body: bytes) -> dict[str, Any]:
    """The request body as a JSON object, or a 400 saying what is wrong with it."""
    if not body.strip():
        raise bad_request("The request body is empty; send a JSON object.", code="invalid_json")
    try:
        # NaN and Infinity are JavaScript, not JSON; Python's parser accepts them unless told not to.
        data = json.loads(body, parse_constant=_refuse_constant, parse_float=_finite_float)
    except (ValueError, UnicodeDecodeError) as exc:
        raise bad_request(f"The request body is not valid JSON: {exc}", code="invalid_json") from None
    except RecursionError:  # nested deeper than the parser's stack allows
        data = _TOO_DEEP
    if data is _TOO_DEEP or depth_over(data, MAX_JSON_DEPTH):
        raise bad_request(f"The request body nests JSON deeper than {MAX_JSON_DEPTH} levels.", code="invalid_json")
    if _SURROGATE_ESCAPE.search(body) and has_lone_surrogate(data):
        # "\ud800" is valid JSON syntax, but half a character: no tokenizer can encode it.
        raise bad_request("The request body holds a lone surrogate escape (\\uD800-\\uDFFF without its pair), "
                          "which is not text.", code="invalid_json")
    if not isinstance(data, dict):
        raise bad_request(f"The request body must be a JSON object, not a JSON {type(data).__name__}.",
                          code="invalid_json")
    return data


_TYPE_ERRORS = ("_type", "_parsing", "union_tag", "model_attributes_type", "is_instance_of")


def _field_names(cls: type[BaseModel] | None = None) -> set[str]:
    names: set[str] = set()
    for sub in (cls or _Strict).__subclasses__():
        names |= set(sub.model_fields) | _field_names(sub)
    return names


def _param_name(loc: tuple[Any, ...]) -> str:
    """`messages.0.content` from pydantic's location, cut before union-member tags such as `list[int]`."""
    known = _field_names()
    parts: list[str] = []
    for part in loc:
        if not (isinstance(part, int) or part in known):
            break
        parts.append(str(part))
    return ".".join(parts)


def parse_request(cls: type[BaseModel], data: dict[str, Any]):
    """Validate `data` against `cls`; the first problem becomes a 400 naming the field."""
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        param = _param_name(err["loc"]) or None
        kind = err["type"]
        if kind == "missing":
            code = "missing_required_parameter"
        elif any(kind.endswith(t) or kind == t for t in _TYPE_ERRORS):
            code = "invalid_type"
        else:
            code = "invalid_value"
        message = err["msg"].removeprefix("Value error, ")
        where = f"`{param}`" if param else "the request"
        raise bad_request(f"Invalid value for {where}: {message}.", param=param, code=code) from None


# --------------------------------------------------------------------------- request schemas


class _Strict(BaseModel):
    # Strict: "5" is not an int and 1 is not a bool. Unknown keys are ignored, as OpenAI's SDKs send
    # fields (user, metadata, store...) that change nothing here.
    model_config = ConfigDict(strict=True, extra="ignore")


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class ChatMessage(_Strict):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Union[str, list[TextPart], None] = None
    name: Optional[str] = None

    def as_template_message(self) -> dict[str, Any]:
        """The dict the chat template renders. `developer` is OpenAI's new name for `system`."""
        if isinstance(self.content, list):
            content = "".join(part.text for part in self.content)
        else:
            content = self.content or ""
        message: dict[str, Any] = {"role": "system" if self.role == "developer" else self.role, "content": content}
        if self.name:
            message["name"] = self.name
        return message


class StreamOptions(_Strict):
    include_usage: bool = False


def _normalise_stop(value: Union[str, list[str], None]) -> list[str]:
    stops = [value] if isinstance(value, str) else list(value or [])
    if len(stops) > MAX_STOP_SEQUENCES:
        raise ValueError(f"at most {MAX_STOP_SEQUENCES} stop sequences are allowed")
    for stop in stops:
        if not stop or len(stop) > MAX_STOP_LENGTH:
            raise ValueError(f"each stop sequence must have 1 to {MAX_STOP_LENGTH} characters")
    return stops


def _greedy_when_vanishing(req):
    """A temperature or top_p too small to sample with means greedy decoding (temperature 0)."""
    if req.temperature is not None and req.temperature < GREEDY_BELOW:
        req.temperature = 0.0
    if req.top_p is not None and req.top_p < GREEDY_BELOW:
        req.temperature, req.top_p = 0.0, 1.0  # only the most likely token is left: that is greedy
    return req


class _Sampling(_Strict):
    """Fields shared by chat and text completions."""

    model: str = Field(min_length=1)
    max_tokens: Optional[int] = Field(None, ge=1)
    temperature: Optional[float] = Field(None, ge=0.0, le=2.0)
    top_p: Optional[float] = Field(None, gt=0.0, le=1.0)
    n: int = Field(1, ge=1)
    stop: Union[str, list[str], None] = Field(default_factory=list)
    seed: Optional[int] = Field(None, ge=-(2**63), le=2**63 - 1)
    stream: bool = False
    stream_options: Optional[StreamOptions] = None
    # vLLM's extension: keep generating past EOS, for benchmarks that need fixed output lengths.
    ignore_eos: bool = False
    # vLLM's extension: also return the generated token ids (and the prompt's), for parity checks.
    return_token_ids: bool = False
    presence_penalty: Optional[float] = Field(None, ge=-2.0, le=2.0)
    frequency_penalty: Optional[float] = Field(None, ge=-2.0, le=2.0)
    user: Optional[str] = None

    @field_validator("stop")
    @classmethod
    def _stop(cls, value):
        return _normalise_stop(value)

    _greedy = model_validator(mode="after")(_greedy_when_vanishing)

    @field_validator("presence_penalty", "frequency_penalty")
    @classmethod
    def _no_penalties(cls, value):
        if value:
            raise ValueError("penalties are not supported by tunesmith serve; leave them at 0")
        return value


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: Optional[int] = Field(None, ge=1)
    logprobs: Optional[bool] = None
    tools: Optional[list[Any]] = None
    response_format: Optional[dict[str, Any]] = None

    @field_validator("logprobs")
    @classmethod
    def _no_logprobs(cls, value):
        if value:
            raise ValueError("logprobs are not supported by tunesmith serve")
        return value

    @field_validator("tools")
    @classmethod
    def _no_tools(cls, value):
        if value:
            raise ValueError("tool calling is not supported by tunesmith serve")
        return value

    @field_validator("response_format")
    @classmethod
    def _text_only(cls, value):
        if value and value.get("type") != "text":
            raise ValueError("only response_format type `text` is supported")
        return value

    @property
    def token_limit(self) -> Optional[int]:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


class CompletionRequest(_Sampling):
    prompt: Union[str, list[str], list[int], list[list[int]]]
    echo: bool = False
    logprobs: Optional[int] = None
    best_of: Optional[int] = None
    suffix: Optional[str] = None

    @field_validator("prompt")
    @classmethod
    def _not_empty(cls, value):
        if isinstance(value, list) and not value:
            raise ValueError("prompt must not be an empty list")
        return value

    @field_validator("echo", "logprobs", "suffix")
    @classmethod
    def _unsupported(cls, value, info):
        if value:
            raise ValueError(f"{info.field_name} is not supported by tunesmith serve")
        return value

    @field_validator("best_of")
    @classmethod
    def _best_of(cls, value):
        if value not in (None, 1):
            raise ValueError("best_of is not supported by tunesmith serve; use n")
        return value

    @property
    def token_limit(self) -> Optional[int]:
        return self.max_tokens


class GenerateRequest(_Strict):
    """The minimal endpoint of the fine-tuning guides: `{"prompt": ...}` -> `{"response": ...}`."""

    prompt: str
    model: Optional[str] = None
    max_tokens: Optional[int] = Field(None, ge=1)
    # Greedy unless asked otherwise: what a transformers pipeline with a default generation config does.
    temperature: float = Field(0.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    stop: Union[str, list[str], None] = Field(default_factory=list)
    seed: Optional[int] = Field(None, ge=-(2**63), le=2**63 - 1)
    system: Optional[str] = None

    _greedy = model_validator(mode="after")(_greedy_when_vanishing)

    @field_validator("stop")
    @classmethod
    def _stop(cls, value):
        return _normalise_stop(value)


class LoadLoraRequest(_Strict):
    lora_name: str
    lora_path: str


class UnloadLoraRequest(_Strict):
    lora_name: str


# --------------------------------------------------------------------------- responses


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def chat_completion(rid: str, model: str, choices: list[tuple[str, str]], prompt_tokens: int,
                    completion_tokens: int) -> dict[str, Any]:
    """`choices` holds (text, finish_reason) in choice order."""
    return {
        "id": rid, "object": "chat.completion", "created": int(time.time()), "model": model,
        "choices": [
            {"index": i, "message": {"role": "assistant", "content": text}, "logprobs": None,
             "finish_reason": reason}
            for i, (text, reason) in enumerate(choices)
        ],
        "usage": usage(prompt_tokens, completion_tokens),
    }


def chat_chunk(rid: str, model: str, created: int, index: int, delta: dict[str, Any],
               finish_reason: Optional[str] = None) -> dict[str, Any]:
    return {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model,
            "choices": [{"index": index, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]}


def text_completion(rid: str, model: str, choices: list[tuple[str, str]], prompt_tokens: int,
                    completion_tokens: int) -> dict[str, Any]:
    return {
        "id": rid, "object": "text_completion", "created": int(time.time()), "model": model,
        "choices": [{"index": i, "text": text, "logprobs": None, "finish_reason": reason}
                    for i, (text, reason) in enumerate(choices)],
        "usage": usage(prompt_tokens, completion_tokens),
    }


def text_chunk(rid: str, model: str, created: int, index: int, text: str,
               finish_reason: Optional[str] = None) -> dict[str, Any]:
    return {"id": rid, "object": "text_completion", "created": created, "model": model,
            "choices": [{"index": index, "text": text, "logprobs": None, "finish_reason": finish_reason}]}


def usage_chunk(rid: str, model: str, created: int, obj: str, prompt_tokens: int,
                completion_tokens: int) -> dict[str, Any]:
    return {"id": rid, "object": obj, "created": created, "model": model, "choices": [],
            "usage": usage(prompt_tokens, completion_tokens)}


def sse(data: dict[str, Any] | str) -> bytes:
    """One server-sent event; the stream ends with `sse("[DONE]")`."""
    payload = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"), ensure_ascii=False)
    return f"data: {payload}\n\n".encode("utf-8")
