"""A real `ferrousforge serve` in a subprocess, for the tests that talk HTTP to it.

    with live_server("--parallel", "2", env={"FERROUSFORGE_API_KEY": KEY}) as server:
        httpx.get(server.url + "/health")

It binds a free port on 127.0.0.1, waits for /health, and stops the process on exit. The
server's stdout and stderr go to a log file (a pipe nobody reads would block the server once
full): a server that fails to start, or dies while the tests run, fails with the end of its
log, and a failed test gets the log lines written while it ran (see `pytest_runtest_makereport`,
which conftest registers).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

READY_S = 120  # loading several models on a loaded 2-core machine takes a while
TAIL_CHARS = 4000


@dataclass
class LiveServer:
    url: str
    proc: subprocess.Popen
    log: Path
    _seen: int = field(default=0, repr=False)  # log offset at the start of the current test

    def log_tail(self, chars: int = TAIL_CHARS) -> str:
        return self.log.read_text(errors="replace")[-chars:]

    def log_since(self, offset: int) -> str:
        with self.log.open("rb") as f:
            f.seek(offset)
            return f.read().decode(errors="replace")


_running: list[LiveServer] = []


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_models_config(path: Path, models: list[dict[str, Any]]) -> Path:
    """A TOML config holding one ``[[models]]`` table per dict (string, int or bool values)."""
    lines = []
    for model in models:
        lines.append("[[models]]")
        # A JSON string or number is a valid TOML value (basic strings share the escapes).
        lines += [f"{key} = {json.dumps(value)}" for key, value in model.items()]
        lines.append("")
    path.write_text("\n".join(lines))
    return path


def _wait_ready(server: LiveServer, ready_s: float) -> None:
    deadline = time.monotonic() + ready_s
    while True:
        if server.proc.poll() is not None:
            pytest.fail(f"server exited ({server.proc.returncode}):\n{server.log_tail()}")
        try:
            if httpx.get(server.url + "/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            pytest.fail(f"server not ready after {ready_s} s:\n{server.log_tail()}")
        time.sleep(0.2)


@contextmanager
def live_server(
    *args: str,
    env: dict[str, str] | None = None,
    log_dir: Path | None = None,
    ready_s: float = READY_S,
    port: int | None = None,
) -> Iterator[LiveServer]:
    """Run ``ferrousforge serve --port <free> --threads 2 *args`` until the block ends.

    ``env`` adds to the current environment; the log is ``log_dir/server.log`` (a temporary
    folder if not given). A later ``--threads`` in ``args`` overrides the default.
    """
    with tempfile.TemporaryDirectory(prefix="ferrousforge-server-") as tmp:
        log = Path(log_dir or tmp) / "server.log"
        port = port or free_port()
        cmd = [sys.executable, "-m", "ferrousforge.cli.main", "serve", "--port", str(port)]
        with log.open("w") as out:
            proc = subprocess.Popen(
                [*cmd, "--threads", "2", *args],
                env={**os.environ, **(env or {})},
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        server = LiveServer(f"http://127.0.0.1:{port}", proc, log)
        try:
            _wait_ready(server, ready_s)
            _running.append(server)
            yield server
            if proc.poll() is not None:
                pytest.fail(
                    f"server died during the tests ({proc.returncode}):\n{server.log_tail()}"
                )
        finally:
            if server in _running:
                _running.remove(server)
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(15)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    """Remember where each running server's log stands when a test starts; if the test then
    fails, add what the servers logged meanwhile to its report."""
    outcome = yield
    report = outcome.get_result()
    if call.when == "setup":
        for server in _running:
            server._seen = server.log.stat().st_size
    elif report.failed:
        for server in _running:
            text = server.log_since(server._seen)
            if text:
                report.sections.append((f"server log {server.url}", text[-TAIL_CHARS:]))
