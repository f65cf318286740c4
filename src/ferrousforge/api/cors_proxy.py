"""llama-server's experimental CORS proxy, GET/POST /cors-proxy?url=URL (--ui-mcp-proxy).

A web page fetches an http(s) URL through the server (its web UI reaches MCP servers so).
Only the headers the page names as ``x-llama-server-proxy-header-NAME`` are sent on, as
NAME: never the caller's own Authorization, cookies or API key. Off (the default): 403.
The server then fetches any URL a client with the API key asks for: enable it only for
trusted clients.
"""

from __future__ import annotations

from urllib.parse import urlsplit

import httpx
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.background import BackgroundTask

from ferrousforge.api.routes import state

router = APIRouter()

PREFIX = "x-llama-server-proxy-header-"
TIMEOUT_S = 600.0  # llama-server's read and write timeouts


def forwarded_headers(request: Request) -> dict[str, str]:
    """The headers named ``x-llama-server-proxy-header-NAME``, as NAME."""
    out = {}
    for key, value in request.headers.items():
        name = key.lower().removeprefix(PREFIX)
        if key.lower().startswith(PREFIX) and name:
            out[name] = value
    return out


def target_of(url: str | None) -> str:
    parts = urlsplit(url or "")
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"url: unsupported URL scheme in target URL: {parts.scheme!r}")
    if not parts.hostname:
        raise ValueError("url: invalid target URL: missing host")
    if parts.password:
        raise ValueError("url: authentication in target URL is not supported")
    return url  # type: ignore[return-value]


@router.api_route("/cors-proxy", methods=["GET", "POST"], include_in_schema=False)
async def cors_proxy(request: Request) -> Response:
    if not state(request).settings.ui_mcp_proxy:
        return JSONResponse(
            {"error": {"message": "this feature is disabled", "type": "feature_disabled"}},
            status_code=403,
        )
    url = target_of(request.query_params.get("url"))
    client = httpx.AsyncClient(timeout=TIMEOUT_S, follow_redirects=False, trust_env=False)
    body = await request.body() if request.method == "POST" else None
    try:
        upstream = await client.send(
            client.build_request(
                request.method, url, headers=forwarded_headers(request), content=body
            ),
            stream=True,
        )
    except httpx.HTTPError as e:
        await client.aclose()
        return JSONResponse(
            {"error": {"code": 502, "message": f"proxy: {e}", "type": "server_error"}}, 502
        )

    async def close() -> None:
        await upstream.aclose()
        await client.aclose()

    return StreamingResponse(
        upstream.aiter_bytes(),
        upstream.status_code,
        media_type=upstream.headers.get("content-type"),
        background=BackgroundTask(close),
    )
