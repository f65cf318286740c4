"""Every API field is bounded and strictly typed, the OpenAPI document says so, and bodies the
server cannot honour are 400 (OpenAI's error shape), without loading a model."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from ferrousforge.api.app import create_app
from ferrousforge.api.request import BOUNDS, InferenceOptions
from ferrousforge.inference.backend import BackendConfig
from ferrousforge.models.registry import ModelSpec
from ferrousforge.settings import ServerSettings

# Lifespan does not run without `with TestClient(...)`: no model is loaded, so a body that
# passes validation gets 503 (model loading) and one that fails it gets 400.
SPEC = ModelSpec("m", Path("/nonexistent.gguf"), BackendConfig(num_threads=1))
CHAT = [{"role": "user", "content": "Hi"}]


@pytest.fixture(scope="module")
def client() -> TestClient:
    return TestClient(create_app(ServerSettings(), [SPEC]))


@pytest.fixture(scope="module")
def doc(client: TestClient) -> dict:
    return client.get("/openapi.json").json()


def _rejected(client: TestClient, path: str, body: dict | str, param: str | None) -> dict:
    if isinstance(body, str):
        r = client.post(path, content=body, headers={"Content-Type": "application/json"})
    else:
        r = client.post(path, json=body)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    assert err["param"] == param, err
    return err


BAD_COMPLETIONS = [
    ({"max_tokens": True}, "max_tokens"),
    ({"prompt": [[False]]}, "prompt.0"),
    ({"prompt": [True, 5]}, "prompt.0"),
    ({"prompt": ""}, "prompt"),
    ({"prompt": []}, "prompt"),
    ({"prompt": [[]]}, "prompt.0"),
    ({"prompt": [-1]}, "prompt.0"),
    ({"n": True}, "n"),
    ({"top_k": 2**31}, "top_k"),
    ({"seed": 2**32}, "seed"),
    ({"temperature": "0.5"}, "temperature"),
    ({"repeat_last_n": 2**30}, "repeat_last_n"),
    ({"repeat_last_n": -2}, "repeat_last_n"),
    ({"dry_penalty_last_n": 2**28}, "dry_penalty_last_n"),
    ({"dry_sequence_breakers": ["x"] * 10_000}, "dry_sequence_breakers"),
    ({"dry_sequence_breakers": ["x" * 41]}, "dry_sequence_breakers.0"),
    ({"dry_sequence_breakers": [""]}, "dry_sequence_breakers.0"),
    ({"stop": ["s"] * 17}, "stop"),
    ({"stop": "x" * 1025}, "stop"),
    ({"stop": ""}, "stop"),
    ({"logit_bias": {str(i): 1 for i in range(1025)}}, "logit_bias"),
    ({"logit_bias": {"5": 101}}, "logit_bias.5"),
    ({"logit_bias": {"five": 1}}, "logit_bias.five"),
    ({"mirostat": True}, "mirostat"),
    ({"mirostat": 3}, "mirostat"),
    ({"typical_p": 0}, "typical_p"),
    ({"echo": 1}, "echo"),
    ({"stream": "yes"}, "stream"),
    ({"suffix": "tail"}, "suffix"),
    ({"best_of": 17}, "best_of"),
]


@pytest.mark.parametrize(("fields", "param"), BAD_COMPLETIONS)
def test_out_of_bounds_or_mistyped_completion_fields_are_400(client, fields, param) -> None:
    _rejected(client, "/v1/completions", {"prompt": "x", **fields}, param)


BAD_CHATS = [
    ({"messages": [{"role": "wizard", "content": "x"}]}, "messages.0.role"),
    ({"messages": CHAT * 4097}, "messages"),
    (
        {"messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
        "messages.0.content.0.type",
    ),
    ({"function_call": "auto"}, "function_call"),
    (
        {"tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": "any"},
        "tool_choice",
    ),
    ({"tools": [{"function": {"name": "f"}}] * 129}, "tools"),
    ({"parallel_tool_calls": 1}, "parallel_tool_calls"),
    ({"audio": {"voice": "alloy", "format": "mp3"}}, "audio"),
    ({"modalities": ["text", "audio"]}, "modalities"),
    ({"prediction": {"type": "content", "content": "x"}}, "prediction"),
    ({"web_search_options": {}}, "web_search_options"),
    ({"chat_template_kwargs": {f"k{i}": i for i in range(65)}}, "chat_template_kwargs"),
    ({"reasoning_format": "hidden"}, "reasoning_format"),
    ({"tool_choice": "required"}, "tool_choice"),
    ({"logprobs": 1}, "logprobs"),
    ({"top_logprobs": 0}, "top_logprobs"),
    ({"top_logprobs": 2, "logprobs": False}, "top_logprobs"),
    (
        {"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}},
        "response_format.json_schema.schema",
    ),
]


@pytest.mark.parametrize(("fields", "param"), BAD_CHATS)
def test_chat_fields_that_cannot_be_honoured_are_400(client, fields, param) -> None:
    _rejected(client, "/v1/chat/completions", {"messages": CHAT, **fields}, param)


def test_unsupported_fields_name_what_is_unsupported(client) -> None:
    body = {"messages": CHAT, "prediction": {"type": "content", "content": "x"}}
    err = _rejected(client, "/v1/chat/completions", body, "prediction")
    assert err["message"] == "prediction: predicted outputs is not supported"


def test_non_finite_numbers_are_400(client) -> None:
    _rejected(client, "/v1/completions", '{"prompt": "x", "min_p": NaN}', "min_p")
    _rejected(client, "/v1/completions", '{"prompt": "x", "dry_base": Infinity}', "dry_base")


def test_tokenize_and_detokenize_take_strict_ids(client) -> None:
    _rejected(client, "/detokenize", {"tokens": [False]}, "tokens.0")
    _rejected(client, "/detokenize", {"tokens": [1.0]}, "tokens.0")
    _rejected(client, "/tokenize", {"content": "x", "add_special": 1}, "add_special")


EDGES = [  # (the last accepted body, the first rejected one)
    ({"seed": 2**32 - 1}, {"seed": 2**32}),
    ({"repeat_last_n": -1, "dry_penalty_last_n": 1 << 20}, {"dry_penalty_last_n": (1 << 20) + 1}),
    ({"dry_sequence_breakers": ["x" * 40] * 32}, {"dry_sequence_breakers": ["x"] * 33}),
    ({"stop": ["a"] * 16, "logit_bias": {"1": -100}}, {"logit_bias": {"1": -100.5}}),
    ({"prompt": [[1, 2], [3]], "n": 16}, {"prompt": [[1, 2], []]}),
    ({"mirostat": 2, "top_k": 2**31 - 1}, {"top_k": 2**31}),
]


@pytest.mark.parametrize(("ok", "bad"), EDGES)
def test_bounds_are_inclusive(client, ok, bad) -> None:
    r = client.post("/v1/completions", json={"prompt": "x", **ok})
    assert r.status_code == 503, r.text  # validated, then no model is loaded yet
    assert client.post("/v1/completions", json={"prompt": "x", **bad}).status_code == 400


CHAT_EDGES = [
    ({"logprobs": True, "top_logprobs": 0}, {"top_logprobs": 0}),
    ({"modalities": ["text"], "functions": None}, {"modalities": ["audio"]}),
    (
        {
            "functions": [{"name": "f"}],
            "function_call": {"name": "f"},
            "parallel_tool_calls": False,
        },
        {"function_call": {"name": "f"}},
    ),
    ({"chat_template_kwargs": {"enable_thinking": False}}, {"chat_template_kwargs": []}),
    ({"user": "u", "metadata": {"a": "b"}, "store": False}, {"audio": {"voice": "alloy"}}),
]


@pytest.mark.parametrize(("ok", "bad"), CHAT_EDGES)
def test_chat_edges(client, ok, bad) -> None:
    r = client.post("/v1/chat/completions", json={"messages": CHAT, **ok})
    assert r.status_code == 503, r.text
    assert client.post("/v1/chat/completions", json={"messages": CHAT, **bad}).status_code == 400


# ---- the OpenAPI document -------------------------------------------------------------


def _resolve(doc: dict, schema: dict) -> dict:
    while "$ref" in schema:
        schema = doc["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    return schema


def _leaves(doc: dict, schema: dict, path: str, seen: set[str]):
    """(path, schema) of every number, integer, array and string under ``schema``."""
    ref = schema.get("$ref")
    if ref:
        if ref in seen:
            return
        seen = seen | {ref}
    schema = _resolve(doc, schema)
    for branch in schema.get("anyOf", []) + schema.get("oneOf", []):
        yield from _leaves(doc, branch, path, seen)
    kind = schema.get("type")
    if kind in ("number", "integer", "array", "string"):
        yield path, schema
    if kind == "array" and "items" in schema:
        yield from _leaves(doc, schema["items"], path + "[]", seen)
    for name, sub in schema.get("properties", {}).items():
        yield from _leaves(doc, sub, f"{path}.{name}", seen)


REQUESTS = ["CompletionRequest", "ChatCompletionRequest", "TokenizeRequest", "DetokenizeRequest"]


@pytest.mark.parametrize("model", REQUESTS)
def test_every_number_list_and_string_of_a_request_has_a_bound(doc, model) -> None:
    schema = doc["components"]["schemas"][model]
    unbounded = []
    for path, leaf in _leaves(doc, schema, model, set()):
        kind = leaf["type"]
        if kind in ("number", "integer"):
            low = "minimum" in leaf or "exclusiveMinimum" in leaf or "enum" in leaf
            if not (low and ("maximum" in leaf or "enum" in leaf)):
                unbounded.append(path)
        elif (kind == "array" and "maxItems" not in leaf) or (
            kind == "string" and not ({"maxLength", "enum", "const"} & set(leaf))
        ):
            unbounded.append(path)
    assert unbounded == []


def test_schema_bounds_are_the_library_bounds(doc) -> None:
    props = doc["components"]["schemas"]["CompletionRequest"]["properties"]
    for name, bound in BOUNDS.items():
        (branch,) = [b for b in props[name]["anyOf"] if b.get("type") in ("number", "integer")]
        low = branch.get("exclusiveMinimum" if bound.lo_open else "minimum")
        assert (low, branch["maximum"]) == (bound.lo, bound.hi), name


@pytest.mark.parametrize("name", sorted(BOUNDS))
def test_inference_options_reject_just_outside_each_bound(name) -> None:
    bound = BOUNDS[name]
    is_int = isinstance(getattr(InferenceOptions(), name) or 0, int) and name != "temperature"
    step = 1 if is_int else 1e-6
    for value in (bound.lo - (0 if bound.lo_open else step), bound.hi + step):
        with pytest.raises(ValueError, match=f"^{name}:"):
            InferenceOptions(
                **{name: value}, **({"max_tokens": None} if name == "min_tokens" else {})
            )
    InferenceOptions(**{name: bound.hi}, **({"max_tokens": None} if name == "min_tokens" else {}))


def test_inference_options_take_no_bools_or_nan_for_numbers() -> None:
    for kwargs in ({"max_tokens": True}, {"top_k": False}, {"temperature": math.nan}):
        with pytest.raises(ValueError):
            InferenceOptions(**kwargs)


def test_openapi_declares_the_error_responses_and_no_422(doc) -> None:
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            codes = set(op["responses"])
            assert "422" not in codes, (method, path)
            if path == "/health":
                continue
            assert {"400", "401", "404", "413", "503"} <= codes, (method, path)
            body = op["responses"]["400"]["content"]["application/json"]["schema"]
            assert _resolve(doc, body)["properties"]["error"], (method, path)
    assert "HTTPValidationError" not in doc["components"]["schemas"]


def test_openapi_media_types(doc) -> None:
    assert set(doc["paths"]["/metrics"]["get"]["responses"]["200"]["content"]) == {"text/plain"}
    for path in ("/v1/completions", "/v1/chat/completions"):
        content = doc["paths"][path]["post"]["responses"]["200"]["content"]
        assert {"application/json", "text/event-stream"} <= set(content)


def test_openapi_says_top_logprobs_needs_logprobs(doc) -> None:
    import jsonschema

    schema: dict[str, Any] = {**doc["components"]["schemas"]["ChatCompletionRequest"]}
    schema["components"] = doc["components"]  # so that its $refs resolve
    validator = jsonschema.Draft202012Validator(schema)
    assert not validator.is_valid({"messages": CHAT, "top_logprobs": 0})
    assert validator.is_valid({"messages": CHAT, "top_logprobs": 0, "logprobs": True})
