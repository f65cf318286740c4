"""/tools and /cors-proxy through the real server, as llama-server serves them."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from live_server import free_port, live_server

TINY = str(Path(__file__).parent / "fixtures" / "mcp_tiny_server.py")
MCP = json.dumps({"mcpServers": {"tiny": {"command": sys.executable, "args": [TINY]}}})

pytestmark = [pytest.mark.integration, pytest.mark.server]


def test_tools_and_proxy_are_off_unless_asked_for() -> None:
    with live_server() as server:
        for method, path in [("GET", "/tools"), ("POST", "/tools"), ("GET", "/cors-proxy")]:
            res = httpx.request(method, server.url + path, json={})
            assert res.status_code == 403
            assert res.json()["error"]["type"] == "feature_disabled"


def test_tools_builtin_and_mcp(tmp_path: Path) -> None:
    args = ("--tools", "read_file,exec_shell_command", "--mcp-servers-json", MCP)
    with live_server(*args, "--ui-mcp-proxy") as server:
        tools = httpx.get(server.url + "/tools").json()
        names = [t["tool"] for t in tools]
        assert names[:2] == ["read_file", "exec_shell_command"]
        assert {"tiny_echo", "tiny_add"} <= set(names) and "write_file" not in names
        echo = next(t for t in tools if t["tool"] == "tiny_echo")
        assert echo["type"] == "mcp"
        assert echo["definition"]["function"]["name"] == "tiny_echo"
        assert echo["definition"]["function"]["parameters"]["type"] == "object"

        def post(tool: str, params: dict, **kw) -> httpx.Response:
            return httpx.post(server.url + "/tools", json={"tool": tool, "params": params}, **kw)

        (tmp_path / "note.txt").write_text("remember\n")
        res = post("read_file", {"path": "note.txt"}, headers={"x-tool-cwd": str(tmp_path)})
        assert res.json() == {"plain_text_response": "remember\n"}
        assert post("tiny_add", {"a": 1, "b": 2}).json() == {"plain_text_response": "3"}
        assert post("tiny_fail", {}).json() == {"error": "it failed"}
        assert post("write_file", {"path": "x", "content": ""}).status_code == 404
        res = post("exec_shell_command", {"command": "true"}, headers={"x-tool-runtime": "x:y"})
        assert res.status_code == 500 and "unknown tool runtime" in res.text

        body = {"tool": "exec_shell_command", "params": {"command": "echo hi"}, "stream": True}
        with httpx.stream("POST", server.url + "/tools", json=body) as res:
            events = [json.loads(ln[6:]) for ln in res.iter_lines() if ln.startswith("data: ")]
        assert events[-1] == {"done": True}
        assert "".join(e["chunk"] for e in events[:-1]) == "hi\n\n[exit code: 0]"

        res = httpx.get(server.url + "/cors-proxy", params={"url": server.url + "/v1/models"})
        assert res.status_code == 200 and "data" in res.json()


def _mcp_children(pid: int) -> list[int]:
    """The server's MCP fixture processes (Linux /proc)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (stat.parent / "cmdline").read_bytes()
        except (OSError, ValueError, IndexError):
            continue
        if ppid == pid and TINY.encode() in cmdline:
            out.append(int(stat.parent.name))
    return out


def test_shutdown_answers_a_tool_call_in_flight(tmp_path: Path) -> None:
    # Not live_server: this test stops the server itself.
    port = free_port()
    cmd = [sys.executable, "-m", "ferrousforge.cli.main", "serve", "--port", str(port)]
    with (tmp_path / "server.log").open("w") as log:
        proc = subprocess.Popen(
            [*cmd, "--threads", "2", "--mcp-servers-json", MCP], stdout=log, stderr=log
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, (tmp_path / "server.log").read_text()[-3000:]
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "server not ready"
            time.sleep(0.2)
        assert httpx.get(url + "/tools").status_code == 200  # warmup over
        answer: list[httpx.Response] = []
        body = {"tool": "tiny_sleep", "params": {"seconds": 60}}
        t = threading.Thread(
            target=lambda: answer.append(httpx.post(url + "/tools", json=body, timeout=90))
        )
        t.start()
        while not _mcp_children(proc.pid):  # the call has started its MCP server
            t.join(0.1)
        proc.send_signal(signal.SIGTERM)
        t.join(60)
        assert answer and answer[0].json() == {"error": "cancelled"}
        proc.wait(30)  # and the server exits
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(15)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--mcp-servers-json", "not json"], "failed to parse MCP config JSON"),
        (["--mcp-servers-config", "/nonexistent.json"], "failed to open MCP config file"),
        (["--tools", "read_file,rm_rf"], "unknown tool 'rm_rf'"),
    ],
)
def test_bad_tool_settings_stop_the_server(args: list[str], message: str) -> None:
    cmd = [sys.executable, "-m", "ferrousforge.cli.main", "serve", "--port", "0", *args]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and message in res.stderr
