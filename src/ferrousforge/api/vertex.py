"""Vertex AI's prediction protocol, as llama-server serves it when ``AIP_MODE=PREDICTION``.

A Vertex AI custom container is told its port and routes by Google's ``AIP_*`` environment
variables (not ours, so they are read here rather than in the settings model). Each of the
request's ``instances`` names a route by ``@requestFormat`` (``chatCompletions`` or a path)
and is run through the app itself, middleware and all, as if it had been sent there; the
answers come back in order as ``predictions``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
from dataclasses import dataclass

import httpx
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute

from ferrousforge.api.errors import error_body

log = logging.getLogger(__name__)

MAX_INSTANCES = 128  # llama-server's bound: one request cannot queue unbounded work
_FORWARDED = ("authorization", "x-api-key")


@dataclass(frozen=True, slots=True)
class VertexRoutes:
    """Where Vertex AI expects the server (https://cloud.google.com/vertex-ai/docs/
    predictions/custom-container-requirements)."""

    predict: str
    health: str | None
    port: int


def vertex_routes(env: dict[str, str] | None = None) -> VertexRoutes | None:
    """The routes from ``AIP_*``, or None when not running under Vertex AI."""
    env = os.environ if env is None else env
    if env.get("AIP_MODE") != "PREDICTION":
        return None
    return VertexRoutes(
        predict=env.get("AIP_PREDICT_ROUTE") or "/predict",
        health=env.get("AIP_HEALTH_ROUTE") or None,
        port=int(env.get("AIP_HTTP_PORT") or 8080),
    )


def format_name(path: str) -> str:
    """A route's ``@requestFormat``: /v1/chat/completions -> chatCompletions."""
    parts = [p for p in re.split(r"[/_-]", path.removeprefix("/v1").split("{")[0]) if p]
    return "".join([parts[0], *(p[:1].upper() + p[1:] for p in parts[1:])]) if parts else ""


def _error(message: str) -> dict:
    return error_body(message, "invalid_request_error")


def install_vertex(app: FastAPI, routers: list[APIRouter], routes: VertexRoutes) -> None:
    """Add the predict route (and the health alias) for the POST routes of ``routers``."""
    posts = [
        r.path
        for group in routers
        for r in group.routes
        if isinstance(r, APIRoute) and "POST" in r.methods
    ]
    if routes.predict in posts:
        raise ValueError(f"AIP_PREDICT_ROUTE={routes.predict} is one of the server's own routes")
    by_format: dict[str, str] = {}
    for path in posts:
        by_format.setdefault(format_name(path), path)

    async def run_instance(request: Request, instance: object) -> object:
        if not isinstance(instance, dict):
            return _error("each instance must be a JSON object")
        fmt = instance.get("@requestFormat")
        if not isinstance(fmt, str):
            return _error("each instance must include a string @requestFormat")
        path = by_format.get(fmt) or (fmt if fmt in posts else None)
        if path is None:
            return _error(f"no route for @requestFormat: {fmt}")
        payload = {k: v for k, v in instance.items() if k != "@requestFormat"}
        payload["stream"] = False  # a prediction is one JSON answer
        headers = {k: v for k, v in request.headers.items() if k.lower() in _FORWARDED}
        transport = httpx.ASGITransport(app=request.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://vertex") as client:
            r = await client.post(path, json=payload, headers=headers, timeout=None)
        try:
            return r.json()
        except json.JSONDecodeError:
            return r.text

    async def predict(request: Request) -> JSONResponse:
        try:
            data = json.loads(await request.body())
        except json.JSONDecodeError as e:
            return JSONResponse(_error(f"body is not JSON: {e}"), status_code=400)
        instances = data.get("instances") if isinstance(data, dict) else None
        if not isinstance(instances, list):
            return JSONResponse(
                _error("the body must hold an array named instances"), status_code=400
            )
        if len(instances) > MAX_INSTANCES:
            return JSONResponse(_error(f"instances: at most {MAX_INSTANCES}"), status_code=400)
        predictions = await asyncio.gather(*(run_instance(request, i) for i in instances))
        return JSONResponse({"predictions": list(predictions)})

    app.add_api_route(routes.predict, predict, methods=["POST"], include_in_schema=False)
    if routes.health:
        health = next(
            r.endpoint
            for group in routers
            for r in group.routes
            if isinstance(r, APIRoute) and r.path == "/health"
        )
        app.add_api_route(routes.health, health, methods=["GET"], include_in_schema=False)
    log.info("Vertex AI prediction route: POST %s", routes.predict)
