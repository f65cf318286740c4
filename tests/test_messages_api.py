"""Anthropic's Messages API through the official `anthropic` SDK against a live server (issue 12).

One server with an API key serves the bundled model. Sampling fields the SDK no longer takes
as arguments (temperature) go in ``extra_body``, as a client of a local server sends them.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import jsonschema
import pytest
from live_server import LiveServer, live_server, write_models_config
from model_traits import chat_template_for_tests

from ferrousforge.models.default_model import default_model

pytestmark = [pytest.mark.integration, pytest.mark.server]

KEY = "sk-ant-local"
MODEL_ID, _ = default_model()
GREEDY = {"temperature": 0}
COUNT = [{"role": "user", "content": "Count from 1 to 10."}]
WEATHER = {
    "type": "object",
    "properties": {
        "city": {"type": "string"},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
    },
    "required": ["city", "unit"],
}
TOOLS: list[Any] = [
    {
        "name": "get_weather",
        "description": "The current weather in a city",
        "input_schema": WEATHER,
    },
    {
        "name": "get_time",
        "description": "The current time in a timezone",
        "input_schema": {"type": "object", "properties": {"timezone": {"type": "string"}}},
    },
]
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]
NAMED: Any = {"type": "tool", "name": "get_weather"}


@pytest.fixture(scope="module")
def server(model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    args = ["--api-key", KEY, "--parallel", "2", "--ctx-size", "4096"]
    if chat_template_for_tests() is not None:  # a model without a template of its own
        folder = tmp_path_factory.mktemp("messages")
        model = {"alias": MODEL_ID, "path": str(model_path)}
        model["chat_template"] = chat_template_for_tests()
        args += ["--config", str(write_models_config(folder / "models.toml", [model]))]
    with live_server(*args) as s:
        yield s


@pytest.fixture(scope="module")
def client(server: LiveServer) -> anthropic.Anthropic:
    # The SDK sends the key as x-api-key.
    return anthropic.Anthropic(base_url=server.url, api_key=KEY, max_retries=0, timeout=300)


def text_of(message: Any) -> str:
    return "".join(b.text for b in message.content if b.type == "text")


def prompt_tokens(usage: Any) -> int:
    """Anthropic splits the prompt into fresh and cache-read tokens."""
    return usage.input_tokens + (usage.cache_read_input_tokens or 0)


def test_create_with_system(client: anthropic.Anthropic) -> None:
    kwargs: Any = dict(model=MODEL_ID, system="You are a helpful assistant.", messages=COUNT)
    r = client.messages.create(**kwargs, max_tokens=64, extra_body=GREEDY)
    assert r.id.startswith("msg_") and r.type == "message" and r.role == "assistant"
    assert r.model == MODEL_ID
    assert [b.type for b in r.content] == ["text"] and "1" in text_of(r)
    assert (r.stop_reason == "max_tokens") == (r.usage.output_tokens == 64), r
    assert r.stop_reason in ("end_turn", "max_tokens") and r.stop_sequence is None
    # The system prompt is part of what the model saw (and of what the request counts).
    without = client.messages.count_tokens(model=MODEL_ID, messages=COUNT).input_tokens
    longer = "You are a helpful assistant who always answers in complete sentences."
    assert prompt_tokens(r.usage) == client.messages.count_tokens(**kwargs).input_tokens
    with_longer = client.messages.count_tokens(model=MODEL_ID, system=longer, messages=COUNT)
    assert with_longer.input_tokens > prompt_tokens(r.usage) != without


def test_system_as_text_blocks_counts_as_the_string(client: anthropic.Anthropic) -> None:
    blocks: Any = [{"type": "text", "text": "You are terse."}]
    as_blocks = client.messages.count_tokens(model=MODEL_ID, system=blocks, messages=COUNT)
    as_text = client.messages.count_tokens(model=MODEL_ID, system="You are terse.", messages=COUNT)
    assert as_blocks.input_tokens == as_text.input_tokens


def test_stream_events_and_text(client: anthropic.Anthropic, server: LiveServer) -> None:
    kwargs: Any = dict(model=MODEL_ID, max_tokens=48, messages=COUNT, extra_body=GREEDY)
    whole = client.messages.create(**kwargs)
    with client.messages.stream(**kwargs) as stream:
        streamed = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert streamed == text_of(final) == text_of(whole) != ""
    assert final.stop_reason == whole.stop_reason
    assert final.usage.output_tokens == whole.usage.output_tokens
    assert prompt_tokens(final.usage) == prompt_tokens(whole.usage)

    types = [e.type for e in client.messages.create(**kwargs, stream=True)]
    assert types[0] == "message_start" and types[-2:] == ["message_delta", "message_stop"]
    body = [t for t in types[1:-2] if t != "ping"]
    assert body[0] == "content_block_start" and body[-1] == "content_block_stop"
    assert set(body[1:-1]) == {"content_block_delta"}
    # On the wire, each event's name is its data's type.
    raw = httpx.post(
        server.url + "/v1/messages",
        headers={"x-api-key": KEY, "anthropic-version": "2023-06-01"},
        json={"model": MODEL_ID, "max_tokens": 8, "messages": COUNT, "stream": True},
        timeout=300,
    ).text
    events = [e.split("\n") for e in raw.strip().split("\n\n")]
    assert all(
        name.removeprefix("event: ") == json.loads(data[6:])["type"] for name, data in events
    )


def test_stop_sequence(client: anthropic.Anthropic) -> None:
    # The stop string comes from the model's own answer, so any model hits it.
    free = text_of(client.messages.create(
        model=MODEL_ID, max_tokens=32, messages=COUNT, extra_body=GREEDY
    ))  # fmt: skip
    stop = free[len(free) // 2 :].strip()[:3]
    assert stop, free
    r = client.messages.create(
        model=MODEL_ID, max_tokens=32, messages=COUNT, stop_sequences=[stop], extra_body=GREEDY
    )
    assert r.stop_reason == "stop_sequence" and r.stop_sequence == stop, r
    assert text_of(r) == free[: free.index(stop)]


def test_max_tokens(client: anthropic.Anthropic) -> None:
    with client.messages.stream(
        model=MODEL_ID, max_tokens=5, messages=COUNT, extra_body=GREEDY
    ) as stream:
        final = stream.get_final_message()
    assert final.stop_reason == "max_tokens" and final.usage.output_tokens == 5


def test_named_tool_then_tool_result(client: anthropic.Anthropic) -> None:
    kwargs: Any = dict(model=MODEL_ID, max_tokens=64, tools=TOOLS, extra_body=GREEDY)
    r = client.messages.create(**kwargs, messages=ASK, tool_choice=NAMED)
    assert r.stop_reason == "tool_use", r
    calls = [b for b in r.content if b.type == "tool_use"]
    assert calls and all(c.name == "get_weather" for c in calls)
    for c in calls:
        jsonschema.validate(c.input, WEATHER)
    assert len({c.id for c in calls}) == len(calls) and all(
        c.id.startswith("toolu_") for c in calls
    )

    def turn(result: str) -> list[Any]:
        results = [{"type": "tool_result", "tool_use_id": c.id, "content": result} for c in calls]
        return [
            *ASK,
            {"role": "assistant", "content": r.content},
            {"role": "user", "content": results},
        ]

    follow = client.messages.create(**kwargs, messages=turn("Sunny, 25 C"))
    assert follow.stop_reason in ("end_turn", "max_tokens", "tool_use")
    # The calls and their results are in the prompt the model saw.
    assert prompt_tokens(follow.usage) > prompt_tokens(r.usage)
    short = client.messages.count_tokens(model=MODEL_ID, tools=TOOLS, messages=turn("Sunny"))
    long = client.messages.count_tokens(
        model=MODEL_ID, tools=TOOLS, messages=turn("Sunny, 25 C, a light breeze from the west")
    )
    assert long.input_tokens > short.input_tokens


def test_streamed_tool_use(client: anthropic.Anthropic) -> None:
    """tool_choice any, one call: the input arrives as input_json_delta and assembles."""
    with client.messages.stream(
        model=MODEL_ID,
        max_tokens=64,
        tools=TOOLS,
        messages=ASK,
        tool_choice={"type": "any", "disable_parallel_tool_use": True},
        extra_body=GREEDY,
    ) as stream:
        deltas = [e.delta.type for e in stream if e.type == "content_block_delta"]
        final = stream.get_final_message()
    assert final.stop_reason == "tool_use" and "input_json_delta" in deltas
    calls = [b for b in final.content if b.type == "tool_use"]
    assert len(calls) == 1 and calls[0].name in ("get_weather", "get_time")
    if calls[0].name == "get_weather":
        jsonschema.validate(calls[0].input, WEATHER)


def test_count_tokens_equals_usage(client: anthropic.Anthropic) -> None:
    kwargs: Any = dict(model=MODEL_ID, tools=TOOLS, messages=ASK, tool_choice=NAMED)
    counted = client.messages.count_tokens(**kwargs).input_tokens
    r = client.messages.create(**kwargs, max_tokens=8, extra_body=GREEDY)
    assert counted == prompt_tokens(r.usage)
    # The tools are rendered into the prompt, and counted.
    bare = client.messages.count_tokens(model=MODEL_ID, messages=ASK).input_tokens
    assert counted > bare


def test_keys(server: LiveServer) -> None:
    ok = {"model": MODEL_ID, "max_tokens": 1, "messages": COUNT}
    bearer = anthropic.Anthropic(base_url=server.url, auth_token=KEY, max_retries=0)
    assert bearer.messages.create(**ok).type == "message"  # Authorization: Bearer KEY
    wrong = anthropic.Anthropic(base_url=server.url, api_key="sk-wrong", max_retries=0)
    with pytest.raises(anthropic.AuthenticationError) as e:
        wrong.messages.create(**ok)
    assert e.value.body == {
        "type": "error",
        "error": {"type": "authentication_error", "message": "invalid API key"},
    }
    with pytest.raises(anthropic.AuthenticationError):
        wrong.messages.count_tokens(model=MODEL_ID, messages=COUNT)


def bad_request(client: anthropic.Anthropic, **kwargs: Any) -> str:
    """The message of the 400 a request gets, checked to be in Anthropic's shape."""
    with pytest.raises(anthropic.BadRequestError) as e:
        client.messages.create(**{"model": MODEL_ID, "max_tokens": 8, "messages": COUNT, **kwargs})
    body = e.value.body
    assert isinstance(body, dict) and body["type"] == "error", body
    assert body["error"]["type"] == "invalid_request_error" and set(body["error"]) == {
        "type",
        "message",
    }
    return body["error"]["message"]


def test_invalid_requests(client: anthropic.Anthropic) -> None:
    assert "max_tokens" in bad_request(client, max_tokens=0)
    image: Any = {"type": "image", "source": {"type": "url", "url": "http://x/y.png"}}
    assert "no vision" in bad_request(client, messages=[{"role": "user", "content": [image]}])
    prefill: Any = [*COUNT, {"role": "assistant", "content": "1, 2,"}]
    assert "prefill" in bad_request(client, messages=prefill)
    assert "tool_choice" in bad_request(client, tool_choice=NAMED)  # names no given tool
    assert "temperature" in bad_request(client, extra_body={"temperature": 3})


def test_unknown_model(client: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.NotFoundError) as e:
        client.messages.create(model="no-such-model", max_tokens=8, messages=COUNT)
    assert e.value.body["error"]["type"] == "not_found_error"  # type: ignore[index]
    assert "no-such-model" in e.value.body["error"]["message"]  # type: ignore[index]
