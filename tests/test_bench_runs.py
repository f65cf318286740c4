"""Tiny real runs of both benchmarks: the engine bench on the default model, and the
serve bench against an in-process fake OpenAI streaming server. No speed asserts."""

from __future__ import annotations

import asyncio
import json
import math
import os
import socket
import threading
import time

import pytest
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

from ferrousforge.bench.engine_bench import EngineBenchConfig, format_report, run_engine_bench
from ferrousforge.bench.serve_bench import ServeBenchConfig, format_serve, run_serve_bench

FAKE_LLAMA_BENCH = """#!/bin/sh
echo "$@" >> "$(dirname "$0")/llama-bench.args"
echo "loading model" >&2
cat <<'JSON'
[
  {"n_prompt": 32, "n_gen": 0, "n_depth": 0, "avg_ts": 400.0, "samples_ts": [400.0]},
  {"n_prompt": 0, "n_gen": 8, "n_depth": 0, "avg_ts": 160.0, "samples_ts": [160.0]}
]
JSON
"""

# Prints a row for the level it is asked for (-npl N), S_TG = 100 x N.
FAKE_BATCHED_BENCH = """#!/bin/sh
echo "$@" >> "$(dirname "$0")/llama-batched-bench.args"
while [ $# -gt 0 ]; do [ "$1" = "-npl" ] && npl=$2; shift; done
echo "|  PP |  TG |  B | N_KV | T_PP s | S_PP t/s | T_TG s | S_TG t/s |  T s | S t/s |"
echo "|  16 |   8 | $npl | 48 |  0.100 |   320.00 |  0.080 | ${npl}00.00 | 0.18 | 266.7 |"
"""


def _fake_tools(folder):
    for name, text in (
        ("llama-bench", FAKE_LLAMA_BENCH),
        ("llama-batched-bench", FAKE_BATCHED_BENCH),
    ):
        (folder / name).write_text(text)
        (folder / name).chmod(0o755)
    return folder


@pytest.mark.integration
def test_tiny_engine_bench_runs_each_side_in_its_own_process_beside_the_peers(model_path, tmp_path):
    cfg = EngineBenchConfig(
        model=model_path,
        levels=[2],
        prompt_tokens=16,
        gen_tokens=8,
        pp_tokens=32,
        tg_tokens=8,
        repeat=1,
        llama_tools=_fake_tools(tmp_path),
    )
    report = run_engine_bench(cfg)
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
    # The engine decodes on its engine thread, raw on a main thread, in two other processes.
    engine_pid = lv.decoded_by["engine"].split(",")[0]
    raw_pid = lv.decoded_by["raw"].split(",")[0]
    assert engine_pid != raw_pid and f"pid {os.getpid()}" not in (engine_pid, raw_pid)
    assert lv.decoded_by["raw"].endswith("thread MainThread")
    assert "MainThread" not in lv.decoded_by["engine"]
    # llama-batched-bench ran at this level's shape: its S_TG and engine / it.
    assert lv.peer_tg_tps == 200.0 and lv.peer_ratio == pytest.approx(lv.engine_tg_tps / 200)
    bb_args = (tmp_path / "llama-batched-bench.args").read_text()
    assert "-c 48 " in bb_args and "-npp 16 -ntg 8 -npl 2 -no-kvu" in bb_args
    assert [s.test for s in report.single] == ["pp32", "tg8"]
    assert all(s.engine_tps > 0 and s.raw_tps > 0 for s in report.single)
    pp, tg = report.single
    assert pp.peer_tps == 400.0 and tg.peer_tps == 160.0
    assert tg.peer_ratio == pytest.approx(tg.engine_tps / 160)
    assert (tmp_path / "llama-bench.args").read_text().count("-p 32 -n 8 -t 2") == 3  # 3 runs
    text = format_report(report)
    assert "pp32" in text and "eng/bb" in text and "eng/lb" in text
    assert "threads, greedy, EOS ignored, no prefix cache, CPU" in text
    # Like for like with raw and llama.cpp's tools: one token per sequence per step.
    assert "engine speculation off" in text and report.config["draft_max"] == 0
    assert "note:" not in text


def test_missing_peers_are_reported_and_skipped(tmp_path):
    from ferrousforge.bench.engine_bench import EngineBenchReport, PeerRunner

    cfg = EngineBenchConfig(model=tmp_path / "m.gguf", levels=[1], llama_tools=tmp_path)
    report = EngineBenchReport(config={})
    runner = PeerRunner(cfg, report)
    assert runner.batched_tg(1) is None and runner.single() is None
    assert len(report.notes) == 1 and "not found in" in report.notes[0]
    quiet = EngineBenchReport(config={})
    off = PeerRunner(
        EngineBenchConfig(model=tmp_path, peers=False, llama_tools=_fake_tools(tmp_path)), quiet
    )
    assert off.batched_tg(1) is None and quiet.notes == []  # --no-peers: nothing run, no note


def test_a_failing_peer_is_noted_and_skipped_from_then_on(tmp_path):
    from ferrousforge.bench.engine_bench import EngineBenchReport, PeerRunner

    _fake_tools(tmp_path)
    (tmp_path / "llama-batched-bench").write_text("#!/bin/sh\necho 'no model' >&2\nexit 3\n")
    report = EngineBenchReport(config={})
    runner = PeerRunner(EngineBenchConfig(model=tmp_path, llama_tools=tmp_path), report)
    assert runner.batched_tg(1) is None
    assert "exited with 3" in report.notes[0] and "no model" in report.notes[0]
    assert runner.single() == {"pp32": 400.0, "tg8": 160.0}  # llama-bench still runs


@pytest.mark.integration
def test_engine_bench_on_the_gpu_needs_a_gpu_library(model_path, capsys):
    """--gpu loads with the GPU backend; a CPU-only libllama is a message, not a traceback."""
    from ferrousforge.bench.cli import main
    from ferrousforge.inference.backends.llama_cpp.library import load_library
    from ferrousforge.inference.backends.llama_cpp.model import has_gpu

    if has_gpu(load_library(None)):  # not llama_supports_gpu_offload: true with RPC alone
        pytest.skip("this libllama can offload: the GPU check (gpu/) runs the bench there")
    args = ["engine", "--gpu", "--n-gpu-layers", "4", "--model", str(model_path)]
    assert main([*args, "--levels", "1", "--pp", "0", "--tg", "0", "--gen-tokens", "2"]) == 1
    assert "has no GPU support" in capsys.readouterr().err


def _fake_server(
    short_by: int, seen: list[str] | None = None, delays: tuple[float, float] = (0.0, 0.0)
) -> FastAPI:
    """Streams max_tokens one-token chunks (minus ``short_by``), then usage-less [DONE].

    A prompt containing "FAIL" gets HTTP 500. Prompts are appended to ``seen``; the first
    chunk waits ``delays[0]`` for a prompt not seen before, ``delays[1]`` for one seen.
    """
    app = FastAPI()
    seen = [] if seen is None else seen

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": "fake-model", "object": "model"}]}

    @app.post("/v1/completions")
    async def completions(req: Request):
        body = await req.json()
        if "FAIL" in body["prompt"] or body["model"] != "fake-model":
            return JSONResponse({"error": {"message": "nope"}}, status_code=500)
        n = body["max_tokens"] - short_by
        delay = delays[1] if body["prompt"] in seen else delays[0]
        seen.append(body["prompt"])

        async def events():
            await asyncio.sleep(delay)
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


def _start(apps: dict[str, FastAPI]):
    """Serve each app on a free port; yields their NAME=URL entries, then stops them."""
    servers, urls = [], []
    for name, app in apps.items():
        port = _free_port()
        server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")
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


@pytest.fixture
def fake_servers():
    """Two fake servers: one that delivers every token, one that stops one short."""
    yield from _start({"full": _fake_server(0), "short": _fake_server(1)})


def _serve_one(app: FastAPI, **cfg_fields):
    """Run the serve bench against one fake server; its ServerResult and the config."""
    gen = _start({"fake": app})
    (url,) = next(gen)
    try:
        cfg = ServeBenchConfig(urls=[url], warmup=False, **cfg_fields)
        (srv,) = asyncio.run(run_serve_bench(cfg)).servers
    finally:
        next(gen, None)
    return srv, cfg


def test_returning_workload_sends_the_same_prompts_again_and_reports_them_apart():
    from dataclasses import asdict

    from ferrousforge.bench.serve_bench import ServeReport

    seen: list[str] = []
    # A returning prompt waits longer: only a report that keeps the rounds apart shows it.
    app = _fake_server(0, seen, delays=(0.2, 0.6))
    srv, cfg = _serve_one(app, concurrency=[2], requests=3, max_tokens=2, workload="returning")
    first_round, again = seen[:3], seen[3:]
    assert len(set(first_round)) == 3 and sorted(again) == sorted(first_round)
    (lv,) = srv.levels
    assert lv.requests == 3 and lv.returning is not None and lv.returning.requests == 3
    assert lv.all_complete and lv.tokens == 6 and lv.returning.tokens == 6
    assert lv.ttft_p50_s >= 0.2 and lv.returning.ttft_p50_s >= 0.6
    table = format_serve(ServeReport(asdict(cfg), [srv]))
    assert "fake first" in table and "fake again" in table


def test_repetitive_workload_sends_copy_tasks():
    seen: list[str] = []
    app = _fake_server(0, seen)
    srv, _ = _serve_one(app, concurrency=[2], requests=4, max_tokens=2, workload="repetitive")
    assert srv.levels[0].complete and srv.levels[0].returning is None
    assert len(set(seen)) == 4
    assert sum("Repeat the following text exactly" in p for p in seen) == 2
    assert sum("Fix the typo" in p for p in seen) == 2


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
