"""The parent's end of a bench worker process (see worker.py): start, ask, close."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

import ferrousforge
from ferrousforge import errors
from ferrousforge.bench.worker import Shape


class WorkerError(errors.FerrousForgeError):
    """A worker died or answered something that is not the protocol."""


class WorkerProcess:
    """One side (engine or raw) loaded in its own process, answering one command at a time."""

    def __init__(self, side: str, shape: Shape) -> None:
        self.side = side
        # llama.cpp's log goes here, shown only when the worker fails.
        self._log = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 (closed in close())
        # The worker imports the same ferrousforge as this process, wherever that came from.
        src = str(Path(ferrousforge.__file__).resolve().parents[1])
        path = [src, *filter(None, [os.environ.get("PYTHONPATH")])]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(path)}
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "ferrousforge.bench.worker", side],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
            bufsize=1,
        )
        self.ready = self._ask(asdict(shape))
        self.pid = self.ready["pid"]

    def _ask(self, msg: dict) -> dict:
        assert self._proc.stdin and self._proc.stdout
        try:
            self._proc.stdin.write(json.dumps(msg) + "\n")
            self._proc.stdin.flush()
        except BrokenPipeError:
            pass  # the read below reports the exit
        line = self._proc.stdout.readline()
        if not line:
            self._proc.wait(timeout=30)
            raise WorkerError(
                f"{self.side} worker exited with code {self._proc.returncode}:\n{self._log_tail()}"
            )
        answer = json.loads(line)
        if not answer.get("ok"):
            self.close()
            # The worker's own typed error (e.g. no GPU in this library) keeps its type.
            cls = getattr(errors, answer.get("type", ""), None)
            if not (isinstance(cls, type) and issubclass(cls, errors.FerrousForgeError)):
                cls = errors.FerrousForgeError
            raise cls(answer.get("error", "worker failed"))
        return answer

    def ask(self, op: str, **args) -> dict:
        """Run one command in the worker; its answer."""
        return self._ask({"op": op, **args})

    def _log_tail(self, n: int = 20) -> str:
        self._log.seek(0)
        return "".join(self._log.readlines()[-n:])

    def close(self) -> None:
        """Ask the worker to free its model and exit; kill it if it does not."""
        if self._proc.poll() is None:
            try:
                assert self._proc.stdin
                self._proc.stdin.write(json.dumps({"op": "quit"}) + "\n")
                self._proc.stdin.close()
                self._proc.wait(timeout=30)
            except (BrokenPipeError, subprocess.TimeoutExpired):
                self._proc.kill()
                self._proc.wait()
        if self._proc.stdout:
            self._proc.stdout.close()
        self._log.close()

    def __enter__(self) -> WorkerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
