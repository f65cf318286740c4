"""One MCP server process: JSON-RPC 2.0 over its stdin/stdout, one JSON message per line.

Requests are matched to answers by id, so concurrent calls share the process; lines that are
not answers (notifications, noise) are skipped. Everything is asyncio: a slow or stuck server
only delays the calls waiting on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
import signal
from typing import Any

from ferrousforge.tools_server.mcp_config import McpServerConfig

log = logging.getLogger(__name__)

PROTOCOL_VERSION = "2024-11-05"
LINE_LIMIT = 64 * 1024 * 1024  # the longest message line read


class McpError(Exception):
    """The MCP server could not answer (spawn failed, closed, timed out, or said error)."""


class McpClient:
    """A running MCP server; ``start()`` spawns and initialises it, ``close()`` kills it."""

    def __init__(self, config: McpServerConfig) -> None:
        self.config = config
        self._proc: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._ids = itertools.count(1)
        self._write_lock = asyncio.Lock()

    @property
    def alive(self) -> bool:
        return (
            self._proc is not None
            and self._proc.returncode is None
            and self._reader is not None
            and not self._reader.done()
        )

    async def start(self, timeout: float) -> None:
        """Spawn the server and run the MCP handshake; McpError if either fails."""
        cfg = self.config
        try:
            self._proc = await asyncio.create_subprocess_exec(
                cfg.command,
                *cfg.args,
                cwd=cfg.cwd,
                env={**os.environ, **cfg.env},
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=None,  # its diagnostics go to our log stream
                limit=LINE_LIMIT,
                start_new_session=True,  # close() kills what it starts too
            )
        except OSError as e:
            raise McpError(f"failed to spawn '{cfg.command}': {e}") from None
        self._reader = asyncio.create_task(self._read())
        init = {
            "protocolVersion": PROTOCOL_VERSION,
            "capabilities": {},
            "clientInfo": {"name": "ferrousforge", "version": "1.0"},
        }
        await self.request("initialize", init, timeout)
        await self._send({"jsonrpc": "2.0", "method": "notifications/initialized"})

    async def request(self, method: str, params: dict[str, Any], timeout: float) -> dict[str, Any]:
        """The ``result`` of one request; McpError with the server's message otherwise."""
        if not self.alive:
            raise McpError("transport closed")
        rid = next(self._ids)
        answer: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[rid] = answer
        try:
            await self._send({"jsonrpc": "2.0", "id": rid, "method": method, "params": params})
            msg = await asyncio.wait_for(answer, timeout)
        except TimeoutError:
            raise McpError("request timed out") from None
        finally:
            self._pending.pop(rid, None)
        if "error" in msg:
            err = msg["error"]
            raise McpError(
                err.get("message", "unknown error") if isinstance(err, dict) else str(err)
            )
        result = msg.get("result")
        if not isinstance(result, dict):
            raise McpError("invalid response from MCP server")
        return result

    async def _send(self, message: dict[str, Any]) -> None:
        assert self._proc is not None and self._proc.stdin is not None
        try:
            async with self._write_lock:
                self._proc.stdin.write(json.dumps(message).encode() + b"\n")
                await self._proc.stdin.drain()
        except (ConnectionError, RuntimeError) as e:
            raise McpError(f"transport closed: {e}") from None

    async def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        try:
            while line := await self._proc.stdout.readline():
                try:
                    msg = json.loads(line)
                except ValueError:
                    continue  # not JSON-RPC: ignored, as a notification is
                if not isinstance(msg, dict) or ("result" not in msg and "error" not in msg):
                    continue  # a notification or a request from the server
                waiter = self._pending.get(msg.get("id"))  # type: ignore[arg-type]
                if waiter is not None and not waiter.done():
                    waiter.set_result(msg)
        except (ValueError, OSError) as e:  # a line over LINE_LIMIT, a broken pipe
            log.warning("MCP '%s': cannot read its output: %s", self.config.name, e)
        finally:
            for waiter in self._pending.values():
                if not waiter.done():
                    waiter.set_exception(McpError("transport closed"))

    def fail_pending(self, reason: str) -> None:
        """Answer every waiting request with ``reason`` (the server is shutting down)."""
        for waiter in self._pending.values():
            if not waiter.done():
                waiter.set_exception(McpError(reason))

    async def close(self) -> None:
        """Kill the server and anything it started; never waits on its pipes."""
        proc, self._proc = self._proc, None
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader
        self.fail_pending("transport closed")
        if proc is None:
            return
        # The whole group, even after the server exited: its children would outlive it.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        if proc.stdin is not None:
            proc.stdin.close()
        # A grandchild may hold the pipes open: bound the wait, never block on EOF.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(proc.wait(), 1)
