"""Tool calling through the library API: BackendInput.Chat with tools (issue 9).

The same guarantees as over HTTP: with tool_choice "required" or a named function the answer
holds calls that validate against their tool's schema, whole or streamed.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from model_traits import chat_template_for_tests, loaded_model

from ferrousforge.api.request import InferenceOptions
from ferrousforge.inference.backend import BackendInput

pytestmark = pytest.mark.integration

TEMPLATES = Path(__file__).parent / "fixtures" / "chat_templates"
# The model's own template, which knows no tools (the generic JSON format); a model without
# one gets a generic chat template that knows none either.
FORMATS = {"generic": chat_template_for_tests()} | {
    name: (TEMPLATES / f"{name}.jinja").read_text()
    for name in ("hermes", "llama3", "mistral", "qwen3_think")
}
OPTIONS = InferenceOptions(temperature=0, max_tokens=64)
SCHEMAS = {
    "get_weather": {
        "type": "object",
        "properties": {
            "city": {"type": "string"},
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
        },
        "required": ["city", "unit"],
    },
    "get_time": {
        "type": "object",
        "properties": {"timezone": {"type": "string"}},
        "required": ["timezone"],
    },
}
TOOLS = [
    {"type": "function", "function": {"name": name, "description": name, "parameters": schema}}
    for name, schema in SCHEMAS.items()
]
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]
NAMED = {"type": "function", "function": {"name": "get_time"}}


@pytest.fixture(scope="module")
def loaded(model_path):
    with loaded_model(model_path, context_size=4096, max_parallel=8) as loaded:
        yield loaded


def chat(fmt: str, choice: Any = "required", parallel: bool = False, **extra: Any) -> Any:
    return BackendInput.Chat(
        ASK,
        chat_template=FORMATS[fmt],
        tools=TOOLS,
        tool_choice=choice,
        parallel_tool_calls=parallel,
        **extra,
    )


def check_calls(calls: list[Any], allowed: set[str], parallel: bool = False) -> None:
    assert calls and (parallel or len(calls) == 1), calls
    assert len({c.id for c in calls}) == len(calls) and all(c.id for c in calls), calls
    for call in calls:
        assert call.name in allowed, call
        jsonschema.validate(json.loads(call.arguments), SCHEMAS[call.name])


async def test_infer_returns_validated_calls(loaded) -> None:
    """Every format with required, two with a named tool: one call that validates,
    finish_reason tool_calls."""
    backend, handle = loaded
    cases = [(fmt, "required") for fmt in FORMATS] + [("generic", "named"), ("llama3", "named")]
    outs = await asyncio.gather(
        *(
            backend.infer(handle, chat(fmt, NAMED if c == "named" else c), OPTIONS)
            for fmt, c in cases
        )
    )
    for (fmt, choice), out in zip(cases, outs, strict=True):
        allowed = {"get_time"} if choice == "named" else set(SCHEMAS)
        check_calls(out.tool_calls, allowed)
        assert out.finish_reason == "tool_calls", (fmt, choice, out.text)


async def test_infer_stream_chunks_carry_the_calls(loaded) -> None:
    backend, handle = loaded

    streamed_formats = ["generic", "mistral"]

    async def streamed(fmt: str) -> list[Any]:
        return [c async for c in backend.infer_stream(handle, chat(fmt, NAMED), OPTIONS)]

    runs = await asyncio.gather(*map(streamed, streamed_formats))
    for fmt, chunks in zip(streamed_formats, runs, strict=True):
        calls = [call for chunk in chunks for call in chunk.tool_calls]
        check_calls(calls, {"get_time"})
        assert chunks[-1].finish_reason == "tool_calls", fmt
        assert all(isinstance(c.reasoning, str) for c in chunks)


async def test_parallel_calls_validate_and_none_never_calls(loaded) -> None:
    backend, handle = loaded
    parallel = await backend.infer(handle, chat("hermes", parallel=True), OPTIONS)
    check_calls(parallel.tool_calls, set(SCHEMAS), parallel=True)
    assert parallel.finish_reason in ("tool_calls", "length")
    none = await backend.infer(handle, chat("hermes", "none"), OPTIONS)
    assert not none.tool_calls and none.finish_reason in ("stop", "length") and none.text


async def test_tool_format_override_and_thinking_off(loaded) -> None:
    backend, handle = loaded
    generic = await backend.infer(handle, chat("hermes", tool_format="generic"), OPTIONS)
    check_calls(generic.tool_calls, set(SCHEMAS))
    quiet = BackendInput.Chat(
        [{"role": "user", "content": "Say hello."}],
        chat_template=FORMATS["qwen3_think"],
        chat_template_kwargs={"enable_thinking": False},
    )
    out = await backend.infer(handle, quiet, InferenceOptions(temperature=0, max_tokens=16))
    assert out.text and "<think>" not in out.text and not out.reasoning


async def test_unknown_tool_choice_is_a_value_error(loaded) -> None:
    backend, handle = loaded
    choice = {"type": "function", "function": {"name": "nope"}}
    with pytest.raises(ValueError, match="tool_choice"):
        await backend.infer(handle, chat("hermes", choice), OPTIONS)
