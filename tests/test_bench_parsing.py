"""Bench helpers without a model or a server: percentiles, SSE parsing, token counting."""

from __future__ import annotations

import json
import math

import pytest

from ferrousforge.bench.prompts import text_prompt, token_prompts
from ferrousforge.bench.serve_bench import record_from_tally, split_url, summarize
from ferrousforge.bench.sse import SSEParser, StreamTally
from ferrousforge.bench.stats import percentile


def test_percentile_interpolates_like_numpy():
    xs = [4.0, 1.0, 3.0, 2.0]
    assert percentile(xs, 0) == 1.0
    assert percentile(xs, 100) == 4.0
    assert percentile(xs, 50) == 2.5
    assert percentile(xs, 95) == pytest.approx(3.85)
    assert percentile([7.0], 95) == 7.0
    assert math.isnan(percentile([], 50))
    with pytest.raises(ValueError, match="q"):
        percentile(xs, 101)


def _chunk(text: str, finish: str | None = None) -> bytes:
    event = {
        "object": "text_completion",
        "choices": [{"index": 0, "text": text, "finish_reason": finish}],
    }
    return f"data: {json.dumps(event)}\n\n".encode()


def test_sse_parser_reassembles_events_split_anywhere():
    stream = b": keep-alive\r\n\r\n" + _chunk("Hel") + _chunk("lo") + b"data: [DONE]\n\n"
    events: list[str] = []
    parser = SSEParser()
    for i in range(0, len(stream), 7):  # arbitrary read boundaries
        events += parser.feed(stream[i : i + 7])
    events += parser.close()
    assert [json.loads(e)["choices"][0]["text"] for e in events[:2]] == ["Hel", "lo"]
    assert events[2] == "[DONE]"
    assert len(events) == 3


def test_sse_multiline_data_and_missing_final_blank_line():
    parser = SSEParser()
    assert parser.feed(b"data: a\ndata: b\n\n") == ["a\nb"]
    assert parser.feed(b"data: [DONE]") == []
    assert parser.close() == ["[DONE]"]


def _tally(stream: bytes) -> StreamTally:
    tally, parser = StreamTally(), SSEParser()
    for i, payload in enumerate(parser.feed(stream) + parser.close()):
        tally.add(payload, float(i))
    return tally


def test_tally_prefers_usage_over_chunk_count():
    usage = {"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 4}}
    stream = (
        _chunk("a")
        + _chunk("b")
        + _chunk("", "length")
        + f"data: {json.dumps(usage)}\n\n".encode()
        + b"data: [DONE]\n\n"
    )
    tally = _tally(stream)
    assert tally.n_tokens == 4 and tally.counted_by == "usage"
    assert tally.text == "ab" and tally.finish_reason == "length" and tally.done
    assert len(tally.content_times) == 2  # the empty final chunk is not a token


def test_tally_counts_text_chunks_without_usage_and_chat_deltas():
    chat = {"choices": [{"delta": {"content": "x"}, "finish_reason": None}]}
    stream = (
        _chunk("a") + _chunk("b") + f"data: {json.dumps(chat)}\n\n".encode() + b"data: [DONE]\n\n"
    )
    tally = _tally(stream)
    assert tally.n_tokens == 3 and tally.counted_by == "chunks" and tally.text == "abx"


def test_tally_reports_error_events_and_bad_json():
    assert _tally(b'data: {"error": {"message": "boom"}}\n\n').error == "boom"
    assert "bad JSON" in (_tally(b"data: {nope\n\n").error or "")


def test_record_and_summary_from_tallies():
    tally = StreamTally(content_times=[1.0, 1.5, 2.5])
    rec = record_from_tally(tally, t0=0.5, t_end=3.0)
    assert rec.ok and rec.ttft_s == 0.5 and rec.itl_s == [0.5, 1.0] and rec.n_tokens == 3
    empty = record_from_tally(StreamTally(), 0.0, 1.0)
    assert not empty.ok and "no text" in (empty.error or "")
    lv = summarize(2, [rec, rec, empty], wall_s=2.0, max_tokens=3)
    assert lv.tokens == 6 and lv.tokens_per_s == 3.0 and lv.errors == 1
    assert not lv.complete and lv.incomplete == 0 and lv.ttft_p50_s == 0.5
    short = summarize(1, [rec], wall_s=1.0, max_tokens=4)
    assert short.incomplete == 1 and not short.complete


def test_split_url_names_and_normalises():
    assert split_url("ours=http://h:1/v1/") == ("ours", "http://h:1")
    assert split_url("http://h:2") == ("h:2", "http://h:2")


def test_prompts_are_distinct_from_the_first_token():
    ps = token_prompts(16, 32, 49152, avoid=frozenset({0, 1, 2}))
    assert len({p[0] for p in ps}) == 16 and all(len(p) == 32 for p in ps)
    assert text_prompt(1, 20) != text_prompt(2, 20)
    assert text_prompt(3, 20) == text_prompt(3, 20)


# ---- llama.cpp's tools as peers of `bench engine` -------------------------------------

LLAMA_BENCH_JSON = """[
  {
    "build_commit": "0c1e570",
    "build_number": 1,
    "model_filename": "smollm2.gguf",
    "n_batch": 512,
    "n_ubatch": 512,
    "n_threads": 2,
    "n_prompt": 512,
    "n_gen": 0,
    "n_depth": 0,
    "avg_ns": 1561000000,
    "avg_ts": 328.012,
    "stddev_ts": 1.5,
    "samples_ns": [ 1561000000 ],
    "samples_ts": [ 328.012 ]
  },
  {
    "build_commit": "0c1e570",
    "n_prompt": 0,
    "n_gen": 128,
    "n_depth": 0,
    "avg_ts": 156.7,
    "samples_ns": [ 816000000 ],
    "samples_ts": [ 156.7 ]
  }
]
"""

BATCHED_BENCH_OUT = """
main: n_kv_max = 2048, n_batch = 512, n_ubatch = 512, flash_attn = -1, is_pp_shared = 0

|    PP |     TG |    B |   N_KV |   T_PP s | S_PP t/s |   T_TG s | S_TG t/s |      T s |    S t/s |
|-------|--------|------|--------|----------|----------|----------|----------|----------|----------|
|   128 |    128 |    1 |    256 |    0.338 |   378.32 |    0.899 |   142.45 |    1.237 |   206.97 |
|   128 |    128 |    8 |   2048 |    2.915 |   351.27 |    4.801 |   213.27 |    7.717 |   265.40 |

llama_perf_context_print:        load time =     120.00 ms
"""


def test_llama_bench_json_gives_tokens_per_second_per_test():
    from ferrousforge.bench.peers import parse_llama_bench_json

    assert parse_llama_bench_json(LLAMA_BENCH_JSON) == {"pp512": 328.012, "tg128": 156.7}
    jsonl = '{"n_prompt": 0, "n_gen": 64, "n_depth": 512, "samples_ts": [10.0, 20.0]}\n'
    assert parse_llama_bench_json(jsonl) == {"tg64 @ d512": 15.0}  # no avg_ts: mean of samples


def test_llama_bench_output_that_is_not_json_is_a_peer_error():
    from ferrousforge.bench.peers import PeerError, parse_llama_bench_json

    with pytest.raises(PeerError, match="no JSON"):
        parse_llama_bench_json('[\n  {\n    "n_prompt": 512,\n')  # cut short
    with pytest.raises(PeerError, match="no test"):
        parse_llama_bench_json("[]")


def test_batched_bench_table_gives_s_tg_per_level():
    from ferrousforge.bench.peers import parse_batched_bench

    rows = parse_batched_bench(BATCHED_BENCH_OUT)
    assert [(r.b, r.s_tg) for r in rows] == [(1, 142.45), (8, 213.27)]
    assert rows[1].pp == 128 and rows[1].tg == 128 and rows[1].n_kv == 2048
    assert rows[1].t_pp == 2.915 and rows[1].s == 265.40
    jsonl = (
        '{"n_kv_max": 256, "pp": 128, "tg": 128, "pl": 1, "n_kv": 256, "t_pp": 0.3, '
        '"speed_pp": 400.0, "t_tg": 0.9, "speed_tg": 142.0, "t": 1.2, "speed": 210.0}'
    )
    (row,) = parse_batched_bench(jsonl)
    assert row.b == 1 and row.s_tg == 142.0


def test_batched_bench_row_with_missing_columns_is_a_peer_error():
    from ferrousforge.bench.peers import PeerError, parse_batched_bench

    with pytest.raises(PeerError, match="columns"):
        parse_batched_bench("|   128 |    128 |    1 |    256 |    0.338 |")


def test_peer_commands_use_the_engine_bench_shapes():
    from pathlib import Path

    from ferrousforge.bench.peers import batched_bench_cmd, llama_bench_cmd

    bb = batched_bench_cmd(
        Path("bb"), Path("m.gguf"), threads=2, n_seqs=8, prompt_tokens=128, gen_tokens=128,
        batch=512,
    )  # fmt: skip
    joined = " ".join(bb)
    # One KV stream per sequence (the engine's default), each of P + G cells.
    assert "-no-kvu" in bb and "-kvu" not in bb
    assert "-c 2048" in joined and "-npl 8" in joined and "-npp 128 -ntg 128" in joined
    assert "-t 2" in joined and "-b 512 -ub 512" in joined and "-ngl 0" in joined
    lb = " ".join(llama_bench_cmd(Path("lb"), Path("m.gguf"), threads=2, pp=512, tg=128, batch=512))
    assert "-p 512 -n 128 -t 2" in lb and lb.endswith("-o json")
    gpu = batched_bench_cmd(
        Path("bb"), Path("m"), threads=1, n_seqs=1, prompt_tokens=1, gen_tokens=2, batch=8,
        gpu=True, n_gpu_layers=-1,
    )  # fmt: skip
    assert "-ngl 999" in " ".join(gpu)


def test_missing_peer_tools_are_named_in_the_note(tmp_path):
    from ferrousforge.bench.peers import Peers

    peers = Peers.find(tmp_path)
    assert peers.llama_bench is None and peers.batched_bench is None
    assert "llama-bench and llama-batched-bench not found" in peers.note()
    for name in ("llama-bench", "llama-batched-bench"):
        (tmp_path / name).write_text("#!/bin/sh\n")
        (tmp_path / name).chmod(0o755)
    found = Peers.find(tmp_path)
    assert found.llama_bench == tmp_path / "llama-bench" and found.note() == ""


def _answer(tg: float, **extra) -> dict:
    return {
        "tg_tps": tg,
        "e2e_tps": tg / 2,
        "ttft_p50_s": 0.5,
        "mean_batch": 2.0,
        "complete": True,
        "breakdown": {
            "engine_python_p50_ms": 0.3,
            "raw_step_ms": 10.0,
            "raw_python_ms": 0.1,
        },
        **extra,
    }


def test_engine_bench_ratios_against_raw_and_batched_bench():
    from ferrousforge.bench.engine_bench import level_result, single_result

    lv = level_result(2, _answer(90.0, decoded_by="pid 1"), _answer(100.0), peer_tg=150.0)
    assert lv.tg_ratio == pytest.approx(0.9) and lv.peer_ratio == pytest.approx(0.6)
    assert lv.breakdown["implied_ratio"] == pytest.approx(10.0 / 10.2)
    assert lv.decoded_by["engine"] == "pid 1"
    no_peer = level_result(2, _answer(90.0), _answer(100.0), peer_tg=None)
    assert math.isnan(no_peer.peer_tg_tps) and math.isnan(no_peer.peer_ratio)
    s = single_result("tg128", {"engine": [80.0, 90.0, 70.0], "raw": [100.0], "peer": [160.0]})
    assert s.engine_tps == 80.0 and s.ratio == pytest.approx(0.8)
    assert s.peer_tps == 160.0 and s.peer_ratio == pytest.approx(0.5)
    assert s.engine_best == 90.0 and s.peer_best_ratio == pytest.approx(90 / 160)
    assert math.isnan(single_result("pp8", {"engine": [1.0], "raw": [1.0], "peer": []}).peer_ratio)


def test_sides_take_turns_first():
    from ferrousforge.bench.engine_bench import rotation

    sides = ["raw", "engine", "peer"]
    assert [rotation(sides, r)[0] for r in range(4)] == ["raw", "engine", "peer", "raw"]


# ---- serve workloads ------------------------------------------------------------------


def test_repetitive_prompts_carry_what_the_answer_copies():
    from ferrousforge.bench.workloads import CODE_BLOCKS, PASSAGES, workload_prompt

    prose, code = workload_prompt("repetitive", 10, 128), workload_prompt("repetitive", 11, 128)
    assert prose.startswith("Request 10.") and "Repeat the following text exactly" in prose
    assert any(p in prose for p in PASSAGES)
    assert code.startswith("Request 11.") and "Fix the typo" in code
    assert any(c in code for c in CODE_BLOCKS)
    prompts = [workload_prompt("repetitive", i, 128) for i in range(16)]
    assert len(set(prompts)) == 16  # distinct from the first token: no prefix cache helps
    assert workload_prompt("repetitive", 3, 128) == workload_prompt("repetitive", 3, 128)


def test_returning_prompts_are_fresh_prompts_and_unknown_workloads_fail():
    from ferrousforge.bench.serve_bench import ServeBenchConfig
    from ferrousforge.bench.workloads import workload_prompt

    assert workload_prompt("returning", 5, 64) == workload_prompt("fresh", 5, 64)
    with pytest.raises(ValueError, match="workload"):
        workload_prompt("warm", 1, 64)
    with pytest.raises(ValueError, match="workload"):
        ServeBenchConfig(urls=["http://h:1"], workload="warm")


def _level(c: int, tps: float, ttft: float, again: float | None = None):
    from ferrousforge.bench.serve_bench import LevelStats

    def stats(t: float) -> LevelStats:
        return LevelStats(c, 4, 0, True, 0, 512, 1.0, tps, 1.0, t, 2 * t, 0.01, 0.02, "usage")

    lv = stats(ttft)
    lv.returning = stats(again) if again is not None else None
    return lv


def test_ratio_table_puts_every_server_beside_the_baseline():
    from ferrousforge.bench.serve_bench import ServeReport, ServerResult, format_ratios

    report = ServeReport(
        config={"workload": "returning"},
        servers=[
            ServerResult("llama-server", "u", "m", [_level(1, 100.0, 0.4, again=0.1)]),
            ServerResult("ferrousforge", "u", "m", [_level(1, 150.0, 0.2, again=0.05)]),
        ],
    )
    table = format_ratios(report, "llama-server")
    ours = next(line for line in table.splitlines() if line.startswith("ferrousforge"))
    assert " 1.50x" in ours  # tok/s
    assert ours.count(" 0.50x") == 4  # ttft p50/p95, and the returning round's p50/p95
    assert "again p50" in table
    assert "no server named" in format_ratios(report, "vllm")


def test_engine_counters_sum_ferrousforge_series_and_skip_other_servers():
    import asyncio

    import httpx

    from ferrousforge.bench.serve_bench import engine_counters

    metrics = (
        "# HELP ferrousforge_step_seconds_total Seconds inside the decode steps\n"
        'ferrousforge_step_seconds_total{model="a"} 1.5\n'
        'ferrousforge_step_seconds_total{model="b"} 0.5\n'
        'ferrousforge_decode_steps_total{model="a"} 300\n'
        'ferrousforge_decode_steps_total{model="b"} 100\n'
        'ferrousforge_step_tokens_total{model="a"} 9999\n'
    )

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.host == "ff":
            return httpx.Response(200, text=metrics)
        if request.url.host == "other":
            return httpx.Response(200, text="llamacpp:tokens_predicted_total 5\n")
        return httpx.Response(404)

    async def scrape(host: str):
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
            return await engine_counters(client, f"http://{host}")

    assert asyncio.run(scrape("ff")) == (2.0, 400)
    assert asyncio.run(scrape("other")) is None  # llama-server: no step column
    assert asyncio.run(scrape("gone")) is None  # /metrics off: 404
