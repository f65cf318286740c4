"""llama-server's HTTP behaviour without a model: CORS as it documents it (--cors-origins
'*', 'localhost' or a list; preflight methods, headers, credentials), --any-model-name, and
ferrousforge-server's llama-server defaults."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from ferrousforge.api.app import create_app
from ferrousforge.cli.llama_server import llama_server_defaults
from ferrousforge.inference.backend import BackendConfig
from ferrousforge.models.registry import ModelSpec
from ferrousforge.settings import ServerSettings

SPEC = ModelSpec("m", Path("/nonexistent.gguf"), BackendConfig(num_threads=1))


def _client(**settings) -> TestClient:
    return TestClient(create_app(ServerSettings(**settings), [SPEC]))


def preflight(c: TestClient, origin: str):
    return c.options(
        "/completions",
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "Authorization",
        },
    )


def test_any_origin_is_echoed_with_credentials_before_the_key_is_checked() -> None:
    c = _client(cors_origins=["*"], api_key=["k"])
    r = preflight(c, "http://web.example")
    assert r.status_code == 200
    assert r.headers["Access-Control-Allow-Origin"] == "http://web.example"
    assert r.headers["Access-Control-Allow-Credentials"] == "true"
    assert r.headers["Access-Control-Allow-Methods"] == "GET, POST, DELETE, OPTIONS"
    assert r.headers["Access-Control-Allow-Headers"] == "*"
    # An actual request carries the origin too, also when the key is refused.
    r = c.get("/v1/models", headers={"Origin": "http://web.example"})
    assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
    assert r.headers["Access-Control-Allow-Origin"] == "http://web.example"


def test_without_credentials_any_origin_is_a_star() -> None:
    c = _client(cors_origins=["*"], cors_credentials=False, cors_methods="GET")
    r = preflight(c, "http://web.example")
    assert r.headers["Access-Control-Allow-Origin"] == "*"
    assert r.headers["Access-Control-Allow-Credentials"] == "false"
    assert r.headers["Access-Control-Allow-Methods"] == "GET"


@pytest.mark.parametrize(
    "origin,allowed",
    [
        ("http://localhost", True),
        ("http://127.0.0.1:3000", True),
        ("http://[::1]:8080", True),
        ("http://localhost.evil.com", False),
        ("http://notlocalhost", False),
        ("http://evil.com", False),
    ],
)
def test_localhost_reflects_only_local_origins(origin: str, allowed: bool) -> None:
    r = preflight(_client(cors_origins=["localhost"]), origin)
    assert r.status_code == 200
    assert r.headers.get("Access-Control-Allow-Origin") == (origin if allowed else None)


def test_a_list_of_origins_allows_those_only() -> None:
    c = _client(cors_origins=["http://a.example", "http://b.example"])
    assert preflight(c, "http://b.example").headers["Access-Control-Allow-Origin"] == (
        "http://b.example"
    )
    assert "Access-Control-Allow-Origin" not in preflight(c, "http://c.example").headers


def test_ferrousforge_server_takes_llama_servers_defaults(monkeypatch) -> None:
    monkeypatch.delenv("FERROUSFORGE_CORS_ORIGINS", raising=False)
    monkeypatch.delenv("FERROUSFORGE_ANY_MODEL_NAME", raising=False)
    monkeypatch.delenv("FERROUSFORGE_HTTP", raising=False)
    assert llama_server_defaults(["-m", "x.gguf"]) == [
        "--cors-origins",
        "*",
        "--any-model-name",
        "--http",
        "h11",
        "-m",
        "x.gguf",
    ]
    given = ["--cors-origins=localhost", "--no-any-model-name", "--http", "auto"]
    assert llama_server_defaults(given) == given


def test_any_model_name_serves_the_one_model_under_any_name() -> None:
    assert _client(model="m").get("/v1/models/gpt-4o").status_code == 404
    r = _client(model="m", any_model_name=True).get("/v1/models/gpt-4o")
    assert r.status_code == 200 and r.json()["id"] == "m"
