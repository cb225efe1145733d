"""Every malformed request becomes a 400 in OpenAI's error envelope, naming the bad field."""

from __future__ import annotations

import pytest

from tunesmith.serve.protocol import (APIError, ChatCompletionRequest, CompletionRequest, GenerateRequest,
                                      parse_json_object, parse_request)

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def _error(fn, *args) -> dict:
    with pytest.raises(APIError) as info:
        fn(*args)
    assert info.value.status == 400
    body = info.value.body()
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["type"] == "invalid_request_error"
    return body["error"]


@pytest.mark.parametrize("raw, fragment", [
    (b"", "empty"), (b"{", "not valid JSON"), (b"[1, 2]", "JSON object"), (b'"text"', "JSON object"),
    (b'{"temperature": NaN}', "NaN"), (b"\xff\xfe", "not valid JSON"),
])
def test_bodies_that_are_not_json_objects_are_400(raw, fragment):
    error = _error(parse_json_object, raw)
    assert fragment in error["message"] and error["code"] == "invalid_json"


@pytest.mark.parametrize("change, param, code", [
    ({"model": None}, "model", "invalid_type"),
    ({"messages": []}, "messages", "invalid_value"),
    ({"messages": [{"role": "wizard", "content": "x"}]}, "messages.0.role", "invalid_value"),
    ({"messages": [{"role": "user", "content": 5}]}, "messages.0.content", "invalid_type"),
    ({"max_tokens": "16"}, "max_tokens", "invalid_type"),
    ({"max_tokens": 0}, "max_tokens", "invalid_value"),
    ({"temperature": 2.5}, "temperature", "invalid_value"),
    ({"top_p": 0}, "top_p", "invalid_value"),
    ({"n": True}, "n", "invalid_type"),
    ({"n": 0}, "n", "invalid_value"),
    ({"stream": "yes"}, "stream", "invalid_type"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop", "invalid_value"),
    ({"stop": [""]}, "stop", "invalid_value"),
    ({"seed": 2**70}, "seed", "invalid_value"),
    ({"presence_penalty": 0.5}, "presence_penalty", "invalid_value"),
    ({"logprobs": True}, "logprobs", "invalid_value"),
    ({"tools": [{"type": "function"}]}, "tools", "invalid_value"),
])
def test_wrong_types_and_out_of_range_values_name_the_field(change, param, code):
    data = {**CHAT, **change}
    if change.get("model", "") is None:
        del data["model"]
        code = "missing_required_parameter"
    error = _error(parse_request, ChatCompletionRequest, data)
    assert error["param"] == param and error["code"] == code


def test_valid_requests_parse_with_openai_defaults():
    req = parse_request(ChatCompletionRequest, {**CHAT, "temperature": 1, "stop": "###", "user": "ignored-field",
                                                "max_completion_tokens": 7})
    assert req.temperature == 1.0 and req.stop == ["###"] and req.n == 1 and req.token_limit == 7
    assert req.messages[0].as_template_message() == {"role": "user", "content": "hi"}
    parts = parse_request(ChatCompletionRequest, {**CHAT, "messages": [
        {"role": "developer", "content": [{"type": "text", "text": "be "}, {"type": "text", "text": "brief"}]}]})
    assert parts.messages[0].as_template_message() == {"role": "system", "content": "be brief"}


def test_completion_prompts_and_generate_bodies():
    assert parse_request(CompletionRequest, {"model": "m", "prompt": [1, 2, 3]}).prompt == [1, 2, 3]
    assert parse_request(CompletionRequest, {"model": "m", "prompt": ["a", "b"]}).prompt == ["a", "b"]
    assert _error(parse_request, CompletionRequest, {"model": "m", "prompt": []})["param"] == "prompt"
    assert _error(parse_request, CompletionRequest, {"model": "m", "prompt": "x", "echo": True})["param"] == "echo"
    assert parse_request(GenerateRequest, {"prompt": "hello"}).temperature == 0.0
    assert _error(parse_request, GenerateRequest, {"prompt": ["x"]})["param"] == "prompt"
