"""Built-in shell tools: exec_shell_command (streams when asked) and get_info."""

from __future__ import annotations

import asyncio
import contextlib
import os
import platform
import signal
from typing import Any

from ferrousforge.tools_server.base import Push, ServerTool, object_schema

MAX_OUTPUT = 16 * 1024
MAX_TIMEOUT_S = 60


def kill_group(proc: asyncio.subprocess.Process) -> None:
    """SIGKILL the process and everything it started (it leads its own session)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


async def run_command(
    argv: list[str], cwd: str | None, max_output: int, timeout: float, push: Push | None
) -> tuple[str, int, bool]:
    """(output, exit code, timed out): stdout and stderr together, the first ``max_output``
    bytes kept (and pushed as they come when ``push`` is given)."""
    proc = await asyncio.create_subprocess_exec(
        *argv,
        cwd=cwd or None,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,  # so a timeout kills its children too
    )
    assert proc.stdout is not None
    kept = bytearray()
    timed_out = False

    async def pump() -> None:
        while chunk := await proc.stdout.read(4096):
            room = max_output - len(kept)
            if room > 0:
                kept.extend(chunk[:room])
                if push is not None and not await push(chunk[:room].decode(errors="replace")):
                    return  # the client left: stop reading, the process is killed below

    try:
        await asyncio.wait_for(pump(), timeout)
    except TimeoutError:
        timed_out = True
    finally:
        if proc.returncode is None and (timed_out or push is not None):
            kill_group(proc)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(proc.wait(), 5)
    code = proc.returncode if proc.returncode is not None else -1
    return kept.decode(errors="replace"), code, timed_out


async def _exec_shell_command(params: dict[str, Any], push: Push | None) -> dict[str, Any]:
    command = str(params["command"])
    timeout = min(int(params.get("timeout", 10)), MAX_TIMEOUT_S)
    max_output = min(int(params.get("max_output_size", MAX_OUTPUT)), MAX_OUTPUT)
    try:
        output, code, timed_out = await run_command(
            ["sh", "-c", command], params.get("cwd"), max_output, timeout, push
        )
    except OSError as e:  # e.g. a cwd that does not exist
        output, code, timed_out = f"failed to run command: {e}", -1, False
        if push is not None:
            await push(output)
            output = ""
    tail = f"\n[exit code: {code}]" + (" [exit due to timed out]" if timed_out else "")
    if push is not None:
        await push(tail)
        return {}
    return {"plain_text_response": output + tail}


async def _get_info(params: dict[str, Any], _push: Push | None) -> dict[str, Any]:
    uname = " ".join(platform.uname()[:5]).strip() or "unknown"
    return {"os": uname, "cwd": params.get("cwd") or os.getcwd()}


def shell_tools() -> list[ServerTool]:
    """exec_shell_command and get_info."""
    return [
        ServerTool(
            "exec_shell_command",
            "Execute shell command",
            "builtin",
            write=True,
            uses_cwd=True,
            description="Execute a shell command and return its output (stdout and stderr "
            "combined).",
            parameters=object_schema(
                {
                    "command": {"type": "string", "description": "Shell command to execute"},
                    "timeout": {
                        "type": "integer",
                        "description": f"Timeout in seconds (default 10, max {MAX_TIMEOUT_S})",
                    },
                    "max_output_size": {
                        "type": "integer",
                        "description": f"Maximum output size in bytes (default {MAX_OUTPUT})",
                    },
                },
                ["command"],
            ),
            invoke=_exec_shell_command,
            streams=True,
        ),
        ServerTool(
            "get_info",
            "Get info",
            "builtin",
            write=False,
            uses_cwd=True,
            description="Returns runtime info: the OS name/version and the current working "
            "directory",
            parameters=object_schema({}, []),
            invoke=_get_info,
        ),
    ]
