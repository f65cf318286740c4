"""Lazy grammars: free text until a trigger, then constrained from the trigger's start."""

from __future__ import annotations

import re

import pytest
from model_traits import loaded_model

from ferrousforge.api.json_schema import gbnf_literal
from ferrousforge.api.request import GrammarTrigger, InferenceOptions
from ferrousforge.inference.backend import BackendInput
from ferrousforge.inference.backends.llama_cpp.lazy_grammar import WINDOW_BYTES, TriggerWatcher

PROMPT = BackendInput.Text("A short story about a red fox. Once upon a time,")


@pytest.fixture(scope="module")
def backend_and_handle(model_path):
    with loaded_model(model_path, context_size=1024, max_parallel=2) as loaded:
        yield loaded


PIECES = {i: s.encode() for i, s in enumerate(["Hi", " <", "tool", "_call", ">{", '"a"', " x"])}


def watch(tokens, trigger):
    w = TriggerWatcher(trigger, lambda t: PIECES[t])
    for t in tokens:
        found = w.push(t)
        if found is not None:
            return found
    return None


def test_fires_where_the_trigger_starts_even_mid_token():
    # " <" holds the marker's first character one byte in: the replay starts there.
    assert watch([0, 1, 2, 3, 4], GrammarTrigger((r"<tool_call>",))) == ([1, 2, 3, 4], 1)


def test_does_not_fire_without_the_whole_trigger():
    assert watch([0, 1, 2, 6, 6], GrammarTrigger((r"<tool_call>",))) is None


def test_skipped_spans_never_fire():
    # The trigger inside a <tool ... > span is skipped; the one after it fires.
    pieces = {0: b"<think>", 1: b"<tool_call>", 2: b"</think>", 3: b"ok <tool_call>"}
    w = TriggerWatcher(GrammarTrigger(("<tool_call>",), skip=("<think>", "</think>")), pieces.get)
    assert [w.push(t) for t in (0, 1, 2)] == [None, None, None]
    assert w.push(3) == ([3], 3)


def test_generation_may_start_inside_a_skipped_span():
    pieces = {0: b"<tool_call> thinking", 1: b"</think>", 2: b"<tool_call>"}
    trigger = GrammarTrigger(("<tool_call>",), skip=("<think>", "</think>"), inside_skip=True)
    w = TriggerWatcher(trigger, pieces.get)
    assert [w.push(t) for t in (0, 1, 2)] == [None, None, ([2], 0)]


def test_long_output_keeps_a_bounded_window():
    pieces = {0: b"words " * 10, 1: b"<tool_call>"}
    w = TriggerWatcher(GrammarTrigger(("<tool_call>",)), pieces.get)
    for _ in range(1000):
        assert w.push(0) is None
    assert len(w._text) <= WINDOW_BYTES + len(pieces[0])
    assert w.push(1) == ([1], 0)


@pytest.mark.integration
async def test_grammar_applies_only_from_the_trigger(backend_and_handle):
    """Greedy text is unchanged up to the trigger, then the grammar writes the rest and ends
    the answer: the trigger starts inside a token and the grammar accepts from there."""
    backend, handle = backend_and_handle
    free = await backend.infer(handle, PROMPT, InferenceOptions(temperature=0, max_tokens=24))
    text = free.text
    assert len(text) > 8
    # A trigger of 3 characters that starts inside a token and ends where a token ends:
    # the grammar continues from there, so a trigger ending inside a token (whose rest is
    # not the grammar's) could never be completed by it.
    piece = backend.loaded(handle).vocab.piece
    ends, n = [], 0
    for t in free.token_ids:
        n += len(piece(t).decode("utf-8", "replace"))
        ends.append(n)
    cut = min((e for e in ends if e > len(text) // 2 and e - 3 not in ends), default=None)
    assert cut is not None and cut <= len(text), (text, ends)
    trigger_text = text[cut - 3 : cut]
    assert trigger_text.strip(), text
    forced = await backend.infer(
        handle,
        PROMPT,
        InferenceOptions(
            temperature=0,
            max_tokens=64,
            grammar=f"root ::= {gbnf_literal(trigger_text + ' FORCED END.')}",
            grammar_trigger=GrammarTrigger((re.escape(trigger_text),)),
        ),
    )
    start = text.find(trigger_text)
    assert forced.text == text[:start] + trigger_text + " FORCED END."
    assert forced.finish_reason == "stop"


@pytest.mark.integration
async def test_a_trigger_whose_token_breaks_the_grammar_leaves_the_output_free(
    backend_and_handle,
):
    """A trigger ending inside a token whose rest the grammar refuses: the grammar is
    dropped and the answer goes on unconstrained, as free greedy text, without an error
    (this once failed the whole engine step, every request in it)."""
    backend, handle = backend_and_handle
    opts = InferenceOptions(temperature=0, max_tokens=24)
    free = await backend.infer(handle, PROMPT, opts)
    piece = backend.loaded(handle).vocab.piece
    texts = [piece(t).decode("utf-8", "replace") for t in free.token_ids]
    ends = [sum(len(x) for x in texts[: i + 1]) for i in range(len(texts))]
    # a boundary past the middle followed by a token of 3+ characters: the trigger takes
    # the 2 characters before the boundary and the first one after it
    i = next(i for i in range(len(texts) // 2, len(texts) - 1) if len(texts[i + 1]) >= 3)
    trigger_text = free.text[ends[i] - 2 : ends[i] + 1]
    lazy = await backend.infer(
        handle,
        PROMPT,
        opts.replace(
            grammar=f"root ::= {gbnf_literal(trigger_text + 'QQQ')}",
            grammar_trigger=GrammarTrigger((re.escape(trigger_text),)),
        ),
    )
    assert lazy.text == free.text and lazy.finish_reason == free.finish_reason


@pytest.mark.integration
async def test_without_the_trigger_the_grammar_never_applies(backend_and_handle):
    backend, handle = backend_and_handle
    free = await backend.infer(handle, PROMPT, InferenceOptions(temperature=0, max_tokens=24))
    lazy = await backend.infer(
        handle,
        PROMPT,
        InferenceOptions(
            temperature=0,
            max_tokens=24,
            grammar='root ::= "never"',
            grammar_trigger=GrammarTrigger(("QQQ-not-in-the-answer",)),
        ),
    )
    assert lazy.text == free.text
