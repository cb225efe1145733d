"""Fuzz the request parser and the generating routes with generated hostile bodies: every answer
is a 200 or a 4xx in OpenAI's error envelope, never a 500."""

from __future__ import annotations

import json
import os

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tunesmith.serve.config import ServeConfig
from tunesmith.serve.app import build_app
from tunesmith.serve.protocol import (APIError, ChatCompletionRequest, CompletionRequest, GenerateRequest,
                                      parse_json_object, parse_request)

FUZZ = settings(max_examples=int(os.environ.get("TUNESMITH_FUZZ_EXAMPLES", "150")), deadline=None, database=None,
                derandomize="TUNESMITH_FUZZ_RANDOM" not in os.environ,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture])
BASE = "tunesmith-demo-4m"

NUMBERS = (st.integers(min_value=-2**70, max_value=2**70) | st.floats()
           | st.sampled_from([0, 1, -1, 1e-300, 5e-324, 1e-45, 1e300, 2.0, 0.5]))
LEAVES = st.none() | st.booleans() | NUMBERS | st.text(max_size=20) | st.sampled_from(["user", "text", BASE, ""])
ANY = st.recursive(LEAVES, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                                       max_size=3), max_leaves=12)
MESSAGE = st.fixed_dictionaries({}, optional={
    "role": st.sampled_from(["user", "system", "assistant", "developer", "tool", "bot"]) | ANY,
    "content": st.text(max_size=40) | st.lists(st.fixed_dictionaries({"type": st.just("text") | ANY,
                                                                      "text": st.text(max_size=20) | ANY})) | ANY,
    "name": st.text(max_size=10) | ANY,
})
BODY = st.fixed_dictionaries({}, optional={
    "model": st.sampled_from([BASE, "missing", ""]) | ANY,
    "messages": st.lists(MESSAGE, max_size=3) | ANY,
    "prompt": st.text(max_size=40) | st.lists(st.integers(min_value=-5, max_value=70_000), max_size=5) | ANY,
    # Small when valid: a fuzz case must not generate hundreds of tokens.
    "max_tokens": st.integers(min_value=-3, max_value=2) | st.integers(min_value=10**6, max_value=10**30) | ANY,
    "temperature": NUMBERS | ANY, "top_p": NUMBERS | ANY, "n": st.integers(min_value=-1, max_value=3) | ANY,
    "stop": st.text(max_size=5) | st.lists(st.text(max_size=300), max_size=6) | ANY,
    "seed": NUMBERS | ANY, "stream": st.booleans() | ANY, "stream_options": ANY, "logprobs": ANY, "tools": ANY,
    "response_format": ANY, "ignore_eos": st.booleans() | ANY, "return_token_ids": st.booleans() | ANY,
    "presence_penalty": NUMBERS, "echo": ANY, "best_of": ANY, "system": ANY,
})


def _encode(body) -> bytes:
    return json.dumps(body, allow_nan=True).encode("utf-8", "surrogatepass")


RAW = st.one_of(
    BODY.map(_encode),
    ANY.map(_encode),
    st.binary(max_size=100),
    st.integers(min_value=1, max_value=20_000).map(lambda d: b'{"model": ' + b"[" * d + b"]" * d + b"}"),
    st.sampled_from([b'{"temperature": NaN}', b'{"top_p": Infinity}', b'{"n": 1e999}', b"\xef\xbb\xbf{}", b"null"]),
    # Lone surrogate escapes: valid JSON, not text (found by hand: /v1/completions gave 500).
    st.sampled_from([b'{"model": "%s", "prompt": "a\\udfff", "max_tokens": 1}' % BASE.encode(),
                     b'{"prompt": "\\ud800", "max_tokens": 1}',
                     b'{"model": "%s", "messages": [{"role": "user", "content": "\\ud800"}]}' % BASE.encode()]),
)


@FUZZ
@given(RAW)
def test_the_parser_accepts_or_refuses_with_400(raw):
    try:
        data = parse_json_object(raw)
    except APIError as exc:
        assert exc.status == 400 and exc.code == "invalid_json"
        return
    for cls in (ChatCompletionRequest, CompletionRequest, GenerateRequest):
        try:
            req = parse_request(cls, data)
        except APIError as exc:
            assert exc.status == 400 and exc.message
            continue
        temperature = getattr(req, "temperature", None)
        assert temperature is None or temperature == 0 or temperature >= 1e-6


@pytest.fixture(scope="module")
def client():
    app = build_app(ServeConfig(max_n=2, max_queue=64, max_tokens_limit=4, default_max_tokens=2,
                                log_level="critical"))
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


@FUZZ
@given(RAW, st.sampled_from(["/v1/chat/completions", "/v1/completions", "/generate"]))
def test_the_routes_never_answer_500(client, raw, path):
    response = client.post(path, content=raw, headers={"Content-Type": "application/json"})
    assert response.status_code < 500, response.text
    if response.status_code != 200:
        error = response.json()["error"]
        assert error["message"] and set(error) == {"message", "type", "param", "code"}
