"""POST /v1/responses end to end: a real server and the openai SDK's ``client.responses``.

The tiny default model says little of sense, so the tests check what the API promises: the
shapes the SDK parses, the events a stream sends and their order, calls that validate when
tool_choice forces them, JSON when text.format asks for it, and the errors.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import openai
import pytest
from live_server import LiveServer, live_server, write_models_config
from model_traits import chat_template_for_tests

pytestmark = [pytest.mark.integration, pytest.mark.server]

MODEL = "m"
WEATHER = {
    "type": "object",
    "properties": {
        "city": {"type": "string"},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
    },
    "required": ["city", "unit"],
    "additionalProperties": False,
}
TOOL = {
    "type": "function",
    "name": "get_weather",
    "description": "The current weather in a city",
    "parameters": WEATHER,
    "strict": True,
}
PERSON = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
    "required": ["name", "age"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def server(model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    model: dict[str, Any] = {"alias": MODEL, "path": str(model_path)}
    if chat_template_for_tests() is not None:  # a model without a template of its own
        model["chat_template"] = chat_template_for_tests()
    config = write_models_config(tmp_path_factory.mktemp("responses") / "models.toml", [model])
    with live_server("--config", str(config), "--parallel", "2", "--ctx-size", "4096") as s:
        yield s


@pytest.fixture(scope="module")
def client(server: LiveServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0, timeout=300)


def ask(**kwargs: Any) -> dict[str, Any]:
    return {"model": MODEL, "temperature": 0, "max_output_tokens": 24, **kwargs}


def test_text_input(client: openai.OpenAI) -> None:
    r = client.responses.create(**ask(input="Say hello.", metadata={"run": "1"}))
    assert r.id.startswith("resp_") and r.object == "response" and r.model == MODEL
    assert r.status in ("completed", "incomplete")
    assert r.metadata == {"run": "1"}
    [msg] = r.output
    assert msg.type == "message" and msg.role == "assistant" and msg.id.startswith("msg_")
    [part] = msg.content
    assert part.type == "output_text" and part.annotations == []
    assert r.output_text == part.text and part.text.strip()
    assert r.usage.input_tokens > 0 and 0 < r.usage.output_tokens <= 24
    assert r.usage.total_tokens == r.usage.input_tokens + r.usage.output_tokens
    assert r.usage.input_tokens_details.cached_tokens >= 0


def test_instructions_and_message_items_reach_the_prompt(
    client: openai.OpenAI, server: LiveServer
) -> None:
    """instructions become a leading system message and parts join: the prompt is exactly
    the chat template's rendering of those messages."""
    items = [
        {"role": "developer", "content": [{"type": "input_text", "text": "Be brief."}]},
        {
            "role": "user",
            "content": [
                {"type": "input_text", "text": "Hi, "},
                {"type": "input_text", "text": "there"},
            ],
        },
    ]
    r = client.responses.create(
        **ask(input=items, instructions="Answer in French only.", max_output_tokens=1)
    )
    assert r.instructions == "Answer in French only."
    messages = [
        {"role": "system", "content": "Answer in French only."},
        {"role": "system", "content": "Be brief."},  # developer: system, as llama.cpp maps it
        {"role": "user", "content": "Hi, there"},
    ]
    count = httpx.post(
        server.url + "/tokenize", json={"model": MODEL, "messages": messages}
    ).json()["count"]
    assert r.usage.input_tokens == count
    without = httpx.post(
        server.url + "/tokenize", json={"model": MODEL, "messages": messages[1:]}
    ).json()["count"]
    assert count != without


def test_developer_messages_reach_the_model_as_system_messages(
    client: openai.OpenAI, server: LiveServer
) -> None:
    """Codex-style agents send their instructions as "developer" items; chat templates know
    no such role (ChatML would print it, others refuse it), so they render as system."""
    developer = [{"role": "developer", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    system = [{**developer[0], "role": "system"}, developer[1]]
    r = client.responses.create(**ask(input=developer, max_output_tokens=1))
    count = httpx.post(server.url + "/tokenize", json={"model": MODEL, "messages": system}).json()[
        "count"
    ]
    assert r.usage.input_tokens == count
    prompt = httpx.post(
        server.url + "/apply-template", json={"model": MODEL, "messages": developer}
    ).json()["prompt"]
    assert "Be brief." in prompt and "developer" not in prompt


def test_max_output_tokens_is_incomplete(client: openai.OpenAI) -> None:
    r = client.responses.create(**ask(input="Count from one to one hundred.", max_output_tokens=3))
    assert r.status == "incomplete"
    assert r.incomplete_details is not None
    assert r.incomplete_details.reason == "max_output_tokens"
    assert r.usage.output_tokens == 3 and r.output[0].status == "incomplete"


def test_stream_events(client: openai.OpenAI) -> None:
    stream = client.responses.create(**ask(input="Tell me a story.", stream=True))
    events = list(stream)
    kinds = [e.type for e in events]
    assert kinds[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert kinds[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed" if kinds[-1] == "response.completed" else "response.incomplete",
    ]
    assert set(kinds[4:-4]) == {"response.output_text.delta"}
    seq = [e.sequence_number for e in events]
    assert seq == list(range(len(events)))
    final = events[-1].response
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text and text == final.output_text == events[-4].text
    assert events[0].response.status == "in_progress" and final.usage.output_tokens > 0
    item_id = events[2].item.id
    assert all(getattr(e, "item_id", item_id) == item_id for e in events)
    assert final.output[0].id == item_id


def check_call(item: Any) -> dict[str, Any]:
    assert item.type == "function_call" and item.name == "get_weather"
    assert item.call_id and item.id.startswith("fc_") and item.status == "completed"
    arguments = json.loads(item.arguments)
    jsonschema.validate(arguments, WEATHER)
    return arguments


@pytest.mark.parametrize("choice", ["required", {"type": "function", "name": "get_weather"}])
def test_forced_function_call(client: openai.OpenAI, choice: Any) -> None:
    r = client.responses.create(
        **ask(
            input="What is the weather in Paris?",
            tools=[TOOL],
            tool_choice=choice,
            max_output_tokens=64,
        ),
        parallel_tool_calls=False,
    )
    calls = [item for item in r.output if item.type == "function_call"]
    assert len(calls) == 1, r.output
    check_call(calls[0])


def test_function_call_streamed(client: openai.OpenAI) -> None:
    stream = client.responses.create(
        **ask(
            input="What is the weather in Paris?",
            tools=[TOOL],
            tool_choice="required",
            max_output_tokens=64,
        ),
        parallel_tool_calls=False,
        stream=True,
    )
    events = list(stream)
    kinds = [e.type for e in events]
    added = kinds.index("response.output_item.added")
    assert kinds[added : added + 4] == [
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
    ]
    assert kinds[-1] == "response.completed"
    delta, done = events[added + 1], events[added + 2]
    assert delta.delta == done.arguments
    check_call(events[-1].response.output[0])
    assert json.loads(done.arguments) == json.loads(events[-1].response.output[0].arguments)


def test_tool_result_with_previous_response_id(client: openai.OpenAI, server: LiveServer) -> None:
    """An agent's loop: the call, then its output sent back against the stored response."""
    first = client.responses.create(
        **ask(
            input="What is the weather in Paris?",
            tools=[TOOL],
            tool_choice="required",
            max_output_tokens=64,
        ),
        parallel_tool_calls=False,
    )
    [call] = [item for item in first.output if item.type == "function_call"]
    result = {"type": "function_call_output", "call_id": call.call_id, "output": "22 C, sunny"}
    second = client.responses.create(
        **ask(input=[result], tools=[TOOL], previous_response_id=first.id)
    )
    assert second.previous_response_id == first.id
    assert second.status in ("completed", "incomplete") and second.output
    # The stored turn (question, call) is in the prompt: far more tokens than the result alone.
    assert second.usage.input_tokens > first.usage.input_tokens
    # The same conversation sent whole costs the same prompt.
    whole = client.responses.create(
        **ask(
            input=[{"role": "user", "content": "What is the weather in Paris?"}, call, result],
            tools=[TOOL],
        )
    )
    assert whole.usage.input_tokens == second.usage.input_tokens


def test_store_false_is_not_kept(client: openai.OpenAI) -> None:
    r = client.responses.create(**ask(input="Hi", store=False, max_output_tokens=1))
    with pytest.raises(openai.NotFoundError):
        client.responses.create(**ask(input="Again", previous_response_id=r.id))


def test_stored_response_is_retrieved_listed_and_deleted(client: openai.OpenAI) -> None:
    """The SDK's retrieve, input_items.list (paged) and delete on a stored response."""
    first = client.responses.create(**ask(input="Hello there", max_output_tokens=4))
    follow = [{"role": "user", "content": f"Question {i}"} for i in range(3)]
    second = client.responses.create(
        **ask(input=follow, previous_response_id=first.id, max_output_tokens=4)
    )
    got = client.responses.retrieve(second.id)
    assert got.model_dump() == second.model_dump()
    # Newest first by default: this turn's three questions, then the first turn's output
    # and its input; two items a page, the SDK follows the cursor.
    items = list(client.responses.input_items.list(second.id, limit=2))
    assert [i.content[0].text for i in items[:3]] == ["Question 2", "Question 1", "Question 0"]
    assert items[3].role == "assistant" and items[4].content[0].text == "Hello there"
    assert len(items) == 5 and len({i.id for i in items}) == 5
    oldest = client.responses.input_items.list(second.id, order="asc", limit=1)
    assert oldest.data[0].id == items[-1].id and oldest.has_more
    client.responses.delete(second.id)
    for call in (client.responses.retrieve, client.responses.delete):
        with pytest.raises(openai.NotFoundError) as e:
            call(second.id)
        assert e.value.body["code"] == "response_not_found"
    with pytest.raises(openai.NotFoundError):
        client.responses.create(**ask(input="More", previous_response_id=second.id))
    client.responses.retrieve(first.id)  # the earlier turn is its own entry
    with pytest.raises(openai.BadRequestError) as e:
        client.responses.input_items.list(first.id, after="msg_missing")
    assert e.value.body["param"] == "after"


def test_streamed_response_is_stored_as_it_ended(client: openai.OpenAI) -> None:
    stream = client.responses.create(**ask(input="Hi", max_output_tokens=4), stream=True)
    ends = ("response.completed", "response.incomplete")
    [final] = [e.response for e in stream if e.type in ends]
    assert client.responses.retrieve(final.id).model_dump() == final.model_dump()


def test_json_schema_format(client: openai.OpenAI) -> None:
    fmt = {"type": "json_schema", "name": "person", "schema": PERSON, "strict": True}
    r = client.responses.create(
        **ask(input="Describe a person.", text={"format": fmt}, max_output_tokens=64)
    )
    assert r.status == "completed"
    jsonschema.validate(json.loads(r.output_text), PERSON)
    assert r.text.format.type == "json_schema"


def test_unknown_previous_response_is_404(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as e:
        client.responses.create(**ask(input="Hi", previous_response_id="resp_missing"))
    assert e.value.body["param"] == "previous_response_id"
    assert e.value.body["code"] == "previous_response_not_found"


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"tools": [{"type": "web_search"}]}, "tools[0].type"),
        ({"reasoning": {"effort": "high"}}, "reasoning"),
        ({"background": True}, "background"),
        ({"input": [{"type": "item_reference", "id": "x"}]}, "input.0"),
    ],
)
def test_unsupported_fields_are_400(client: openai.OpenAI, extra: dict, param: str) -> None:
    with pytest.raises(openai.BadRequestError) as e:
        client.responses.create(**{**ask(input="Hi"), **extra})
    assert e.value.body["param"] == param
    assert "not supported" in e.value.body["message"]


def test_unknown_field_is_400(server: LiveServer) -> None:
    r = httpx.post(server.url + "/v1/responses", json={"input": "Hi", "frobnicate": 1})
    assert r.status_code == 400 and r.json()["error"]["param"] == "frobnicate"


def test_sdk_stream_helper_accumulates(client: openai.OpenAI) -> None:
    """The SDK's ``responses.stream`` rebuilds the response from the events; it must agree
    with the one the server sends last (text, then a call)."""
    fmt = {"type": "json_schema", "name": "person", "schema": PERSON}  # ends within budget
    text = {"format": fmt}
    with client.responses.stream(
        **ask(input="Describe a person.", text=text, max_output_tokens=64)
    ) as stream:
        deltas = "".join(e.delta for e in stream if e.type == "response.output_text.delta")
        final = stream.get_final_response()
    assert deltas and final.output_text == deltas
    with client.responses.stream(
        **ask(
            input="What is the weather in Paris?",
            tools=[TOOL],
            tool_choice="required",
            max_output_tokens=64,
        ),
        parallel_tool_calls=False,
    ) as stream:
        final = stream.get_final_response()
    check_call(final.output[-1])
