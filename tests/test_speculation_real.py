"""Speculative decoding on the real default model: same greedy output, drafts accepted."""

import pytest
from model_traits import TOP_N, assert_same_or_near_tie, batch_invariant, loaded_model

from ferrousforge.api.request import InferenceOptions
from ferrousforge.inference.backend import BackendInput

CODE = """def add(a, b):
    return a + b


def sub(a, b):
    return a - b


def mul(a, b):
    return a * b
"""
# A prompt whose natural continuation copies text it already holds.
COPY = f"{CODE}\n# The same three functions again, unchanged:\n\ndef add(a, b):\n"


@pytest.fixture(scope="module")
def model(model_path):
    with loaded_model(model_path, context_size=2048, max_parallel=2, draft_max=8) as m:
        yield m


async def test_greedy_output_is_the_same_with_and_without_drafts(model):
    backend, h = model
    engine = backend.loaded(h).engine
    opts = InferenceOptions(temperature=0, max_tokens=48, ignore_eos=True, logprobs=TOP_N)
    plain = await backend.infer(h, BackendInput.Text(COPY), opts.replace(draft_max=0))
    assert engine.stats.draft_tokens == 0  # the request opted out
    steps = engine.stats.decode_steps
    fast = await backend.infer(h, BackendInput.Text(COPY), opts)
    assert engine.stats.draft_accepted_tokens > 0
    assert engine.stats.decode_steps - steps < 40  # fewer steps than tokens
    assert len(fast.token_ids) == len(plain.token_ids) == 48
    assert_same_or_near_tie(plain, fast, "speculative")  # README, "Determinism"
    if batch_invariant():  # the default model: logits do not depend on the batch shape
        assert [e.logprob for e in fast.logprobs] == [e.logprob for e in plain.logprobs]


async def test_a_stop_string_inside_accepted_drafts_cuts_the_text_as_without(model):
    backend, h = model
    opts = InferenceOptions(temperature=0, max_tokens=40, stop=["mul(a"])
    plain = await backend.infer(h, BackendInput.Text(COPY), opts.replace(draft_max=0))
    fast = await backend.infer(h, BackendInput.Text(COPY), opts)
    assert plain.finish_reason == "stop"  # the copy reaches the stop string
    assert fast.text == plain.text and fast.finish_reason == plain.finish_reason
    assert fast.usage.completion_tokens == plain.usage.completion_tokens
