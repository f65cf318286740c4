"""Vertex AI's prediction protocol (AIP_MODE=PREDICTION), as llama-server serves it."""

from __future__ import annotations

import httpx
from live_server import free_port, live_server
from model_traits import chat_template_for_tests

from ferrousforge.api.vertex import format_name, vertex_routes


def test_routes_come_from_googles_variables() -> None:
    assert vertex_routes({}) is None
    vx = vertex_routes({"AIP_MODE": "PREDICTION", "AIP_HTTP_PORT": "9001"})
    assert (vx.predict, vx.health, vx.port) == ("/predict", None, 9001)
    vx = vertex_routes(
        {"AIP_MODE": "PREDICTION", "AIP_PREDICT_ROUTE": "/p", "AIP_HEALTH_ROUTE": "/h"}
    )
    assert (vx.predict, vx.health, vx.port) == ("/p", "/h", 8080)


def test_request_formats_are_camel_case_paths() -> None:
    assert format_name("/v1/chat/completions") == "chatCompletions"
    assert format_name("/apply-template") == "applyTemplate"
    assert format_name("/v1/models/{model_id:path}") == "models"


def test_predict_runs_each_instance_on_its_route() -> None:
    port = free_port()
    env = {
        "AIP_MODE": "PREDICTION",
        "AIP_HTTP_PORT": str(port),
        "AIP_PREDICT_ROUTE": "/vertex/predict",
        "AIP_HEALTH_ROUTE": "/vertex/health",
    }
    # AIP_HTTP_PORT wins over --port (which live_server gives another free port)
    other = free_port()
    args = ("--port", str(other), "--parallel", "2", "--ctx-size", "1024", "--api-key", "k")
    if tmpl := chat_template_for_tests():  # a model without one gets the generic template
        args += ("--chat-template", tmpl)
    with live_server(*args, env=env, port=port) as s:
        assert s.url.endswith(str(port))
        auth = {"Authorization": "Bearer k"}
        assert httpx.get(s.url + "/vertex/health").status_code == 200
        ask = {"messages": [{"role": "user", "content": "Say hello"}], "max_tokens": 4}
        body = {
            "instances": [
                {"@requestFormat": "chatCompletions", **ask, "stream": True},
                {"@requestFormat": "/v1/completions", "prompt": "Hi", "max_tokens": 3},
                {"@requestFormat": "noSuchRoute"},
                "not an object",
            ]
        }
        assert httpx.post(s.url + "/vertex/predict", json=body).status_code == 401
        r = httpx.post(s.url + "/vertex/predict", json=body, headers=auth, timeout=60)
        assert r.status_code == 200, r.text
        chat, completion, unknown, bad = r.json()["predictions"]
        assert chat["object"] == "chat.completion"  # stream forced off: one JSON answer
        assert chat["choices"][0]["message"]["role"] == "assistant"
        assert completion["object"] == "text_completion"
        assert "noSuchRoute" in unknown["error"]["message"]
        assert "JSON object" in bad["error"]["message"]
        r = httpx.post(s.url + "/vertex/predict", json={"instances": 3}, headers=auth)
        assert r.status_code == 400
