"""llama-server's HTTP behaviour without a model: CORS as it documents it (--cors-origins
'*', 'localhost' or a list; preflight methods, headers, credentials), --any-model-name, and
ferrousforge-server's llama-server defaults."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
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
    monkeypatch.delenv("FERROUSFORGE_METRICS", raising=False)
    assert llama_server_defaults(["-m", "x.gguf"]) == [
        "--no-metrics",
        "--cors-origins",
        "*",
        "--any-model-name",
        "--http",
        "h11",
        "-m",
        "x.gguf",
    ]
    given = ["--metrics", "--cors-origins=localhost", "--no-any-model-name", "--http", "auto"]
    assert llama_server_defaults(given) == given


def test_any_model_name_serves_the_one_model_under_any_name() -> None:
    assert _client(model="m").get("/v1/models/gpt-4o").status_code == 404
    r = _client(model="m", any_model_name=True).get("/v1/models/gpt-4o")
    assert r.status_code == 200 and r.json()["id"] == "m"


class _Capture(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.server.captured = dict(self.headers)  # type: ignore[attr-defined]
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def target():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Capture)
    srv.captured = {}  # type: ignore[attr-defined]
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield srv
    srv.shutdown()
    srv.server_close()


def test_cors_proxy_forwards_only_the_headers_named_for_it(target) -> None:
    url = f"/cors-proxy?url=http://127.0.0.1:{target.server_port}/capture"
    headers = {
        "Authorization": "Bearer k",
        "Cookie": "session=secret",
        "X-Api-Key": "k",
        "x-llama-server-proxy-header-accept": "application/json",
        "x-llama-server-proxy-header-authorization": "Bearer explicit",
    }
    assert _client(api_key=["k"]).get(url, headers=headers).status_code == 403  # off
    r = _client(api_key=["k"], ui_mcp_proxy=True).get(url, headers=headers)
    assert r.status_code == 200 and r.text == "ok"
    sent = {k.lower(): v for k, v in target.captured.items()}
    assert sent["accept"] == "application/json" and sent["authorization"] == "Bearer explicit"
    assert "cookie" not in sent and "x-api-key" not in sent
    assert _client(ui_mcp_proxy=True).get("/cors-proxy?url=file:///etc/passwd").status_code == 400
