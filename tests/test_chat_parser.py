"""The chat output parser on hand-written model outputs: content, reasoning and tool calls,
whole and streamed in every possible split."""

from __future__ import annotations

import json
import random

import pytest

from ferrousforge.chat.formats import FORMATS
from ferrousforge.chat.parser import (
    CallDelta,
    ChatParser,
    ContentDelta,
    Event,
    ParsedMessage,
    ReasoningDelta,
    parse_message,
)
from ferrousforge.chat.reasoning import THINK
from ferrousforge.chat.tools import Tool

WEATHER = Tool(
    "get_weather",
    "Weather in a city",
    {
        "type": "object",
        "properties": {"city": {"type": "string"}, "unit": {"enum": ["C", "F"]}},
        "required": ["city"],
    },
)
TIME = Tool(
    "get_time",
    None,
    {"type": "object", "properties": {"tz": {"type": "string"}}, "required": ["tz"]},
)
PING = Tool("ping")  # no parameters
TOOLS = [WEATHER, TIME, PING]

PARIS = '{"name": "get_weather", "arguments": {"city": "Paris"}}'
UTC = '{"name": "get_time", "arguments": {"tz": "UTC"}}'


def parse(text: str, fmt: str | None = "hermes", **kw) -> ParsedMessage:
    kw.setdefault("reasoning", THINK)
    return parse_message(text, FORMATS[fmt] if fmt else None, TOOLS, **kw)


def calls(msg: ParsedMessage) -> list[tuple[str, dict]]:
    return [(c.name, json.loads(c.arguments)) for c in msg.tool_calls]


def stream(pieces: list[str], fmt: str | None = "hermes", **kw) -> list[Event]:
    kw.setdefault("reasoning", THINK)
    parser = ChatParser(FORMATS[fmt] if fmt else None, TOOLS, **kw)
    events: list[Event] = []
    for piece in pieces:
        events += parser.feed(piece)
    return events + parser.finish()


def aggregate(events: list[Event]) -> ParsedMessage:
    content = "".join(e.text for e in events if isinstance(e, ContentDelta))
    thought = "".join(e.text for e in events if isinstance(e, ReasoningDelta))
    found = [e for e in events if isinstance(e, CallDelta)]
    assert [e.index for e in found] == list(range(len(found)))
    return ParsedMessage(content, thought or None, [e.call for e in found])


def same(a: ParsedMessage, b: ParsedMessage) -> bool:
    return (a.content, a.reasoning, calls(a)) == (b.content, b.reasoning, calls(b))


# --- Hermes / Qwen ---------------------------------------------------------------------------


def test_hermes_one_call():
    msg = parse(f"<tool_call>\n{PARIS}\n</tool_call>")
    assert calls(msg) == [("get_weather", {"city": "Paris"})]
    assert msg.content == ""
    assert msg.reasoning is None
    assert msg.tool_calls[0].id.startswith("call_")


def test_hermes_parallel_calls_get_their_own_ids():
    msg = parse(f"<tool_call>{PARIS}</tool_call>\n<tool_call>\n{UTC}\n</tool_call>\n")
    assert calls(msg) == [("get_weather", {"city": "Paris"}), ("get_time", {"tz": "UTC"})]
    assert msg.content == ""
    assert len({c.id for c in msg.tool_calls}) == 2


def test_text_before_a_call_is_content_without_the_whitespace_around_the_call():
    msg = parse(f"Let me look that up.\n\n<tool_call>{PARIS}</tool_call>\n")
    assert msg.content == "Let me look that up."
    assert calls(msg) == [("get_weather", {"city": "Paris"})]


def test_text_after_a_call_is_content():
    msg = parse(f"<tool_call>{PARIS}</tool_call>\n\nDone.\n")
    assert msg.content == "Done."
    assert calls(msg) == [("get_weather", {"city": "Paris"})]


def test_hermes_missing_end_marker_at_the_end():
    msg = parse(f"<tool_call>\n{PARIS}\n")
    assert calls(msg) == [("get_weather", {"city": "Paris"})]
    assert msg.content == ""


@pytest.mark.parametrize(
    "text",
    [
        '<tool_call>{"name":"get_weather","arguments":{"city":"Paris"}}</tool_call>',
        '<tool_call>\n  {\n    "name" : "get_weather",\n    "arguments" : {\n'
        '      "city" : "Paris"\n    }\n  }\n</tool_call>',
        '\n\n  <tool_call>\t{ "name":\t"get_weather", "arguments": { "city": "Paris" } }'
        "\t</tool_call>\n\n",
    ],
)
def test_whitespace_variants(text):
    msg = parse(text)
    assert calls(msg) == [("get_weather", {"city": "Paris"})]
    assert msg.content == ""


def test_hermes_array_of_calls_inside_one_marker():
    msg = parse(f"<tool_call>[{PARIS}, {UTC}]</tool_call>")
    assert [c.name for c in msg.tool_calls] == ["get_weather", "get_time"]
    assert msg.content == ""


def test_arguments_key_variants():
    params = '{"name": "get_weather", "parameters": {"city": "Oslo"}}'
    as_string = '{"name": "get_weather", "arguments": "{\\"city\\": \\"Rome\\"}"}'
    missing = '{"name": "ping"}'
    msg = parse("".join(f"<tool_call>{c}</tool_call>" for c in (params, as_string, missing)))
    assert calls(msg) == [
        ("get_weather", {"city": "Oslo"}),
        ("get_weather", {"city": "Rome"}),
        ("ping", {}),
    ]


def test_arguments_keep_unicode_and_nesting():
    text = (
        '<tool_call>{"name": "get_weather", "arguments": {"city": "S\\u00e3o {Paulo} [\\"x\\"]"}}'
    )
    msg = parse(text + "</tool_call>")
    assert calls(msg) == [("get_weather", {"city": 'São {Paulo} ["x"]'})]


# --- what is never a call ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "call",
    [
        '{"name": "get_weather", "arguments": {"city": Paris}}',  # malformed JSON
        '{"name": "get_wether", "arguments": {"city": "Paris"}}',  # unknown tool
        '{"name": "get_weather", "arguments": {"town": "Paris"}}',  # misses required "city"
        '{"name": "get_weather", "arguments": {"city": 7}}',  # wrong type
        '{"name": "get_weather", "arguments": {"city": "Paris", "unit": "K"}}',  # not in enum
        '{"name": "get_weather", "arguments": "not json"}',
        '{"name": "get_weather", "arguments": [1, 2]}',
        '{"name": "get_weather", "arguments": {"city": NaN}}',
        '["get_weather", {"city": "Paris"}]',
    ],
)
def test_invalid_calls_come_back_as_content(call):
    for text in (f"<tool_call>{call}</tool_call>", f"Text. <tool_call>{call} more"):
        msg = parse(text)
        assert msg.tool_calls == []
        assert msg.content == text
        assert same(aggregate(stream(list(text))), msg)


@pytest.mark.parametrize(
    ("fmt", "cut"),
    [
        ("hermes", 'Checking. <tool_call>\n{"name": "get_weather", "arguments":'),
        ("hermes", "Checking. <tool_call>\n"),
        ("hermes", f'Checking. <tool_call>{PARIS}</tool_call> <tool_call>{{"name": "get_t'),
        ("llama3", 'Checking. {"name": "get_weather", "parameters": {"city": "Pa'),
        ("mistral", f"Checking. [TOOL_CALLS][{PARIS}, "),
        ("mistral", "Checking. [TOOL_CALLS] ["),
        ("generic", f'{{"tool_calls": [{PARIS}, {{"name"'),
    ],
)
def test_a_call_cut_short_at_max_tokens_is_dropped(fmt, cut):
    msg = parse(cut, fmt=fmt)
    assert msg.content == ("" if fmt == "generic" else "Checking.")
    assert [c.name for c in msg.tool_calls] == (["get_weather"] if PARIS in cut else [])
    assert same(aggregate(stream(list(cut), fmt=fmt)), msg)


def test_invalid_call_next_to_a_valid_one():
    bad = '{"name": "get_weather", "arguments": {"city": 7}}'
    msg = parse(f"<tool_call>{PARIS}</tool_call>\n<tool_call>{bad}</tool_call>")
    assert calls(msg) == [("get_weather", {"city": "Paris"})]
    assert msg.content == f"<tool_call>{bad}</tool_call>"


def test_marker_without_a_call_is_content():
    assert parse("Use the <tool_call> tag.").content == "Use the <tool_call> tag."
    assert parse("<tool_call>[]</tool_call>").content == "<tool_call>[]</tool_call>"


def test_no_tools_format_parses_no_calls():
    text = f"<think>a</think><tool_call>{PARIS}</tool_call>"
    msg = parse(text, fmt=None)
    assert msg.tool_calls == []
    assert msg.content == f"<tool_call>{PARIS}</tool_call>"
    assert msg.reasoning == "a"


def test_a_call_to_a_tool_when_none_are_offered_is_content():
    text = f"<tool_call>{PARIS}</tool_call>"
    msg = parse_message(text, FORMATS["hermes"], [], reasoning=None)
    assert (msg.content, msg.tool_calls) == (text, [])


# --- bare JSON calls (small models leave the markers out) ------------------------------------


@pytest.mark.parametrize("fmt", ["hermes", "llama3", "mistral"])
def test_bare_json_call(fmt):
    msg = parse(f"  {PARIS}  ", fmt=fmt)
    assert calls(msg) == [("get_weather", {"city": "Paris"})]
    assert msg.content == ""


@pytest.mark.parametrize(
    "text",
    [
        f"```json\n{PARIS}\n```",
        f"```\n{PARIS}\n```\n",
        f"```JSON\n{PARIS},\n{UTC}\n```",
        f"```json\n{PARIS}\n```\n```json\n{UTC}\n```",
    ],
)
def test_code_fenced_bare_json(text):
    msg = parse(text)
    assert msg.content == ""
    assert calls(msg)[0] == ("get_weather", {"city": "Paris"})
    assert len(msg.tool_calls) == (2 if "get_time" in text else 1)


def test_bare_calls_separated_by_commas_semicolons_or_whitespace():
    msg = parse(f"{PARIS}, {UTC};\n{PARIS}\n{UTC}", fmt="llama3")
    assert [c.name for c in msg.tool_calls] == ["get_weather", "get_time"] * 2
    assert msg.content == ""


def test_bare_json_needs_an_offered_tool_name_first():
    for text in (
        'The result: {"city": "Paris"}',
        'A JSON example: {"name": "Bob", "age": 3}',
        '{"name": "get_weather_2", "arguments": {}}',
        '```python\nprint({"name": "x"})\n```',
    ):
        msg = parse(text)
        assert (msg.content, msg.tool_calls) == (text, [])


def test_text_then_a_bare_call_then_text():
    msg = parse(f"Checking.\n```json\n{PARIS}\n```\nOne moment.")
    assert msg.content == "Checking.One moment."
    assert calls(msg) == [("get_weather", {"city": "Paris"})]


def test_generic_format_takes_no_bare_calls():
    assert parse(PARIS, fmt="generic").content == PARIS


# --- Llama 3 and Mistral ---------------------------------------------------------------------


def test_llama3_python_tag_and_parameters():
    one = '{"name": "get_weather", "parameters": {"city": "Paris", "unit": "C"}}'
    two = '{"name": "get_time", "parameters": {"tz": "UTC"}}'
    msg = parse(f"<|python_tag|>{one}; {two}", fmt="llama3")
    assert calls(msg) == [
        ("get_weather", {"city": "Paris", "unit": "C"}),
        ("get_time", {"tz": "UTC"}),
    ]
    assert msg.content == ""


def test_mistral_array_of_calls():
    msg = parse(f"[TOOL_CALLS] [{PARIS},\n {UTC}]", fmt="mistral")
    assert calls(msg) == [("get_weather", {"city": "Paris"}), ("get_time", {"tz": "UTC"})]
    assert msg.content == ""


def test_mistral_single_object_without_array():
    msg = parse(f"I'll check.[TOOL_CALLS]{PARIS}", fmt="mistral")
    assert calls(msg) == [("get_weather", {"city": "Paris"})]
    assert msg.content == "I'll check."


def test_mistral_invalid_element_in_a_valid_array():
    bad = '{"name": "nope", "arguments": {}}'
    msg = parse(f"[TOOL_CALLS][{PARIS}, {bad}, {UTC}]", fmt="mistral")
    assert [c.name for c in msg.tool_calls] == ["get_weather", "get_time"]
    assert msg.content == bad


def test_mistral_brackets_in_text_are_content():
    text = "See [1] and [TOOL] and [TOOL_CALLS in prose."
    assert parse(text, fmt="mistral").content == text


# --- reasoning --------------------------------------------------------------------------------


def test_reasoning_block_then_a_call():
    msg = parse(f"<think>\nThe user wants weather.\n</think>\n\n<tool_call>{PARIS}</tool_call>")
    assert msg.reasoning == "\nThe user wants weather.\n"
    assert calls(msg) == [("get_weather", {"city": "Paris"})]
    assert msg.content == ""


def test_reasoning_block_then_text():
    msg = parse("  <think>hmm</think>\n\nHello <think>not reasoning</think>")
    assert msg.reasoning == "hmm"
    assert msg.content == "Hello <think>not reasoning</think>"


def test_in_reasoning_prompt_already_opened_the_block():
    msg = parse(f"plan it</think>{UTC}", fmt="llama3", in_reasoning=True)
    assert msg.reasoning == "plan it"
    assert calls(msg) == [("get_time", {"tz": "UTC"})]


def test_output_ending_inside_the_block_is_all_reasoning():
    msg = parse("<think>still thinking <tool_call>", in_reasoning=False)
    assert msg.reasoning == "still thinking <tool_call>"
    assert msg.content == ""
    msg = parse("thinking </thi", in_reasoning=True)
    assert msg.reasoning == "thinking </thi"


def test_block_counts_only_at_the_start():
    msg = parse("Hi <think>x</think>")
    assert (msg.content, msg.reasoning) == ("Hi <think>x</think>", None)


def test_no_reasoning_markers_means_no_extraction():
    msg = parse("<think>x</think>y", reasoning=None)
    assert (msg.content, msg.reasoning) == ("<think>x</think>y", None)


def test_a_call_inside_reasoning_is_reasoning():
    msg = parse(f"<think><tool_call>{PARIS}</tool_call></think>ok")
    assert msg.tool_calls == []
    assert msg.content == "ok"


# --- generic format ----------------------------------------------------------------------------


def test_generic_tool_calls():
    text = f'{{"tool_calls": [{PARIS}, {UTC}]}}'
    msg = parse(text, fmt="generic")
    assert calls(msg) == [("get_weather", {"city": "Paris"}), ("get_time", {"tz": "UTC"})]
    assert msg.content == ""


def test_generic_response_decodes_escapes():
    text = '\n{ "response" : "Caf\\u00e9 \\ud83d\\ude00 \\"ok\\"\\n\\\\ \\/ \\t." }\n'
    msg = parse(text, fmt="generic")
    assert msg.content == 'Café 😀 "ok"\n\\ / \t.'
    assert msg.tool_calls == []


def test_generic_response_streams_as_it_arrives():
    parser = ChatParser(FORMATS["generic"], TOOLS, reasoning=None)
    assert parser.feed('{"respon') == []
    assert parser.feed('se": "Hel') == [ContentDelta("Hel")]
    assert parser.feed("lo \\u00") == [ContentDelta("lo ")]  # the escape waits for its digits
    assert parser.feed("e9\\") == [ContentDelta("é")]
    assert parser.feed('n!"}') == [ContentDelta("\n!")]
    assert parser.finish() == []


def test_generic_response_surrogate_pair_split():
    text = '{"response": "\\ud83d\\ude00"}'
    for cut in range(len(text) + 1):
        assert aggregate(stream([text[:cut], text[cut:]], fmt="generic")).content == "😀"


def test_generic_falls_back_to_plain_content():
    for text in ("Just text.", '{"answer": 42}', "[1, 2]", '{"tool_calls": []}'):
        msg = parse(text, fmt="generic")
        assert (msg.content, msg.tool_calls) == (text, [])


def test_generic_invalid_call_is_content():
    text = '{"tool_calls": [{"name": "get_weather", "arguments": {}}]}'
    msg = parse(text, fmt="generic")
    assert (msg.content, msg.tool_calls) == (text, [])


def test_generic_after_reasoning():
    msg = parse('<think>x</think>\n{"response": "hi"}', fmt="generic")
    assert (msg.reasoning, msg.content) == ("x", "hi")


# --- parallel_tool_calls: false --------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "text"),
    [
        ("hermes", f"<tool_call>{PARIS}</tool_call><tool_call>{UTC}</tool_call>"),
        ("mistral", f"[TOOL_CALLS][{PARIS}, {UTC}]"),
        ("llama3", f"{PARIS}; {UTC}"),
        ("generic", f'{{"tool_calls": [{PARIS}, {UTC}]}}'),
    ],
)
def test_parallel_false_returns_only_the_first_call(fmt, text):
    msg = parse(text, fmt=fmt, parallel=False)
    assert calls(msg) == [("get_weather", {"city": "Paris"})]
    assert msg.content == ""
    assert parse(text, fmt=fmt, parallel=True).tool_calls[1].name == "get_time"


# --- streaming ---------------------------------------------------------------------------------


def test_content_is_not_held_back_longer_than_needed():
    parser = ChatParser(FORMATS["hermes"], TOOLS, reasoning=THINK)
    assert parser.feed("Hello") == [ContentDelta("Hello")]
    assert parser.feed(" there <tool") == [ContentDelta(" there")]
    assert parser.feed("box> {") == [ContentDelta(" <toolbox>")]  # "{" may open a call
    assert parser.feed('"x": 1}') == [ContentDelta(' {"x": 1}')]
    assert parser.feed("<tool_call>" + PARIS[:20]) == []
    events = parser.feed(PARIS[20:] + "</tool_call>")
    assert [type(e) for e in events] == [CallDelta]
    assert parser.finish() == []


def test_reasoning_streams_and_holds_only_a_partial_close_marker():
    parser = ChatParser(None, [], reasoning=THINK)
    assert parser.feed(" <thi") == []
    assert parser.feed("nk>ab") == [ReasoningDelta("ab")]
    assert parser.feed("c</th") == [ReasoningDelta("c")]
    assert parser.feed("ink>\n Hi") == [ContentDelta("Hi")]


CORPUS = [
    ("hermes", f"Sure! Let me check.\n<tool_call>\n{PARIS}\n</tool_call>\n<tool_call>{UTC}"),
    ("hermes", f"<think>\nweather?\n</think>\n\n```json\n{PARIS}\n```"),
    ("hermes", f"<tool_call>{PARIS}</tool_call>\n<tool_call>{{bad json}}</tool_call> tail"),
    ("hermes", 'Text { "name": "get_wea" } and `code` and ``` fences <tool</tool_call>'),
    ("hermes", '<tool_call>{"name": "get_weather", "arguments": {"city": "a\\"}\\\\"}}'),
    ("llama3", f"<|python_tag|>{PARIS.replace('arguments', 'parameters')} ; {UTC}"),
    ("llama3", f'Answer: 42; {{"name": "get_time"}} {UTC}'),
    ("mistral", f"[TOOL_CALLS] [ {PARIS} , {UTC} ]"),
    ("mistral", '[TOOL_CALLS][{"name": "nope", "arguments": {}}] [x]'),
    ("hermes", f"<tool_call>[{PARIS},{UTC}]</tool_call><tool_call>[]</tool_call>"),
    ("generic", '{"response": "a\\u00e9\\ud83d\\ude00\\n\\"b\\\\"}'),
    ("generic", f'  {{ "tool_calls" : [ {PARIS} , {UTC} ] }} '),
    ("generic", '{"weird": true}'),
    ("generic", "<think>hm</think> plain"),
    (None, f"<think>x</think>{PARIS}"),
]


@pytest.mark.parametrize(("fmt", "text"), CORPUS)
@pytest.mark.parametrize("in_reasoning", [False, True])
def test_any_split_gives_the_same_message(fmt, text, in_reasoning):
    whole = parse(text, fmt=fmt, in_reasoning=in_reasoning)
    assert same(aggregate(stream(list(text), fmt=fmt, in_reasoning=in_reasoning)), whole)
    for cut in range(len(text) + 1):
        pieces = [text[:cut], text[cut:]]
        assert same(aggregate(stream(pieces, fmt=fmt, in_reasoning=in_reasoning)), whole), cut
    rng = random.Random(9)
    for _ in range(30):
        cuts = sorted(rng.sample(range(1, len(text)), rng.randint(1, 12)))
        pieces = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]
        assert same(aggregate(stream(pieces, fmt=fmt, in_reasoning=in_reasoning)), whole)


def test_corpus_parses_as_expected():
    got = {(fmt, text): parse(text, fmt=fmt) for fmt, text in CORPUS}
    assert [len(m.tool_calls) for m in got.values()] == [
        2,
        1,
        1,
        0,
        1,
        2,
        1,
        2,
        0,
        2,
        0,
        2,
        0,
        0,
        0,
    ]
    first, *_ = got.values()
    assert first.content == "Sure! Let me check."
    assert got[CORPUS[2]].content == "<tool_call>{bad json}</tool_call> tail"
    assert got[CORPUS[4]].tool_calls[0].arguments == '{"city": "a\\"}\\\\"}'
    assert got[CORPUS[6]].content == 'Answer: 42; {"name": "get_time"}'
    assert got[CORPUS[10]].content == 'aé😀\n"b\\'


def test_a_long_stream_in_one_token_pieces():
    text = "".join(f"<tool_call>{PARIS}</tool_call>\n" for _ in range(300))
    events = stream(list(text))
    assert [e.index for e in events if isinstance(e, CallDelta)] == list(range(300))
    assert not [e for e in events if isinstance(e, ContentDelta)]


def test_an_end_marker_cut_by_max_tokens_is_not_content():
    """A complete call whose </tool_call> max_tokens cut short: the call, and no text."""
    text = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool'
    msg = parse_message(text, FORMATS["hermes"], TOOLS, reasoning=None)
    assert msg.content == ""
    assert [c.name for c in msg.tool_calls] == ["get_weather"]


def test_the_next_calls_marker_cut_by_max_tokens_is_not_content():
    call = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
    msg = parse_message(call + "\n<tool", FORMATS["hermes"], TOOLS, reasoning=None)
    assert msg.content == ""
    assert len(msg.tool_calls) == 1
    # before any call, the same text is what the model said
    assert parse_message("a <tool", FORMATS["hermes"], TOOLS, reasoning=None).content == "a <tool"
