"""llama-server's agent endpoints: GET/POST /tools (server tools, MCP) and /cors-proxy.

Both are off unless asked for (--tools / --mcp-servers-*, --ui-mcp-proxy): they run commands,
touch files and fetch URLs with the server's privileges, for local trusted users only.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from ferrousforge.tools_server.base import ToolRequestError, ToolRuntimeError
from ferrousforge.tools_server.registry import ServerTools

log = logging.getLogger(__name__)
router = APIRouter()


def _error(status: int, message: str, kind: str) -> JSONResponse:
    return JSONResponse({"error": {"code": status, "message": message, "type": kind}}, status)


def _disabled() -> JSONResponse:
    return JSONResponse(
        {"error": {"message": "this feature is disabled", "type": "feature_disabled"}}, 403
    )


def _tools(request: Request) -> ServerTools:
    return request.app.state.server_tools


@router.get("/tools", include_in_schema=False)
async def list_tools(request: Request) -> Response:
    tools = _tools(request)
    if not tools.enabled:
        return _disabled()
    return JSONResponse([t.to_json() for t in await tools.tools()])


@router.post("/tools", include_in_schema=False)
async def call_tool(request: Request) -> Response:
    tools = _tools(request)
    if not tools.enabled:
        return _disabled()
    try:
        body = json.loads(await request.body())
        name = body["tool"]
        params = body.get("params") or {}
        stream = bool(body.get("stream", False))
        if not isinstance(name, str) or not isinstance(params, dict):
            raise TypeError("'tool' must be a string and 'params' an object")
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        return _error(400, f"invalid request: {e}", "invalid_request_error")
    headers = request.headers
    try:
        params = tools.request_params(
            params, headers.get("x-tool-cwd", ""), headers.get("x-tool-runtime", "")
        )
        if headers.get("x-resp-type"):
            params["resp_type"] = headers["x-resp-type"]
        tool = await tools.find(name, stream)
    except ToolRequestError as e:
        return _error(404, str(e), "invalid_request_error")
    except ToolRuntimeError as e:
        return _error(500, str(e), "server_error")
    if stream:
        return StreamingResponse(_stream(tool.invoke, params), media_type="text/event-stream")
    try:
        result = await tool.invoke(params, None)
    except (KeyError, TypeError, ValueError) as e:  # a missing or mistyped parameter
        return _error(500, f"invalid tool parameters: {e}", "server_error")
    return JSONResponse(result)


async def _stream(invoke: Any, params: dict[str, Any]) -> AsyncIterator[bytes]:
    """``{"chunk": ...}`` events as the tool pushes them, then ``{"done": true}``."""
    chunks: asyncio.Queue[str | None] = asyncio.Queue()

    async def push(chunk: str) -> bool:
        if chunk:
            await chunks.put(chunk)
        return True

    async def run() -> str:
        try:
            await invoke(params, push)
            return ""
        except Exception as e:  # reported in the last event, as llama-server does
            return str(e) or type(e).__name__
        finally:
            await chunks.put(None)

    task = asyncio.create_task(run())
    try:
        while (chunk := await chunks.get()) is not None:
            yield f"data: {json.dumps({'chunk': chunk})}\n\n".encode()
        error = await task
        done: dict[str, Any] = {"done": True}
        if error:
            done["error"] = error
        yield f"data: {json.dumps(done)}\n\n".encode()
    finally:  # the client left: stop the tool (its process is killed)
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
