"""Errors on the Messages API paths leave in Anthropic's shape, from every layer that makes
them (API-key and body-limit middleware, validation, the model pool); the other routes keep
OpenAI's. No model is loaded: the app runs without its lifespan."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from ferrousforge.api.app import create_app
from ferrousforge.api.errors import anthropic_error
from ferrousforge.api.messages import ERROR_RESPONSES
from ferrousforge.inference.backend import BackendConfig
from ferrousforge.models.registry import ModelSpec
from ferrousforge.settings import ServerSettings

SPEC = ModelSpec("m", Path("/nonexistent.gguf"), BackendConfig(num_threads=1))
KEY = "sk-ant-local"
OK = {"model": "m", "max_tokens": 8, "messages": [{"role": "user", "content": "Hi"}]}


@pytest.fixture(scope="module")
def client() -> TestClient:
    settings = ServerSettings(api_key=[KEY], max_body_bytes=4096)
    return TestClient(create_app(settings, [SPEC]), headers={"x-api-key": KEY})


def anthropic_shaped(r, status: int, type_: str) -> str:
    assert r.status_code == status, r.text
    body = r.json()
    assert body["type"] == "error" and set(body["error"]) == {"type", "message"}, body
    assert body["error"]["type"] == type_, body
    return body["error"]["message"]


@pytest.mark.parametrize("path", ["/v1/messages", "/v1/messages/count_tokens"])
def test_missing_or_wrong_key(client: TestClient, path: str) -> None:
    r = client.post(path, json=OK, headers={"x-api-key": "sk-wrong"})
    assert anthropic_shaped(r, 401, "authentication_error") == "invalid API key"
    bare = TestClient(client.app)
    missing = anthropic_shaped(bare.post(path, json=OK), 401, "authentication_error")
    assert "missing API key" in missing and "x-api-key" in missing  # the header its SDK sends
    # The OpenAI routes keep OpenAI's shape.
    r = bare.post("/v1/chat/completions", json=OK)
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"


def test_body_too_large(client: TestClient) -> None:
    big = {**OK, "system": "x" * 8192}
    anthropic_shaped(client.post("/v1/messages", json=big), 413, "request_too_large")


def test_validation_errors(client: TestClient) -> None:
    no_max = {k: v for k, v in OK.items() if k != "max_tokens"}
    message = anthropic_shaped(
        client.post("/v1/messages", json=no_max), 400, "invalid_request_error"
    )
    assert message.startswith("max_tokens:")
    doc = {**OK, "messages": [{"role": "user", "content": [{"type": "document", "source": {}}]}]}
    message = anthropic_shaped(client.post("/v1/messages", json=doc), 400, "invalid_request_error")
    assert "no vision" in message
    server_tool = {**OK, "tools": [{"type": "web_search_20250305", "name": "web_search"}]}
    r = client.post("/v1/messages/count_tokens", json=server_tool)
    assert "web_search_20250305" in anthropic_shaped(r, 400, "invalid_request_error")
    r = client.post(
        "/v1/messages", content=b"{not json", headers={"content-type": "application/json"}
    )
    anthropic_shaped(r, 400, "invalid_request_error")


def test_unknown_model_and_a_model_that_cannot_load(client: TestClient) -> None:
    r = client.post("/v1/messages", json={**OK, "model": "nope"})
    assert "nope" in anthropic_shaped(r, 404, "not_found_error")
    r = client.post("/v1/messages", json=OK)  # the file does not exist
    anthropic_shaped(r, 503, "api_error")
    assert r.headers["retry-after"]


def test_overloaded_is_529_as_anthropic_sends_it() -> None:
    assert anthropic_error(503, "busy", "overloaded") == (
        529,
        {"type": "error", "error": {"type": "overloaded_error", "message": "busy"}},
    )
    assert {400, 401, 404, 413, 503, 529} <= set(ERROR_RESPONSES)
