"""A model llama.cpp refuses after our header checks pass: `serve` exits when it is the only
one, fails alone among good ones; /health keeps quiet."""

from __future__ import annotations

import logging
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from live_server import free_port
from test_gguf import gguf_bytes

from ferrousforge.api.app import create_app
from ferrousforge.inference.backend import BackendConfig
from ferrousforge.models.registry import ModelSpec
from ferrousforge.settings import ServerSettings

pytestmark = pytest.mark.integration


@pytest.fixture
def refused(tmp_path: Path) -> Path:
    """A well-formed GGUF (passes validate_gguf) that lacks llama.context_length, which
    llama.cpp requires: its loader refuses it."""
    p = tmp_path / "refused.gguf"
    p.write_bytes(gguf_bytes(tensors=[("w", [32, 2], 0, 0)]) + b"\0" * 256)
    return p


def _serve(*args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "ferrousforge.cli.main", "serve", "--port", str(free_port())]
    # The timeout only keeps a regression (a server that never exits) from hanging the run.
    return subprocess.run(
        [*cmd, "--threads", "2", *args], capture_output=True, text=True, timeout=120
    )


def test_serve_exits_when_llama_cpp_refuses_the_model(refused: Path) -> None:
    r = _serve("--model", str(refused))
    assert r.returncode == 1
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("error: model failed to load:") and "refused.gguf" in last
    assert "key not found in model: llama.context_length" in r.stderr  # the log has why


def test_a_refused_model_among_good_ones_fails_alone(refused: Path, model_path: Path) -> None:
    """With several models, one that llama.cpp refuses answers its own requests with the
    reason; the others keep serving and /health is ok, listing it as failed."""
    settings = ServerSettings(ctx_size=512, parallel=1, threads=2)
    specs = [
        ModelSpec("good", model_path, BackendConfig(num_threads=2, context_size=512)),
        ModelSpec("bad", refused, BackendConfig(num_threads=1, context_size=256)),
    ]
    with TestClient(create_app(settings, specs)) as c:
        for _ in range(600):
            health = c.get("/health")
            if health.json()["status"] != "loading":
                break
            time.sleep(0.05)
        assert health.status_code == 200
        status = {m["id"]: m["status"] for m in health.json()["models"]}
        assert status == {"good": "loaded", "bad": "failed"}
        bad = c.post("/v1/completions", json={"model": "bad", "prompt": "x", "max_tokens": 2})
        assert bad.status_code == 503 and bad.json()["error"]["code"] == "model_load_failed"
        assert "refused.gguf" in bad.json()["error"]["message"]
        good = c.post(
            "/v1/completions",
            json={"model": "good", "prompt": "x", "max_tokens": 2, "ignore_eos": True},
        )
        assert good.status_code == 200 and good.json()["usage"]["completion_tokens"] == 2


def _failed_client(refused: Path, **settings) -> TestClient:
    spec = ModelSpec("m", refused, BackendConfig(num_threads=1, context_size=256))
    return TestClient(create_app(ServerSettings(**settings), [spec]))


def _wait_for_error(c: TestClient, headers: dict[str, str]) -> dict:
    for _ in range(600):  # bounded: the load fails within a second or two
        r = c.get("/health", headers=headers)
        if r.json()["status"] != "loading":
            assert r.status_code == 503
            return r.json()
        time.sleep(0.05)
    pytest.fail("the model never finished failing to load")


UNAVAILABLE = {"code": 503, "message": "Model failed to load", "type": "unavailable_error"}


def test_health_shows_load_details_only_with_a_key(refused: Path, caplog) -> None:
    caplog.set_level(logging.ERROR, logger="ferrousforge.api.app")
    with _failed_client(refused, api_key=["sk-one"]) as c:
        # llama-server's error body, without the path or llama.cpp's lines
        hidden = {"status": "error", "error": UNAVAILABLE}
        assert _wait_for_error(c, {}) == hidden
        assert c.get("/health", headers={"Authorization": "Bearer nope"}).json() == hidden
        shown = c.get("/health", headers={"Authorization": "Bearer sk-one"}).json()
        assert shown["status"] == "error" and str(refused) in shown["message"]
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert str(refused) in logged and "llama.context_length" in logged


def test_health_shows_load_details_when_no_key_is_set(refused: Path) -> None:
    with _failed_client(refused) as c:
        body = _wait_for_error(c, {})
        assert body["status"] == "error" and str(refused) in body["message"]
