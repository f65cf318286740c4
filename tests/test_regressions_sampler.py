"""Each sampler option does what it says, seen in the real default model's output.

Log-probabilities are the model's own (before any sampler stage), so "the sampled
token is among the top k" can be checked token by token, whatever the batch.
"""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest
from model_traits import TOP_N, assert_same_or_near_tie, loaded_model

from ferrousforge.api.request import InferenceOptions
from ferrousforge.inference.backend import BackendInput

# No other stage narrows the candidates: only top_k can keep a hot sampler on track.
HOT = InferenceOptions(temperature=2.0, top_k=0, top_p=1.0, min_p=0.0, max_tokens=12)
GREEDY = InferenceOptions(temperature=0, max_tokens=24, ignore_eos=True)
REPEATS = "ha ha ha ha ha"  # a prompt the model continues by repeating one token


@pytest.fixture(scope="module")
def model(model_path):
    with loaded_model(model_path, context_size=2048, max_parallel=4) as loaded:
        yield loaded


async def infer(model, prompt: str, opts: InferenceOptions):
    backend, handle = model
    return await backend.infer(handle, BackendInput.Text(prompt), opts)


@pytest.mark.parametrize("k", [1, 3])
async def test_top_k_keeps_a_hot_sampler_within_the_k_most_likely_tokens(model, k):
    opts = HOT.replace(top_k=k, logprobs=TOP_N)
    outs = await asyncio.gather(
        *(infer(model, "The capital of France is", opts.replace(seed=s)) for s in range(8))
    )
    for out in outs:
        assert len(out.logprobs) == out.usage.completion_tokens > 0
        for entry in out.logprobs:
            # logprobs come from the very row that was sampled: no worse than the k-th best
            # (compared by value, so a tie at the k-th place is inside either way)
            kth = sorted((lp for *_, lp in entry.top), reverse=True)[k - 1]
            assert entry.logprob >= kth, "sampled outside the top k"
    if k == 1:  # top_k=1 is greedy, whatever the temperature and the seed
        greedy = GREEDY.replace(max_tokens=12, logprobs=TOP_N)
        alone = await infer(model, "The capital of France is", greedy)
        # eight at once batch differently from one alone: the same, or apart at a near-tie
        for o in outs:
            assert_same_or_near_tie(alone, o, "top_k=1 vs greedy")


async def test_without_top_k_the_same_hot_sampler_leaves_the_top_tokens(model):
    """The control for the test above: at this temperature top_k is what makes the difference."""
    out = await infer(model, "The capital of France is", HOT.replace(seed=1, logprobs=3))
    outside = [e for e in out.logprobs if e.token not in [t for t, *_ in e.top]]
    assert len(outside) >= len(out.logprobs) // 2


async def test_repeat_penalty_alone_breaks_a_repetition(model):
    plain = await infer(model, REPEATS, GREEDY)
    token, count = Counter(plain.token_ids).most_common(1)[0]
    if count < 12:
        pytest.skip(f"this model does not repeat one token after {REPEATS!r}")
    penalized = await infer(model, REPEATS, GREEDY.replace(repeat_penalty=1.3))
    assert penalized.token_ids != plain.token_ids
    assert Counter(penalized.token_ids)[token] <= count // 3


async def test_repeat_last_n_zero_turns_the_repeat_penalty_off(model):
    plain = await infer(model, REPEATS, GREEDY)
    off = await infer(model, REPEATS, GREEDY.replace(repeat_penalty=1.3, repeat_last_n=0))
    assert off.token_ids == plain.token_ids


async def test_frequency_penalty_grows_with_the_count_and_presence_penalty_does_not(model):
    # The same value: presence subtracts it once from a token already seen, frequency once
    # per occurrence, so only frequency stops a token that keeps repeating.
    plain = await infer(model, REPEATS, GREEDY)
    token, count = Counter(plain.token_ids).most_common(1)[0]
    if count < 12:
        pytest.skip(f"this model does not repeat one token after {REPEATS!r}")
    presence = await infer(model, REPEATS, GREEDY.replace(presence_penalty=1.0))
    frequency = await infer(model, REPEATS, GREEDY.replace(frequency_penalty=1.0))
    n_presence = Counter(presence.token_ids)[token]
    n_frequency = Counter(frequency.token_ids)[token]
    assert n_presence >= count // 2, "a flat penalty should not stop a strong repetition"
    assert n_frequency < n_presence // 2
