"""Tiny real runs of both benchmarks: the engine bench on the default model, and the
serve bench against an in-process fake OpenAI streaming server. No speed asserts."""

from __future__ import annotations

import asyncio
import json
import math
import socket
import threading
import time

import pytest
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

from ferrousforge.bench.engine_bench import EngineBenchConfig, format_report, run_engine_bench
from ferrousforge.bench.serve_bench import ServeBenchConfig, format_serve, run_serve_bench


@pytest.mark.integration
def test_tiny_engine_bench_gives_sane_numbers(model_path):
    cfg = EngineBenchConfig(
        model=model_path,
        levels=[2],
        prompt_tokens=16,
        gen_tokens=8,
        pp_tokens=32,
        tg_tokens=8,
        repeat=1,
    )
    report = asyncio.run(run_engine_bench(cfg))
    (lv,) = report.levels
    assert lv.sequences == 2 and lv.complete
    for value in (
        lv.engine_tg_tps,
        lv.raw_tg_tps,
        lv.engine_e2e_tps,
        lv.raw_e2e_tps,
        lv.engine_ttft_p50_s,
        lv.raw_ttft_p50_s,
    ):
        assert value > 0 and math.isfinite(value)
    assert 1.0 <= lv.mean_batch <= 2.0
    assert [s.test for s in report.single] == ["pp32", "tg8"]
    assert all(s.engine_tps > 0 and s.raw_tps > 0 for s in report.single)
    assert "pp32" in format_report(report)
    assert "threads, greedy, EOS ignored, no prefix cache, CPU" in format_report(report)


@pytest.mark.integration
def test_engine_bench_on_the_gpu_needs_a_gpu_library(model_path, capsys):
    """--gpu loads with the GPU backend; a CPU-only libllama is a message, not a traceback."""
    from ferrousforge.bench.cli import main
    from ferrousforge.inference.backends.llama_cpp.library import load_library

    if load_library(None).llama_supports_gpu_offload():
        pytest.skip("this libllama can offload: the GPU check (gpu/) runs the bench there")
    args = ["engine", "--gpu", "--n-gpu-layers", "4", "--model", str(model_path)]
    assert main([*args, "--levels", "1", "--pp", "0", "--tg", "0", "--gen-tokens", "2"]) == 1
    assert "has no GPU support" in capsys.readouterr().err


def _fake_server(short_by: int) -> FastAPI:
    """Streams max_tokens one-token chunks (minus ``short_by``), then usage-less [DONE].

    A prompt containing "FAIL" gets HTTP 500.
    """
    app = FastAPI()

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": "fake-model", "object": "model"}]}

    @app.post("/v1/completions")
    async def completions(req: Request):
        body = await req.json()
        if "FAIL" in body["prompt"] or body["model"] != "fake-model":
            return JSONResponse({"error": {"message": "nope"}}, status_code=500)
        n = body["max_tokens"] - short_by

        async def events():
            for i in range(n):
                await asyncio.sleep(0.001)
                chunk = {"choices": [{"index": 0, "text": f" t{i}", "finish_reason": None}]}
                yield f"data: {json.dumps(chunk)}\n\n"
            yield f"data: {json.dumps({'choices': [{'text': '', 'finish_reason': 'length'}]})}\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    return app


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def fake_servers():
    """Two fake servers: one that delivers every token, one that stops one short."""
    servers, urls = [], []
    for name, short_by in (("full", 0), ("short", 1)):
        port = _free_port()
        server = uvicorn.Server(
            uvicorn.Config(_fake_server(short_by), host="127.0.0.1", port=port, log_level="warning")
        )
        threading.Thread(target=server.run, daemon=True).start()
        servers.append(server)
        urls.append(f"{name}=http://127.0.0.1:{port}/v1")
    deadline = time.monotonic() + 10
    while not all(s.started for s in servers):
        assert time.monotonic() < deadline, "fake server did not start"
        time.sleep(0.02)
    yield urls
    for s in servers:
        s.should_exit = True


def test_serve_bench_counts_tokens_and_completeness(fake_servers):
    cfg = ServeBenchConfig(urls=fake_servers, concurrency=[1, 3], requests=5, max_tokens=6)
    report = asyncio.run(run_serve_bench(cfg))
    full, short = report.servers
    assert full.name == "full" and full.model == "fake-model"
    for lv in full.levels:
        assert lv.requests == 5 and lv.errors == 0 and lv.complete
        assert lv.tokens == 30 and lv.counted_by == "chunks"
        assert lv.tokens_per_s > 0 and lv.requests_per_s > 0
        assert 0 < lv.ttft_p50_s <= lv.ttft_p95_s and 0 < lv.itl_p50_s <= lv.itl_p95_s
    for lv in short.levels:
        assert lv.errors == 0 and lv.incomplete == 5 and not lv.complete and lv.tokens == 25
    table = format_serve(report)
    assert "full" in table and "NO (5 short)" in table


def test_serve_bench_rounds_pool_every_request_once(fake_servers):
    cfg = ServeBenchConfig(urls=fake_servers, concurrency=[2], requests=3, max_tokens=4, rounds=2)
    full, short = asyncio.run(run_serve_bench(cfg)).servers
    (lv,) = full.levels
    assert lv.requests == 6 and lv.tokens == 24 and lv.complete
    assert short.levels[0].requests == 6 and short.levels[0].incomplete == 6


def test_serve_bench_reports_http_errors(fake_servers):
    cfg = ServeBenchConfig(
        urls=fake_servers[:1],
        concurrency=[2],
        requests=2,
        max_tokens=3,
        extra_body={"prompt": "FAIL please"},
        warmup=False,
    )
    (srv,) = asyncio.run(run_serve_bench(cfg)).servers
    (lv,) = srv.levels
    assert lv.errors == 2 and not lv.complete and lv.tokens == 0
    assert lv.error_samples and lv.error_samples[0].startswith("HTTP 500")
    assert math.isnan(lv.ttft_p50_s)


def test_serve_bench_plot_writes_png(fake_servers, tmp_path):
    pytest.importorskip("matplotlib")
    from ferrousforge.bench.plot import plot_serve

    cfg = ServeBenchConfig(urls=fake_servers, concurrency=[1, 2], requests=2, max_tokens=2)
    report = asyncio.run(run_serve_bench(cfg))
    out = tmp_path / "chart.png"
    plot_serve(report, out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_serve_writes_json_and_exit_code(fake_servers, tmp_path, capsys):
    from ferrousforge.bench.cli import main

    out = tmp_path / "r.json"
    rc = main(
        [
            "serve",
            "--url",
            fake_servers[0],
            "--concurrency",
            "2",
            "--requests",
            "2",
            "--max-tokens",
            "3",
            "--json",
            str(out),
        ]
    )
    assert rc == 0
    data = json.loads(out.read_text())
    assert data["servers"][0]["levels"][0]["tokens"] == 6
    assert "full" in capsys.readouterr().out
    assert (
        main(
            [
                "serve",
                "--url",
                fake_servers[1],
                "--concurrency",
                "1",
                "--requests",
                "1",
                "--max-tokens",
                "3",
            ]
        )
        == 1
    )  # a short request fails the run


def test_cli_rejects_bad_values_with_a_message_not_a_traceback(capsys):
    from ferrousforge.bench.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["serve", "--url", "http://127.0.0.1:9", "--rounds", "0"])
    assert exit_info.value.code == 2
    assert "error: rounds: must be >= 1" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["engine", "--repeat", "0"])
    assert exit_info.value.code == 2
    assert "error: repeat: must be >= 1" in capsys.readouterr().err
