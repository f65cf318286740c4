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
