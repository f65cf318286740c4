"""The tools a server offers: the built-ins ``--tools`` enables, then every MCP server's."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from ferrousforge.settings import ServerSettings
from ferrousforge.tools_server.base import (
    Push,
    ServerTool,
    ToolRequestError,
    check_runtime,
)
from ferrousforge.tools_server.files import file_tools
from ferrousforge.tools_server.mcp_config import load_mcp_servers
from ferrousforge.tools_server.mcp_manager import McpManager, McpToolDef
from ferrousforge.tools_server.search import search_tools
from ferrousforge.tools_server.shell import shell_tools

log = logging.getLogger(__name__)


def builtin_tools() -> list[ServerTool]:
    """Every built-in tool, in llama-server's order."""
    by_name = {t.name: t for t in [*file_tools(), *search_tools(), *shell_tools()]}
    order = ("read_file", "file_glob_search", "grep_search", "exec_shell_command")
    order += ("write_file", "edit_file", "get_info")
    return [by_name[n] for n in order]


def _mcp_tool(mcp: McpManager, d: McpToolDef) -> ServerTool:
    async def invoke(params: dict[str, Any], _push: Push | None) -> dict[str, Any]:
        args = {k: v for k, v in params.items() if k not in ("cwd", "runtime", "resp_type")}
        return await mcp.call_tool(d.server, d.name, args)

    return ServerTool(
        name=f"{d.server}_{d.name}",
        display_name=d.name,
        kind="mcp",
        write=True,  # unknown: assume the worst
        uses_cwd=False,
        description=d.description,
        parameters=d.input_schema,
        invoke=invoke,
    )


class ServerTools:
    """The /tools endpoint's state; ``enabled`` is False without --tools or MCP servers."""

    def __init__(self, settings: ServerSettings) -> None:
        wanted = set(settings.tools)
        self.builtins = [t for t in builtin_tools() if "all" in wanted or t.name in wanted]
        self.mcp = McpManager(
            load_mcp_servers(settings.mcp_servers_config, settings.mcp_servers_json)
        )
        self.enabled = bool(self.builtins or self.mcp.configs)
        self._ready: asyncio.Task[None] | None = None
        self._tools: list[ServerTool] | None = None

    def start(self) -> None:
        """Discover the MCP servers' tools in the background (the app starts meanwhile)."""
        if self.mcp.configs and self._ready is None:
            self._ready = asyncio.create_task(self.mcp.warmup())

    async def tools(self) -> list[ServerTool]:
        """Built-ins, then MCP tools named <server>_<tool> (a name already taken is skipped)."""
        if self._tools is None:
            if self._ready is not None:
                await asyncio.shield(self._ready)
            tools = list(self.builtins)
            seen = {t.name for t in tools}
            for d in self.mcp.tools:
                tool = _mcp_tool(self.mcp, d)
                if tool.name in seen:
                    log.warning("MCP tool %s collides with another tool, skipping", tool.name)
                    continue
                seen.add(tool.name)
                tools.append(tool)
            self._tools = tools
        return self._tools

    async def find(self, name: str, stream: bool) -> ServerTool:
        """The tool called ``name``; ToolRequestError if none, or if it cannot stream."""
        for tool in await self.tools():
            if tool.name == name:
                if stream and not tool.streams:
                    raise ToolRequestError(f'tool "{name}" does not support stream = true')
                return tool
        raise ToolRequestError(f'unknown tool "{name}"')

    @staticmethod
    def request_params(params: dict[str, Any], cwd: str, runtime: str) -> dict[str, Any]:
        """The params with the headers' cwd and runtime in place of any the model gave."""
        params = {k: v for k, v in params.items() if k not in ("cwd", "runtime")}
        if cwd:
            params["cwd"] = cwd
        if runtime:
            check_runtime(runtime)  # always raises: tools run on the host only
        return params

    def begin_shutdown(self) -> None:
        """Calls in flight answer at once (see McpManager.begin_shutdown)."""
        self.mcp.begin_shutdown()

    async def close(self) -> None:
        """Stop discovery and every MCP server."""
        if self._ready is not None and not self._ready.done():
            self._ready.cancel()
            await asyncio.gather(self._ready, return_exceptions=True)
        await self.mcp.close()
