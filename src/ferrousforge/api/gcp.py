"""Vertex AI's prediction protocol, as llama-server serves it when ``AIP_MODE=PREDICTION``.

Vertex AI runs a custom container with its own environment variables: ``AIP_MODE``
(``PREDICTION`` turns this on), ``AIP_HTTP_PORT`` (the port to listen on, over --port),
``AIP_PREDICT_ROUTE`` (default ``/predict``) and ``AIP_HEALTH_ROUTE`` (an extra path for
/health). A prediction request is ``{"instances": [...]}``; each instance is the body of one
of our POST routes, named by ``@requestFormat`` as its path (``/v1/chat/completions``) or as
llama-server's camelCase alias of it (``chatCompletions``). The answer is
``{"predictions": [...]}``, one response body (or error body) per instance, in order.

Each instance goes through the app again (over ASGI, with the caller's headers, so API keys
and limits apply as to a direct call), all at once.
"""

from __future__ import annotations

import asyncio
import json
import os
from typing import Any

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from ferrousforge.api.errors import error_body

MAX_INSTANCES = 128  # llama-server's bound
_FORWARDED = ("authorization", "x-api-key", "content-type")


def gcp_enabled() -> bool:
    return os.environ.get("AIP_MODE", "") == "PREDICTION"


def gcp_port(port: int) -> int:
    """The port to listen on: AIP_HTTP_PORT (Vertex AI's) over ``port`` when enabled."""
    value = os.environ.get("AIP_HTTP_PORT", "")
    return int(value) if gcp_enabled() and value else port


def _route_env(name: str, default: str) -> str:
    value = os.environ.get(name, "") or default
    return value if not value or value.startswith("/") else "/" + value


def request_format(path: str) -> str:
    """llama-server's camelCase alias of a route: /v1/chat/completions -> chatCompletions."""
    out, cap = [], False
    for c in path.removeprefix("/v1").lstrip("/"):
        if c in "{:":
            break  # path parameters are not part of the alias
        if c in "/-_":
            cap = True
        else:
            out.append(c.upper() if cap else c)
            cap = False
    return "".join(out)


def install_gcp_compat(app: FastAPI, post_paths: list[str], health_endpoint: Any) -> None:
    """Serve AIP_PREDICT_ROUTE (and AIP_HEALTH_ROUTE) on ``app`` if AIP_MODE=PREDICTION."""
    if not gcp_enabled():
        return
    predict = _route_env("AIP_PREDICT_ROUTE", "/predict")
    if predict in post_paths:
        raise ValueError(f"AIP_PREDICT_ROUTE={predict}: that path is one of the server's routes")
    aliases: dict[str, str] = {}
    for path in post_paths:  # the first route of an alias wins, as in llama-server
        aliases.setdefault(request_format(path), path)
    health = _route_env("AIP_HEALTH_ROUTE", "")
    if health:
        app.add_api_route(health, health_endpoint, methods=["GET"], include_in_schema=False)

    async def predict_endpoint(request: Request) -> JSONResponse:
        try:
            data = json.loads(await request.body())
        except ValueError as e:
            return _error(f"request body is not JSON: {e}")
        if not isinstance(data, dict):
            return _error("request body must be a JSON object")
        instances = data.get("instances")
        if not isinstance(instances, list):
            return _error("request body must include an array field named instances")
        if len(instances) > MAX_INSTANCES:
            return _error(f"instances array exceeds maximum size of {MAX_INSTANCES}")
        headers = {k: v for k, v in request.headers.items() if k.lower() in _FORWARDED}
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gcp") as client:
            predictions = await asyncio.gather(
                *(_one(client, aliases, post_paths, headers, inst) for inst in instances)
            )
        return JSONResponse({"predictions": predictions})

    app.add_api_route(predict, predict_endpoint, methods=["POST"], include_in_schema=False)


async def _one(
    client: httpx.AsyncClient,
    aliases: dict[str, str],
    paths: list[str],
    headers: dict[str, str],
    instance: Any,
) -> Any:
    if not isinstance(instance, dict):
        return _error_body("each instance must be a JSON object")
    fmt = instance.get("@requestFormat")
    if not isinstance(fmt, str):
        return _error_body("each instance must include a string @requestFormat")
    path = aliases.get(fmt) or (fmt if fmt in paths else None)
    if path is None:
        return _error_body(f"no handler registered for @requestFormat: {fmt}")
    payload = {k: v for k, v in instance.items() if k != "@requestFormat"}
    if "stream" in payload:
        payload["stream"] = False  # one body per instance: the predict route never streams
    r = await client.post(path, json=payload, headers=headers, timeout=None)
    try:
        return r.json()
    except ValueError:
        return r.text


def _error_body(message: str) -> dict:
    return error_body(message, "invalid_request_error")


def _error(message: str) -> JSONResponse:
    return JSONResponse(_error_body(message), status_code=400)
