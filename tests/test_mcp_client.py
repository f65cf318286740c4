"""MCP servers over stdio (model-free): discovery, calls, errors, respawn, timeouts, shutdown."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

import pytest

from ferrousforge.tools_server.mcp_config import McpServerConfig, load_mcp_servers
from ferrousforge.tools_server.mcp_manager import McpManager

TINY = str(Path(__file__).parent / "fixtures" / "mcp_tiny_server.py")


def tiny(name: str = "tiny", *args: str, timeout_ms: int = 30_000) -> McpServerConfig:
    return McpServerConfig(name, sys.executable, [TINY, *args], timeout_ms=timeout_ms)


async def started(*configs: McpServerConfig) -> McpManager:
    mcp = McpManager(list(configs))
    await mcp.warmup()
    return mcp


async def test_warmup_lists_each_servers_tools_and_a_bad_command_lists_none() -> None:
    bad = McpServerConfig("bad", "this_command_does_not_exist_ff")
    mcp = await started(tiny("a"), tiny("b"), bad)
    try:
        names = {(t.server, t.name) for t in mcp.tools}
        assert {("a", "echo"), ("a", "add"), ("b", "echo")} <= names
        assert not any(t.server == "bad" for t in mcp.tools)
        echo = next(t for t in mcp.tools if t.name == "echo")
        assert echo.input_schema["properties"]["message"] == {"type": "string"}
        assert await mcp.call_tool("bad", "x", {}) == {"error": "MCP server unavailable: bad"}
    finally:
        await mcp.close()


async def test_calls_skip_notifications_and_noise_and_report_errors() -> None:
    mcp = await started(tiny())
    try:
        assert await mcp.call_tool("tiny", "echo", {"message": "hi"}) == {
            "plain_text_response": "echo: hi"
        }
        assert await mcp.call_tool("tiny", "add", {"a": 2, "b": 3}) == {"plain_text_response": "5"}
        assert await mcp.call_tool("tiny", "fail", {}) == {"error": "it failed"}
        assert await mcp.call_tool("tiny", "boom", {}) == {"error": "boom!"}
    finally:
        await mcp.close()


async def test_concurrent_calls_each_get_their_own_answer() -> None:
    mcp = await started(tiny())
    try:
        results = await asyncio.gather(
            *(mcp.call_tool("tiny", "echo", {"message": str(i)}) for i in range(20))
        )
        assert results == [{"plain_text_response": f"echo: {i}"} for i in range(20)]
    finally:
        await mcp.close()


async def test_a_crashed_server_is_started_again_on_the_next_call() -> None:
    mcp = await started(tiny())
    try:
        assert await mcp.call_tool("tiny", "crash", {}) == {"plain_text_response": "bye"}
        await asyncio.sleep(0.5)  # let it exit
        assert await mcp.call_tool("tiny", "echo", {"message": "again"}) == {
            "plain_text_response": "echo: again"
        }
    finally:
        await mcp.close()


async def test_a_call_past_timeout_ms_is_an_error_and_the_server_restarts() -> None:
    mcp = await started(tiny(timeout_ms=300))
    try:
        assert await mcp.call_tool("tiny", "sleep", {"seconds": 30}) == {
            "error": "request timed out"
        }
        assert await mcp.call_tool("tiny", "echo", {"message": "x"}) == {
            "plain_text_response": "echo: x"
        }
    finally:
        await mcp.close()


async def test_shutdown_answers_calls_in_flight_and_kills_grandchildren(tmp_path: Path) -> None:
    pid_file = tmp_path / "grandchild.pid"
    mcp = await started(tiny("gc", "--grandchild", str(pid_file)))
    pid_file.unlink()  # the warmup's grandchild: gone with its server (checked below)
    call = asyncio.create_task(mcp.call_tool("gc", "sleep", {"seconds": 60}))
    while not pid_file.exists():
        await asyncio.sleep(0.05)
    grandchild = int(pid_file.read_text())
    mcp.begin_shutdown()
    assert await call == {"error": "cancelled"}
    await mcp.close()
    for _ in range(100):  # killed, then reaped by init
        try:
            os.kill(grandchild, 0)
        except ProcessLookupError:
            break
        await asyncio.sleep(0.05)
    else:
        pytest.fail("the MCP server's child outlived it")


def test_config_file_and_inline_json(tmp_path: Path) -> None:
    path = tmp_path / "mcp.json"
    path.write_text(json.dumps({"mcpServers": {"a": {"command": "x", "args": ["1"]}}}))
    inline = json.dumps(
        {"mcpServers": {"a": {"command": "dup"}, "b": {"command": "y", "env": {"K": "v"}}}}
    )
    servers = load_mcp_servers(str(path), inline)
    assert [(s.name, s.command, s.args, s.env) for s in servers] == [
        ("a", "x", ["1"], {}),
        ("b", "y", [], {"K": "v"}),
    ]
    with pytest.raises(ValueError, match="failed to parse MCP config JSON"):
        load_mcp_servers(None, "not json")
    with pytest.raises(ValueError, match="failed to open MCP config file"):
        load_mcp_servers(str(tmp_path / "missing.json"), None)
