"""Greedy requests take the argmax of the logits in the runner, skipping llama.cpp's sampler.

A user must not be able to tell: the same tokens as the sampler chain's greedy pick,
with the end-of-generation ban of ``ignore_eos`` / ``min_tokens`` still honoured.
"""

import pytest
from model_traits import loaded_model

from ferrousforge.api.request import InferenceOptions
from ferrousforge.inference.backend import BackendInput

PROMPTS = ["The capital of France is", "def fibonacci(n):", "Once upon a time"]


@pytest.fixture(scope="module")
def model(model_path):
    with loaded_model(model_path, max_parallel=2, context_size=1024) as loaded:
        yield loaded


@pytest.mark.parametrize("ignore_eos", [False, True])
async def test_greedy_fast_path_picks_what_the_sampler_chain_picks(model, ignore_eos):
    backend, handle = model
    fast = InferenceOptions(temperature=0, max_tokens=24, ignore_eos=ignore_eos)
    # A zero logit bias changes nothing but forces llama.cpp's own chain (bias, then greedy).
    chain = fast.replace(logit_bias={0: 0.0})
    for p in PROMPTS:
        a = await backend.infer(handle, BackendInput.Text(p), fast)
        b = await backend.infer(handle, BackendInput.Text(p), chain)
        assert a.token_ids == b.token_ids, p
        assert a.finish_reason == b.finish_reason


def test_only_a_bare_greedy_chain_takes_the_fast_path(model):
    from ferrousforge.inference.backends.llama_cpp.sampler import SamplerChain

    backend, handle = model
    m = backend.loaded(handle).model
    plain = InferenceOptions(temperature=0)
    cases = {
        "greedy": (plain, True),
        "bias": (plain.replace(logit_bias={5: 1.0}), False),
        "penalty": (plain.replace(repeat_penalty=1.3), False),
        "grammar": (plain.replace(grammar='root ::= "a"'), False),
        "sampling": (InferenceOptions(temperature=0.7, seed=1), False),
    }
    for name, (opts, want) in cases.items():
        s = SamplerChain(m._lib, m.vocab.ptr, m.vocab.n_tokens, opts)
        try:
            assert s.plain_greedy is want, name
        finally:
            s.close()
