"""The configured MCP servers: tools discovered at startup, a process per server on demand.

As llama-server does, each server is started once at startup to list its tools and stopped;
the first call to one of its tools starts it again, and a server that died (or timed out) is
started afresh on the next call. A server that fails to start is left alone for a few seconds.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

from ferrousforge.tools_server.mcp_client import McpClient, McpError
from ferrousforge.tools_server.mcp_config import McpServerConfig

log = logging.getLogger(__name__)

WARMUP_TIMEOUT_S = 10.0  # per server: a stuck one must not hold startup
COOLDOWN_S = 5.0  # after a failed start, calls fail fast for this long


@dataclass(frozen=True)
class McpToolDef:
    """One tool an MCP server reported."""

    server: str
    name: str
    description: str
    input_schema: dict[str, Any]


def result_text(result: dict[str, Any]) -> dict[str, Any]:
    """llama-server's shape for a tools/call result: its text parts joined, or its error."""
    parts = result.get("content")
    texts = [
        str(p.get("text", ""))
        for p in (parts if isinstance(parts, list) else [])
        if isinstance(p, dict) and p.get("type") == "text"
    ]
    text = "\n".join(texts)
    if result.get("isError"):
        return {"error": text or "MCP tool returned an error"}
    return {"plain_text_response": text}


class McpManager:
    """Owns the MCP server processes; every method is safe to call concurrently."""

    def __init__(self, configs: list[McpServerConfig]) -> None:
        self.configs = {c.name: c for c in configs}
        self.tools: list[McpToolDef] = []
        self._clients: dict[str, McpClient] = {}
        self._locks = {name: asyncio.Lock() for name in self.configs}
        self._dead_until: dict[str, float] = {}
        self._stopping = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None

    async def warmup(self) -> None:
        """Start every server, list its tools, stop it (all at once; failures logged)."""
        self._loop = asyncio.get_running_loop()
        found = await asyncio.gather(*(self._discover(c) for c in self.configs.values()))
        self.tools = [t for tools in found for t in tools]

    async def _discover(self, cfg: McpServerConfig) -> list[McpToolDef]:
        client = McpClient(cfg)
        try:
            await client.start(WARMUP_TIMEOUT_S)
            result = await client.request("tools/list", {}, WARMUP_TIMEOUT_S)
        except McpError as e:
            log.warning("MCP warmup: '%s' failed: %s", cfg.name, e)
            return []
        finally:
            await client.close()
        tools = []
        for t in result.get("tools") or []:
            if isinstance(t, dict) and t.get("name"):
                schema = t.get("inputSchema")
                tools.append(
                    McpToolDef(
                        cfg.name,
                        str(t["name"]),
                        str(t.get("description", "")),
                        schema if isinstance(schema, dict) else {},
                    )
                )
        log.info("MCP warmup: '%s' discovered %d tools", cfg.name, len(tools))
        return tools

    async def call_tool(self, server: str, tool: str, arguments: dict[str, Any]) -> dict[str, Any]:
        """The tool's result as POST /tools answers it (``error`` on any failure)."""
        cfg = self.configs[server]
        client = await self._client(server)
        if client is None:
            return {"error": f"MCP server unavailable: {server}"}
        call = asyncio.ensure_future(
            client.request(
                "tools/call", {"name": tool, "arguments": arguments}, cfg.timeout_ms / 1000
            )
        )
        stop = asyncio.ensure_future(self._stopping.wait())
        try:
            await asyncio.wait({call, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
        if not call.done():  # the server is shutting down: answer now, not after the call
            call.cancel()
            return {"error": "cancelled"}
        try:
            return result_text(call.result())
        except McpError as e:
            if str(e) == "request timed out":  # it may never answer: start afresh next time
                await self._drop(server, client)
            return {"error": str(e)}

    async def _client(self, server: str) -> McpClient | None:
        async with self._locks[server]:
            if self._stopping.is_set():
                return None
            client = self._clients.get(server)
            if client is not None and client.alive:
                return client
            if client is not None:
                log.warning("MCP '%s' is no longer alive: restarting it", server)
                self._clients.pop(server)
                await client.close()
            if time.monotonic() < self._dead_until.get(server, 0.0):
                return None
            fresh = McpClient(self.configs[server])
            try:
                await fresh.start(self.configs[server].timeout_ms / 1000)
            except McpError as e:
                log.warning("MCP '%s': failed to start: %s", server, e)
                await fresh.close()
                self._dead_until[server] = time.monotonic() + COOLDOWN_S
                return None
            self._clients[server] = fresh
            return fresh

    async def _drop(self, server: str, client: McpClient) -> None:
        async with self._locks[server]:
            if self._clients.get(server) is client:
                del self._clients[server]
        await client.close()

    def begin_shutdown(self) -> None:
        """Answer calls in flight at once (the server is stopping); safe from a signal handler."""
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._stopping.set)

    async def close(self) -> None:
        """Stop every server process."""
        self._stopping.set()
        clients, self._clients = list(self._clients.values()), {}
        await asyncio.gather(*(c.close() for c in clients))
