"""Chat templates rendered with tools: the fixtures' own tool syntax, and polyfills for
templates that know nothing of tools (model-free)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from ferrousforge.chat.formats import FORMATS, detect_format
from ferrousforge.chat.rendering import (
    RESERVED_KWARGS,
    TemplateCaps,
    parsed_arguments,
    render_with_tools,
    template_caps,
)
from ferrousforge.chat.tools import Tool, ToolChoice
from ferrousforge.errors import ChatTemplateError
from ferrousforge.inference.backends.llama_cpp.chat_template import render_chat

FIXTURES = Path(__file__).parent / "fixtures" / "chat_templates"
TOOL_FIXTURES = ("hermes", "qwen3_think", "llama3", "mistral")

WEATHER = Tool(
    "get_weather",
    "Current weather in a city",
    {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
)
TIME = Tool("get_time", "Local time in a city", {"type": "object", "properties": {}})
TOOLS = [WEATHER, TIME]


def template(name: str) -> str:
    return (FIXTURES / f"{name}.jinja").read_text()


def conversation() -> list[dict]:
    """user -> assistant calls (two, arguments as JSON strings) -> both results."""
    return [
        {"role": "system", "content": "Answer in one short sentence."},
        {"role": "user", "content": "Weather in Paris and in Lyon?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_a",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                },
                {
                    "id": "call_b",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Lyon"}'},
                },
            ],
        },
        {"role": "tool", "tool_call_id": "call_a", "content": "sunny and 21 degrees"},
        {"role": "tool", "tool_call_id": "call_b", "content": "light rain"},
    ]


def render(name_or_source: str, messages: list[dict], **kw) -> str:
    source = template(name_or_source) if "{" not in name_or_source else name_or_source
    kw.setdefault("tools", TOOLS)
    kw.setdefault("choice", ToolChoice("auto"))
    kw.setdefault("fmt", detect_format(source))
    return render_with_tools(source, messages, bos_token="<s>", eos_token="</s>", **kw)


# ---- capabilities --------------------------------------------------------------------------


@pytest.mark.parametrize("name", TOOL_FIXTURES)
def test_tool_fixtures_show_everything(name):
    assert template_caps(template(name)) == TemplateCaps(True, True, True, True)


def test_plain_chatml_shows_no_tools_and_its_generic_tool_turn_does_not_count():
    # It prints a "tool" role like any other: a turn its model never learnt to read.
    assert template_caps(template("chatml_plain")) == TemplateCaps(True, False, False, False)


def test_a_template_that_raises_on_a_probe_lacks_that_capability():
    assert template_caps(template("alternating")) == TemplateCaps(False, False, False, False)


def test_bundled_model_template_knows_no_tools():
    from ferrousforge.inference.gguf import read_gguf
    from ferrousforge.models.default_model import bundled_model_path

    caps = template_caps(read_gguf(bundled_model_path()).chat_template)
    assert caps == TemplateCaps(True, False, False, False)


def test_fixture_formats_are_detected():
    assert {n: detect_format(template(n)).name for n in (*TOOL_FIXTURES, "chatml_plain")} == {
        "hermes": "hermes",
        "qwen3_think": "hermes",
        "llama3": "llama3",
        "mistral": "mistral",
        "chatml_plain": "generic",
    }


# ---- templates that render tools themselves ------------------------------------------------


@pytest.mark.parametrize("name", TOOL_FIXTURES)
def test_round_trip_renders_in_the_templates_own_syntax(name):
    out = render(name, conversation())
    # the tools reach the template (its own listing, not our description)
    assert '"name": "get_weather"' in out and "Current weather in a city" in out
    assert "Answer ONLY" not in out and "You can call these tools" not in out
    # calls: arguments as JSON objects, never a Python repr or a re-quoted string
    assert '{"city": "Paris"}' in out and '{"city": "Lyon"}' in out
    assert "{'city'" not in out and '\\"city\\"' not in out
    assert "sunny and 21 degrees" in out and "light rain" in out
    assert "Answer in one short sentence." in out
    assert "None" not in out


@pytest.mark.parametrize(
    ("name", "call"),
    [
        ("hermes", '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}'),
        ("llama3", '{"name": "get_weather", "parameters": {"city": "Paris"}}; '),
        ("mistral", '[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Paris"}}, '),
    ],
)
def test_calls_reach_the_template_as_objects(name, call):
    assert call in render(name, conversation())


def test_generation_prompt_ends_the_prompt():
    assert render("hermes", conversation()).endswith("<|im_start|>assistant\n")
    assert render("llama3", conversation()).endswith(
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )


def test_arguments_print_as_json_whichever_way_a_template_reads_them():
    args = parsed_arguments('{"city": "Paris", "days": [1, 2], "opts": {"metric": true}}')
    src = (
        "{% for m in messages %}{% set a = m.tool_calls[0].function.arguments %}"
        "{{ a }}|{{ a | tojson }}|{{ a is mapping }}|{{ a.opts }}|{{ a.days }}{% endfor %}"
    )
    call = {"id": "c", "type": "function", "function": {"name": "f", "arguments": args}}
    msgs = [{"role": "assistant", "content": "", "tool_calls": [call]}]
    out = render_chat(src, msgs, bos_token="", eos_token="")
    whole = '{"city": "Paris", "days": [1, 2], "opts": {"metric": true}}'
    assert out == f'{whole}|{whole}|True|{{"metric": true}}|[1, 2]'


def test_arguments_that_are_not_a_json_object_stay_text():
    assert parsed_arguments("not json") == "not json"
    assert parsed_arguments("[1, 2]") == "[1, 2]"
    deep = '{"a": ' * 100_000 + "1" + "}" * 100_000
    assert parsed_arguments(deep) == deep


def test_tool_choice_none_neither_passes_nor_describes_tools():
    msgs = [{"role": "user", "content": "hi"}]
    for name in ("hermes", "chatml_plain"):
        out = render(name, msgs, choice=ToolChoice("none"))
        assert "get_weather" not in out


def test_only_the_offered_tools_reach_the_template():
    out = render("hermes", [{"role": "user", "content": "hi"}], tools=[TIME])
    assert "get_time" in out and "get_weather" not in out


# Shows calls only with 9-character ids (as some Mistral templates demand), nothing else.
NINE_CHAR_IDS = (
    "{% for m in messages %}{% for c in m.tool_calls or [] %}"
    "{% if c.id | length != 9 %}{{ raise_exception('call ids must be 9 characters') }}{% endif %}"
    '[TOOL_CALLS][{"name": "{{ c.function.name }}", "arguments": '
    '{{ c.function.arguments | tojson }}, "id": "{{ c.id }}"}]{% endfor %}'
    "{% if m.role == 'tool' %}{% if m.tool_call_id | length != 9 %}"
    "{{ raise_exception('call ids must be 9 characters') }}{% endif %}"
    '[TOOL_RESULTS]{"call_id": "{{ m.tool_call_id }}", "content": {{ m.content | tojson }}}'
    "[/TOOL_RESULTS]{% elif m.role == 'user' %}[INST] {{ m.content }}[/INST]{% endif %}"
    "{% endfor %}"
)


def test_call_ids_are_shortened_for_a_template_that_refuses_openai_ids():
    caps = template_caps(NINE_CHAR_IDS)
    assert (caps.tool_calls, caps.tool_responses, caps.short_call_ids) == (True, True, True)
    out = render(NINE_CHAR_IDS, conversation())
    ids = re.findall(r'"id": "(\w+)"', out)
    assert len(ids) == 2 and all(len(i) == 9 for i in ids) and ids[0] != ids[1]
    assert re.findall(r'"call_id": "(\w+)"', out) == ids
    assert '"arguments": {"city": "Paris"}' in out and '"content": "light rain"' in out
    # no system role and no tool listing: both join the first user turn, in mistral syntax
    assert out.startswith("[INST] Answer in one short sentence.\n\nYou can call these tools")
    assert "[TOOL_CALLS][{" in out.split("[/INST]")[0]


def test_calls_a_template_refuses_fall_back_to_text_in_its_format():
    # Like Llama 3.1's own template: one call per turn, or it raises (the probe passes one).
    single = (
        "{% for m in messages %}{% if m.tool_calls and m.tool_calls | length > 1 %}"
        "{{ raise_exception('only single tool calls') }}{% endif %}{% endfor %}"
    ) + template("llama3")
    assert template_caps(single).tool_calls
    out = render(single, conversation())
    assert (
        '<|start_header_id|>assistant<|end_header_id|>\n\n{"name": "get_weather", '
        '"parameters": {"city": "Paris"}}; {"name": "get_weather", "parameters": '
        '{"city": "Lyon"}}<|eot_id|>' in out
    )
    assert "<|start_header_id|>ipython<|end_header_id|>\n\nlight rain" in out
    with pytest.raises(ChatTemplateError, match="only single tool calls"):
        render(single, [*conversation(), {"role": "system", "content": "late"}])


# ---- polyfills for templates without tools -------------------------------------------------


def test_generic_description_joins_the_existing_system_turn():
    out = render("chatml_plain", conversation())
    system = out.split("<|im_end|>")[0]
    assert system.startswith("<|im_start|>system\nAnswer in one short sentence.\n\n")
    assert json.dumps(WEATHER.as_openai()) in system and json.dumps(TIME.as_openai()) in system
    assert '{"tool_calls": [' in system and '{"response": ' in system
    assert out.count("<|im_start|>system") == 1


def test_generic_description_without_a_system_message_becomes_one():
    out = render("chatml_plain", [{"role": "user", "content": "hi"}])
    assert out.startswith("<|im_start|>system\nYou can call these tools")


def test_generic_forced_choices_ask_only_for_calls():
    msgs = [{"role": "user", "content": "hi"}]
    required = render("chatml_plain", msgs, choice=ToolChoice("required"))
    named = render("chatml_plain", msgs, choice=ToolChoice("required", "get_time"))
    for out in (required, named):
        assert '{"tool_calls": [' in out and '"response"' not in out
    assert "get_time" in named.split("Answer ONLY")[1]


def test_generic_calls_and_results_become_plain_turns():
    out = render("chatml_plain", conversation())
    calls = [
        {"name": "get_weather", "arguments": {"city": "Paris"}},
        {"name": "get_weather", "arguments": {"city": "Lyon"}},
    ]
    assert f"<|im_start|>assistant\n{json.dumps({'tool_calls': calls})}<|im_end|>" in out
    results = [
        {"name": "get_weather", "tool_call_id": "call_a", "content": "sunny and 21 degrees"},
        {"name": "get_weather", "tool_call_id": "call_b", "content": "light rain"},
    ]
    turn = "\n".join(json.dumps({"tool_response": r}) for r in results)
    assert f"<|im_start|>user\n{turn}<|im_end|>\n<|im_start|>assistant\n" in out
    assert "<|im_start|>tool" not in out


def test_alternation_strict_template_still_renders_a_tool_round_trip():
    msgs = [*conversation(), {"role": "user", "content": "And tomorrow?"}]
    with pytest.raises(ChatTemplateError):  # what it makes of the raw conversation
        render_chat(template("alternating"), msgs, bos_token="<s>", eos_token="</s>")
    out = render("alternating", msgs)
    # system text and tool description start the first user turn (it has no system role)
    assert out.startswith("<s>[INST] Answer in one short sentence.\n\nYou can call these tools")
    assert ' [/INST] {"tool_calls": [{"name": "get_weather"' in out
    assert '"content": "light rain"}}\nAnd tomorrow? [/INST]' in out
    assert out.count("[INST]") == 2


def test_a_format_without_template_support_is_described_in_its_own_syntax():
    out = render("chatml_plain", conversation(), fmt=FORMATS["hermes"])
    assert "<tool_call>" in out.split("<|im_end|>")[0]  # the system description
    assert (
        '<|im_start|>assistant\n<tool_call>\n{"name": "get_weather", "arguments": '
        '{"city": "Paris"}}\n</tool_call>\n<tool_call>' in out
    )


def test_generic_format_on_a_tool_template_teaches_the_generic_answer():
    # A configured format the template does not teach: its own tool prompt would contradict
    # the grammar, so the tools are described and past calls written the generic way.
    out = render("hermes", conversation(), fmt=FORMATS["generic"])
    assert "<tools>" not in out and "<tool_call>" not in out
    assert "Answer ONLY with a JSON object" in out
    assert '<|im_start|>assistant\n{"tool_calls": [{"name": "get_weather"' in out
    # Results follow the calls into text: templates attach native results to native calls.
    result = {"name": "get_weather", "tool_call_id": "call_b", "content": "light rain"}
    assert json.dumps({"tool_response": result}) in out


def test_assistant_text_before_polyfilled_calls_is_kept():
    msgs = conversation()
    msgs[2]["content"] = "Let me check."
    out = render("chatml_plain", msgs)
    assert '<|im_start|>assistant\nLet me check.\n{"tool_calls": [' in out


# ---- template variables ----------------------------------------------------------------------


def test_enable_thinking_false_closes_an_empty_reasoning_block():
    msgs = [{"role": "user", "content": "hi"}]
    default = render("qwen3_think", msgs)
    off = render("qwen3_think", msgs, template_kwargs={"enable_thinking": False})
    assert default.endswith("<|im_start|>assistant\n")
    assert off.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")


@pytest.mark.parametrize("key", sorted(RESERVED_KWARGS))
def test_reserved_template_kwargs_are_refused(key):
    with pytest.raises(ValueError, match=f"^chat_template_kwargs: '{key}'"):
        render("hermes", [{"role": "user", "content": "hi"}], template_kwargs={key: 1})


def test_template_failures_stay_chat_template_errors():
    msgs = [{"role": "user", "content": "hi"}]
    with pytest.raises(ChatTemplateError):
        render_with_tools(
            None,
            msgs,
            tools=TOOLS,
            choice=ToolChoice(),
            fmt=FORMATS["generic"],
            bos_token="",
            eos_token="",
        )
    with pytest.raises(ChatTemplateError, match="no tools here"):
        render("{{ raise_exception('no tools here') }}", msgs)


def test_generation_blocks_render_their_body():
    """Hugging Face's {% generation %} tag (training masks) appears in newer templates."""
    src = "{% for m in messages %}{% generation %}[{{ m.content }}]{% endgeneration %}{% endfor %}"
    msgs = [{"role": "user", "content": "hi"}]
    assert render_chat(src, msgs, bos_token="", eos_token="") == "[hi]"
