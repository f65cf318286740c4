"""The API key must match one configured key exactly: no prefixes, no extensions, no blanks."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from ferrousforge.api.app import create_app
from ferrousforge.inference.backend import BackendConfig
from ferrousforge.models.registry import ModelSpec
from ferrousforge.settings import ServerSettings

# Lifespan does not run without `with TestClient(...)`, so nothing is loaded.
SPEC = ModelSpec("m", Path("/nonexistent.gguf"), BackendConfig(num_threads=1))
KEYS = ["sk-alpha-123", "sk-beta-456"]


@pytest.fixture(scope="module")
def client() -> TestClient:
    return TestClient(create_app(ServerSettings(api_key=KEYS), [SPEC]))


@pytest.mark.parametrize(
    "headers",
    [
        {"Authorization": "Bearer "},  # an empty key is a prefix of every key
        {"Authorization": "Bearer"},
        {"Authorization": "Bearer  "},
        {"x-api-key": ""},
        {"Authorization": "Bearer sk-"},  # a common prefix of both keys
        {"Authorization": "Bearer sk-alpha-12"},  # one character short
        {"Authorization": "Bearer sk-alpha-1234"},  # one character too many
        {"Authorization": "Bearer sk-alpha-123sk-beta-456"},
        {"x-api-key": "sk-beta-45"},
        {"Authorization": "Bearer SK-ALPHA-123"},  # keys are case-sensitive
    ],
)
def test_anything_but_an_exact_key_is_401(client: TestClient, headers: dict[str, str]) -> None:
    r = client.get("/v1/models", headers=headers)
    assert r.status_code == 401, headers
    assert r.json()["error"]["code"] == "invalid_api_key"


@pytest.mark.parametrize("key", KEYS)
def test_each_exact_key_is_let_in(client: TestClient, key: str) -> None:
    assert client.get("/v1/models", headers={"Authorization": f"Bearer {key}"}).status_code == 200
    assert client.get("/v1/models", headers={"x-api-key": key}).status_code == 200
