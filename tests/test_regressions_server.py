"""Wire-level details a client relies on, checked against a real server over raw HTTP.

The SSE terminator, streamed usage with several choices, legacy text offsets and the
max_tokens ceiling: each asserts exact numbers, not just that some text came back.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest
from live_server import live_server
from model_traits import requires_chat_template

pytestmark = pytest.mark.server

KEY = "sk-regressions"
LIMIT = 8  # --max-tokens-limit: every request here stays within it unless testing it
CHAT = [{"role": "user", "content": "Write a long story about a dragon."}]


@pytest.fixture(scope="module")
def http() -> Iterator[httpx.Client]:
    args = ["--parallel", "4", "--ctx-size", "2048", "--max-tokens-limit", str(LIMIT)]
    with live_server(*args, env={"FERROUSFORGE_API_KEY": KEY}) as server:
        headers = {"Authorization": f"Bearer {KEY}"}
        with httpx.Client(base_url=server.url, headers=headers, timeout=60) as client:
            yield client


def sse_lines(http: httpx.Client, path: str, body: dict) -> list[str]:
    """Every non-empty line of the event stream, verbatim."""
    with http.stream("POST", path, json={**body, "stream": True}) as r:
        assert r.status_code == 200, r.read()
        assert r.headers["content-type"].startswith("text/event-stream")
        return [line for line in r.iter_lines() if line]


def sse_events(http: httpx.Client, path: str, body: dict) -> list[dict]:
    lines = sse_lines(http, path, body)
    assert lines[-1] == "data: [DONE]"
    return [json.loads(line.removeprefix("data: ")) for line in lines[:-1]]


# ---- the stream terminator ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/completions", {"prompt": "Once upon a time", "max_tokens": 4}),
        pytest.param(
            "/v1/chat/completions",
            {"messages": CHAT, "max_tokens": 4},
            marks=requires_chat_template,
        ),
        ("/v1/completions", {"prompt": ["a", "b"], "n": 2, "max_tokens": 2}),
    ],
)
def test_every_stream_ends_with_exactly_one_done(http: httpx.Client, path: str, body: dict) -> None:
    lines = sse_lines(http, path, body)
    assert lines[-1] == "data: [DONE]"
    assert lines.count("data: [DONE]") == 1
    assert all(line.startswith("data: {") for line in lines[:-1])


# ---- streamed usage with several choices ---------------------------------------------------


@pytest.mark.parametrize(
    ("path", "body", "choices"),
    [
        pytest.param(
            "/v1/chat/completions", {"messages": CHAT, "n": 3}, 3, marks=requires_chat_template
        ),
        ("/v1/completions", {"prompt": "Once upon a time", "n": 3}, 3),
        ("/v1/completions", {"prompt": ["Once upon a time", "The sky is"], "n": 2}, 4),
    ],
)
def test_streamed_usage_counts_every_choice_like_the_whole_response(
    http: httpx.Client, path: str, body: dict, choices: int
) -> None:
    # ignore_eos makes every choice exactly max_tokens long, whatever it samples.
    body = {**body, "max_tokens": 3, "ignore_eos": True, "temperature": 1.0, "seed": 7}
    whole = http.post(path, json=body)
    assert whole.status_code == 200, whole.text
    events = sse_events(http, path, {**body, "stream_options": {"include_usage": True}})
    streamed = events[-1]["usage"]
    assert events[-1]["choices"] == []
    assert whole.json()["usage"]["completion_tokens"] == 3 * choices
    assert streamed["completion_tokens"] == 3 * choices
    assert streamed["prompt_tokens"] == whole.json()["usage"]["prompt_tokens"]
    assert streamed["total_tokens"] == streamed["prompt_tokens"] + streamed["completion_tokens"]
    finished = [c["index"] for e in events for c in e["choices"] if c["finish_reason"]]
    assert sorted(finished) == list(range(choices))


# ---- legacy logprobs: text_offset --------------------------------------------------------


def check_offsets(lp: dict, first: int) -> None:
    """text_offset[i] is where tokens[i] starts in the choice's text."""
    offsets, tokens = lp["text_offset"], lp["tokens"]
    assert len(offsets) == len(tokens) >= 2
    expected = [first + sum(len(t) for t in tokens[:i]) for i in range(len(tokens))]
    assert offsets == expected


@pytest.mark.parametrize("echo", [False, True])
def test_text_offset_advances_token_by_token(http: httpx.Client, echo: bool) -> None:
    prompt = "The capital of France is"
    body = {"prompt": prompt, "max_tokens": 6, "logprobs": 1, "temperature": 0, "echo": echo}
    r = http.post("/v1/completions", json={**body, "ignore_eos": True})
    assert r.status_code == 200, r.text
    choice = r.json()["choices"][0]
    lp = choice["logprobs"]
    check_offsets(lp, 0 if echo else len(prompt))
    assert "".join(lp["tokens"]) == choice["text"]
    assert lp["text_offset"][-1] > lp["text_offset"][0]


@pytest.mark.parametrize("echo", [False, True])
def test_streamed_text_offset_continues_across_chunks(http: httpx.Client, echo: bool) -> None:
    prompt = "The capital of France is"
    body = {
        "prompt": prompt,
        "max_tokens": 6,
        "logprobs": 1,
        "temperature": 0,
        "echo": echo,
        "ignore_eos": True,
    }
    events = sse_events(http, "/v1/completions", body)
    merged: dict[str, list] = {"tokens": [], "text_offset": []}
    for e in events:
        lp = e["choices"][0]["logprobs"]
        if lp:
            merged["tokens"] += lp["tokens"]
            merged["text_offset"] += lp["text_offset"]
    check_offsets(merged, 0 if echo else len(prompt))
    whole = http.post("/v1/completions", json={**body, "stream": False}).json()
    assert merged["text_offset"] == whole["choices"][0]["logprobs"]["text_offset"]


# ---- the max_tokens ceiling ----------------------------------------------------------------


def test_max_tokens_above_the_server_limit_is_capped(http: httpx.Client) -> None:
    body = {"prompt": "Once upon a time", "max_tokens": LIMIT * 5, "ignore_eos": True}
    r = http.post("/v1/completions", json=body).json()
    assert r["usage"]["completion_tokens"] == LIMIT
    assert r["choices"][0]["finish_reason"] == "length"
    events = sse_events(
        http,
        "/v1/completions",
        {**body, "stream_options": {"include_usage": True}},
    )
    assert events[-1]["usage"]["completion_tokens"] == LIMIT
    # Unset, completions default to 16 tokens (OpenAI's default), which the limit also caps.
    r = http.post("/v1/completions", json={"prompt": "Once upon a time", "ignore_eos": True})
    assert r.json()["usage"]["completion_tokens"] == LIMIT


@requires_chat_template
def test_chat_max_completion_tokens_above_the_server_limit_is_capped(http: httpx.Client) -> None:
    body = {"messages": CHAT, "max_completion_tokens": LIMIT * 5, "ignore_eos": True}
    r = http.post("/v1/chat/completions", json=body).json()
    assert r["usage"]["completion_tokens"] == LIMIT


@requires_chat_template
def test_chat_without_max_tokens_defaults_to_the_server_limit(http: httpx.Client) -> None:
    r = http.post("/v1/chat/completions", json={"messages": CHAT, "ignore_eos": True}).json()
    assert r["usage"]["completion_tokens"] == LIMIT
    assert r["choices"][0]["finish_reason"] == "length"
