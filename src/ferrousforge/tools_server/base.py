"""What every server tool is: a definition the model sees and an async ``invoke``."""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

# A streaming tool pushes text chunks through this; it returns False once the client is gone.
Push = Callable[[str], Awaitable[bool]]
Invoke = Callable[[dict[str, Any], Push | None], Awaitable[dict[str, Any]]]


class ToolRequestError(Exception):
    """A request no tool can serve (unknown tool, stream unsupported): HTTP 404."""


class ToolRuntimeError(Exception):
    """A tool call that cannot run at all (bad runtime): HTTP 500."""


@dataclass(frozen=True)
class ServerTool:
    """One tool as GET /tools lists it and POST /tools calls it."""

    name: str
    display_name: str
    kind: str  # "builtin" or "mcp"
    write: bool
    uses_cwd: bool
    description: str
    parameters: dict[str, Any]
    invoke: Invoke
    streams: bool = False

    def definition(self) -> dict[str, Any]:
        """The OpenAI function-calling definition of the tool."""
        return {
            "type": "function",
            "function": {
                "name": self.name,
                "description": self.description,
                "parameters": self.parameters,
            },
        }

    def to_json(self) -> dict[str, Any]:
        """The tool as llama-server's GET /tools lists it."""
        return {
            "display_name": self.display_name,
            "tool": self.name,
            "type": self.kind,
            "permissions": {"write": self.write},
            "uses_cwd": self.uses_cwd,
            "definition": self.definition(),
        }


def object_schema(properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    """A JSON schema for an object with these properties."""
    return {"type": "object", "properties": properties, "required": required}


def resolve(path: str, params: dict[str, Any]) -> str:
    """``path`` against the request's working directory (the x-tool-cwd header), if relative."""
    cwd = params.get("cwd") or ""
    if cwd and not os.path.isabs(path):
        return os.path.join(cwd, path)
    return path


_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_SSH_TARGET = re.compile(r"[A-Za-z0-9._@][A-Za-z0-9._@-]*")


def check_runtime(spec: str) -> None:
    """Refuse a tool runtime (x-tool-runtime) as llama-server does for bad ones, and every
    valid one too: FerrousForge runs tools on the host only, never silently in its place."""
    for engine in ("docker", "podman"):
        if spec.startswith(f"{engine}-container:"):
            cid = spec.removeprefix(f"{engine}-container:")
            if not _ID.fullmatch(cid):
                raise ToolRuntimeError(f"invalid container id: {cid}")
            break
        if spec.startswith(f"{engine}:"):
            raise ToolRuntimeError(f"tool runtime must name a running container: {spec}")
    else:
        if spec.startswith("ssh:"):
            target = spec.removeprefix("ssh:")
            if not target or target.startswith("-") or not _SSH_TARGET.fullmatch(target):
                raise ToolRuntimeError(f"invalid ssh target: {target}")
        else:
            raise ToolRuntimeError(f"unknown tool runtime: {spec}")
    raise ToolRuntimeError(f"tool runtime not supported by FerrousForge (host only): {spec}")


def threaded(fn: Callable[[dict[str, Any]], dict[str, Any]]) -> Invoke:
    """An invoke running ``fn`` in a worker thread: slow disks never stall the event loop."""

    async def invoke(params: dict[str, Any], _push: Push | None) -> dict[str, Any]:
        return await asyncio.to_thread(fn, params)

    return invoke


def text_lines(text: str) -> list[str]:
    """Lines as C++ getline reads them: no empty last line after a final newline."""
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return lines
