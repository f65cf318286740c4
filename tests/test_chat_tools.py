"""Tool definitions, tool choice and argument validation (model-free)."""

from __future__ import annotations

import time

import pytest

from ferrousforge.chat.tools import Tool, ToolChoice, parse_tool_choice


def tool(name: str = "get_weather", parameters=None) -> dict:
    fn = {"name": name}
    if parameters is not None:
        fn["parameters"] = parameters
    return {"type": "function", "function": fn}


def test_openai_and_legacy_shapes_give_the_same_tool():
    params = {"type": "object", "properties": {"city": {"type": "string"}}}
    a = Tool.from_openai(tool(parameters=params))
    b = Tool.from_openai({"name": "get_weather", "parameters": params}, "functions[0]")
    assert a == b
    assert a.as_openai() == {
        "type": "function",
        "function": {"name": "get_weather", "parameters": params},
    }


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"type": "retrieval"}, "only tools of type 'function'"),
        (tool("has space"), "function name must be"),
        (tool("x" * 65), "function name must be"),
        (tool(parameters={"type": "object", "properties": {"a": 5}}), "not a valid JSON Schema"),
        (tool(parameters=[1]), "parameters must be a JSON Schema object"),
    ],
)
def test_bad_tools_are_value_errors_naming_the_field(spec, message):
    with pytest.raises(ValueError, match=message) as e:
        Tool.from_openai(spec, "tools[3]")
    assert str(e.value).startswith("tools[3]: ")


def test_tool_choice_forms():
    tools = [Tool.from_openai(tool("a")), Tool.from_openai(tool("b"))]
    assert parse_tool_choice(None, tools) == ToolChoice("auto")
    assert parse_tool_choice(None, []) == ToolChoice("none")
    assert parse_tool_choice("required", tools).forces_call
    named = parse_tool_choice({"type": "function", "function": {"name": "b"}}, tools)
    assert named == ToolChoice("required", "b")
    assert parse_tool_choice({"name": "a"}, tools, "function_call").name == "a"  # legacy
    with pytest.raises(ValueError, match="tool_choice: no tool named 'c'"):
        parse_tool_choice({"type": "function", "function": {"name": "c"}}, tools)
    with pytest.raises(ValueError, match="tool_choice: 'required' needs"):
        parse_tool_choice("required", [])


def test_arguments_validate_against_the_whole_schema():
    t = Tool.from_openai(
        tool(
            parameters={
                "type": "object",
                "properties": {"n": {"type": "integer", "minimum": 3}, "s": {"pattern": "^x"}},
                "required": ["n"],
                "additionalProperties": False,
            }
        )
    )
    assert t.check_arguments({"n": 3, "s": "xy"}) is None
    assert "minimum" in t.check_arguments({"n": 2})
    assert "does not match" in t.check_arguments({"n": 3, "s": "yx"})
    assert "additional" in t.check_arguments({"n": 3, "other": 1})
    assert t.check_arguments({}) is not None


def test_a_catastrophic_pattern_cannot_stall_validation():
    """^(a|a)*$ on 40 a's and a b takes Python's re about 2^40 steps; a client can send it."""
    t = Tool.from_openai(
        tool(parameters={"type": "object", "properties": {"s": {"pattern": "^(a|a)*$"}}})
    )
    t0 = time.perf_counter()
    assert t.check_arguments({"s": "a" * 40 + "b"}) is not None
    assert time.perf_counter() - t0 < 5  # a bound on a hang, not a speed measurement


def test_nesting_is_bounded_before_jsonschema_recurses():
    """jsonschema recurses per level: 800 nested properties raised RecursionError (a 500)."""
    deep: dict = {"type": "object"}
    for _ in range(800):
        deep = {"type": "object", "properties": {"a": deep}}
    with pytest.raises(ValueError, match="nest deeper than 128"):
        Tool.from_openai(tool(parameters=deep))
    lists: list = []
    for _ in range(800):
        lists = [lists]
    assert "nest deeper" in Tool.from_openai(tool(parameters={})).check_arguments({"a": lists})
