"""Auth, body limit and CORS around the app, without loading a model."""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient

from ferrousforge.api.app import create_app
from ferrousforge.inference.backend import BackendConfig
from ferrousforge.models.registry import ModelSpec
from ferrousforge.settings import ServerSettings

# Lifespan does not run without `with TestClient(...)`, so nothing is loaded.
SPEC = ModelSpec("m", Path("/nonexistent.gguf"), BackendConfig(num_threads=1))


def _client(**settings) -> TestClient:
    return TestClient(create_app(ServerSettings(**settings), [SPEC]))


def test_api_key_via_bearer_or_x_api_key() -> None:
    c = _client(api_key=["k1", "k2"])
    assert c.get("/v1/models").status_code == 401
    assert c.get("/v1/models", headers={"Authorization": "Basic k1"}).status_code == 401
    assert c.get("/v1/models", headers={"Authorization": "Bearer k2"}).status_code == 200
    assert c.get("/v1/models", headers={"x-api-key": "k1"}).status_code == 200
    assert c.get("/openapi.json").status_code == 401  # everything but /health
    assert c.get("/metrics").status_code == 401


def test_no_key_configured_means_open() -> None:
    assert _client().get("/v1/models").status_code == 200


def test_body_limit_counts_chunked_bodies_too() -> None:
    c = _client(max_body_bytes=2048)

    def chunks():
        for _ in range(10):
            yield b"x" * 1000

    r = c.post("/v1/completions", content=chunks(), headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
    small = c.post("/v1/completions", json={"prompt": "x", "model": "other"})
    assert small.status_code == 404  # under the limit the request goes through


def test_cors_off_unless_configured() -> None:
    pre = {"Origin": "http://app.example", "Access-Control-Request-Method": "POST"}
    r = _client().options("/v1/chat/completions", headers=pre)
    assert "access-control-allow-origin" not in r.headers
    r = _client(cors_origins=["http://app.example"], api_key=["k"]).options(
        "/v1/chat/completions", headers=pre
    )
    assert r.headers["access-control-allow-origin"] == "http://app.example"


def test_unknown_route_has_openai_error_shape() -> None:
    r = _client().get("/v2/nothing")
    assert r.status_code == 404 and set(r.json()["error"]) == {"message", "type", "param", "code"}
