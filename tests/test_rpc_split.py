"""The default model split over two `ferrousforge rpc-worker`s on loopback ports
(about 30 s: `make test-rpc` runs these alone)."""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import openai
import pytest
from live_server import free_port, live_server, write_models_config

from ferrousforge.api.request import InferenceOptions
from ferrousforge.errors import RemoteWorkerError
from ferrousforge.inference.backend import AcceleratorType, BackendConfig, BackendInput
from ferrousforge.inference.backends.llama_cpp.backend import LlamaCppBackend

pytestmark = pytest.mark.integration
PROMPT = "The three primary colours are"
GREEDY = InferenceOptions(temperature=0.0, max_tokens=32)


@contextmanager
def rpc_worker(log: Path, port: int | None = None) -> Iterator[tuple[str, subprocess.Popen]]:
    """A worker on a free loopback port, ready (it accepts a TCP connection) when yielded."""
    port = port or free_port()
    cmd = [sys.executable, "-m", "ferrousforge.cli.main", "rpc-worker"]
    with log.open("a") as out:
        proc = subprocess.Popen(
            [*cmd, "--host", "127.0.0.1", "--port", str(port), "--threads", "1"],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, f"rpc-worker exited:\n{log.read_text()}"
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, f"rpc-worker not up:\n{log.read_text()}"
                time.sleep(0.2)
        yield f"127.0.0.1:{port}", proc
    finally:
        proc.kill()
        proc.wait(10)


@contextmanager
def two_workers(tmp: Path) -> Iterator[list[tuple[str, subprocess.Popen]]]:
    with rpc_worker(tmp / "w1.log") as w1, rpc_worker(tmp / "w2.log") as w2:
        yield [w1, w2]


async def test_split_over_two_workers_gives_the_local_greedy_output(model_path, tmp_path) -> None:
    backend = LlamaCppBackend()
    base = dict(num_threads=1, context_size=512, max_parallel=2)
    local = backend.load_model_sync(model_path, BackendConfig(**base), AcceleratorType.Cpu())
    want = await backend.infer(local.handle, BackendInput.Text(PROMPT), GREEDY)
    await backend.unload_model(local.handle)
    with two_workers(tmp_path) as workers:
        config = BackendConfig(**base, rpc_servers=[w[0] for w in workers], tensor_split=[1, 1])
        split = backend.load_model_sync(model_path, config, AcceleratorType.Cpu())
        try:
            got = await backend.infer(split.handle, BackendInput.Text(PROMPT), GREEDY)
            both = await backend.infer_batch(
                split.handle, [BackendInput.Text(PROMPT), BackendInput.Text("Hello")], GREEDY
            )
        finally:
            await backend.unload_model(split.handle)
        for name in ("w1", "w2"):  # each worker served the head
            assert "Accepted client connection" in (tmp_path / f"{name}.log").read_text()
    assert len(want.token_ids) == 32
    assert got.token_ids == want.token_ids
    assert got.text == want.text
    assert both[0].token_ids == want.token_ids  # batched with another sequence too


def test_run_over_two_workers_prints_the_local_greedy_output(model_path, tmp_path) -> None:
    """`ferrousforge run --rpc` as a user types it: the same text as the local run."""

    def run(*extra: str) -> str:
        args = ["run", str(model_path), PROMPT, "--raw", "--max-tokens", "24",
                "--temperature", "0", "--threads", "1", "--ctx-size", "512", *extra]  # fmt: skip
        p = subprocess.run(
            [sys.executable, "-m", "ferrousforge.cli.main", *args],
            capture_output=True, text=True, timeout=180,
        )  # fmt: skip
        assert p.returncode == 0, p.stderr
        return p.stdout

    local = run()
    with two_workers(tmp_path) as workers:
        split = run("--rpc", ",".join(w[0] for w in workers), "--tensor-split", "1,1")
    assert local.strip() and split == local


async def test_embeddings_over_two_workers_equal_the_local_ones(model_path, tmp_path) -> None:
    """The embedding context is made in the child, on the workers' weights; batched."""
    backend = LlamaCppBackend()
    base = dict(num_threads=1, context_size=512, max_parallel=2, embedding_batch=256)
    texts = ["red apples", "The three primary colours are", "a much longer sentence " * 4]
    local = backend.load_model_sync(model_path, BackendConfig(**base), AcceleratorType.Cpu())
    want = await backend.embed(local.handle, texts)
    await backend.unload_model(local.handle)
    with two_workers(tmp_path) as workers:
        config = BackendConfig(**base, rpc_servers=[w[0] for w in workers], tensor_split=[1, 1])
        split = backend.load_model_sync(model_path, config, AcceleratorType.Cpu())
        try:
            got = await backend.embed(split.handle, texts)
            decodes = split.engine.stats.embedding_decodes
            text = await backend.infer(split.handle, BackendInput.Text(PROMPT), GREEDY)
        finally:
            await backend.unload_model(split.handle)
    assert got.vectors.shape == want.vectors.shape == (3, want.vectors.shape[1])
    assert decodes == 1 and got.token_counts == want.token_counts
    for a, b in zip(got.vectors, want.vectors, strict=True):
        # Not bit-equal: the workers' backend runs other kernels (Gemma 3: 0.9994)
        assert float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b))) > 0.999
    assert len(text.token_ids) == 32  # generation beside it still works


def _complete(client: openai.OpenAI, model: str, **kw) -> str:
    r = client.completions.create(model=model, prompt=PROMPT, max_tokens=24, temperature=0, **kw)
    return r.choices[0].text


def test_serve_rpc_survives_a_lost_worker(model_path, tmp_path) -> None:
    with two_workers(tmp_path) as workers:
        endpoints = [w[0] for w in workers]
        config = write_models_config(
            tmp_path / "models.toml",
            [
                {"alias": "split", "path": str(model_path), "rpc": endpoints},
                {"alias": "local", "path": str(model_path), "rpc": []},
            ],
        )
        args = ["--config", str(config), "--tensor-split", "1,1", "-c", "4096", "-np", "2"]
        with live_server(*args, "--rpc-timeout", "30", log_dir=tmp_path) as server:
            client = openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0)
            local_text = _complete(client, "local")
            assert _complete(client, "split") == local_text
            vectors = [
                client.embeddings.create(model=m, input=PROMPT).data[0].embedding
                for m in ("split", "local")
            ]
            assert float(np.dot(*vectors)) > 0.999  # unit vectors: their cosine

            # A worker dies while a long answer streams: the stream ends with an error.
            stream = client.completions.create(
                model="split",
                prompt=PROMPT,
                max_tokens=1000,
                temperature=0,
                stream=True,
                extra_body={"ignore_eos": True},
                timeout=60,
            )
            killed_at = 0.0
            with pytest.raises(openai.APIError) as err:
                for i, _chunk in enumerate(stream):
                    if i == 3:
                        workers[1][1].kill()
                        killed_at = time.monotonic()
            waited = time.monotonic() - killed_at
            assert killed_at and waited < 30, f"the error took {waited:.1f} s"
            assert "rpc" in str(err.value) and "worker" in str(err.value)

            # The other model is untouched; the split one answers 502 while its worker is gone.
            assert _complete(client, "local") == local_text
            with pytest.raises(openai.APIStatusError) as down:
                _complete(client, "split")
            assert down.value.status_code == 502
            assert f"{endpoints[1]} is not reachable" in str(down.value)
            with pytest.raises(openai.APIStatusError) as down:
                client.embeddings.create(model="split", input=PROMPT)
            assert down.value.status_code == 502

            # The worker comes back on its port: the next request reconnects.
            port = int(endpoints[1].rsplit(":", 1)[1])
            with rpc_worker(tmp_path / "w2b.log", port):
                assert _complete(client, "split") == local_text


async def test_a_paused_worker_is_a_timeout_not_a_hang(model_path, tmp_path) -> None:
    backend = LlamaCppBackend()
    with two_workers(tmp_path) as workers:
        config = BackendConfig(
            num_threads=1,
            context_size=512,
            max_parallel=1,
            rpc_servers=[w[0] for w in workers],
            rpc_step_timeout_s=3,
        )
        split = backend.load_model_sync(model_path, config, AcceleratorType.Cpu())
        paused = workers[0][1]
        try:
            paused.send_signal(signal.SIGSTOP)
            t0 = time.monotonic()
            with pytest.raises(RemoteWorkerError, match="no answer from the workers"):
                await asyncio.wait_for(
                    backend.infer(split.handle, BackendInput.Text(PROMPT), GREEDY), 30
                )
            assert time.monotonic() - t0 < 10
        finally:
            paused.send_signal(signal.SIGCONT)
            await backend.unload_model(split.handle)
