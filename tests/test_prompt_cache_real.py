"""The host-RAM prompt cache on the real default model: prompts that come back after
others took their slots are restored, with the same greedy output as a cold run."""

import asyncio

import pytest
from model_traits import TOP_N, assert_same_or_near_tie, loaded_model

from ferrousforge.api.request import InferenceOptions
from ferrousforge.inference.backend import BackendInput

OPTS = InferenceOptions(temperature=0, max_tokens=8, ignore_eos=True, logprobs=TOP_N)
COLORS = ["red", "blue", "green", "gold"]
# 16 distinct prompts of about 60 tokens, no two sharing a long prefix.
PROMPTS = [
    f"Report {i}: the {COLORS[i % 4]} train number {i * 7} left the station at {i} o'clock. " * 3
    + "Summary:"
    for i in range(16)
]


async def rounds(backend, handle, prompts, opts):
    return await asyncio.gather(
        *(backend.infer(handle, BackendInput.Text(p), opts) for p in prompts)
    )


@pytest.mark.parametrize("kv_unified", [False, True], ids=["streams", "unified"])
async def test_returning_prompts_are_restored_with_the_same_output(model_path, kv_unified):
    with loaded_model(model_path, context_size=2048, max_parallel=4, kv_unified=kv_unified) as (
        backend,
        handle,
    ):
        lm = backend.loaded(handle)
        cache = lm.engine.scheduler.host_cache
        # Cold references, one at a time (a unified cache's output depends on the batch).
        cold = [await backend.infer(handle, BackendInput.Text(p), OPTS) for p in PROMPTS]
        assert all(o.usage.cached_tokens < 8 for o in cold)
        again = await rounds(backend, handle, PROMPTS, OPTS)
        # Only 4 of the 16 were still in a slot: the others came back from host RAM.
        assert cache.stats.hits >= 12
        for p, c, a in zip(PROMPTS, cold, again, strict=True):
            assert a.usage.cached_tokens == a.usage.prompt_tokens - 1, p
            assert_same_or_near_tie(c, a, p, exact=False if kv_unified else None)
        assert 0 < cache.n_bytes <= cache.capacity_bytes


async def test_a_state_llama_cpp_refuses_is_prefilled_instead(model_path):
    with loaded_model(model_path, context_size=2048, max_parallel=2) as (backend, handle):
        lm = backend.loaded(handle)
        cache = lm.engine.scheduler.host_cache
        cold = [await backend.infer(handle, BackendInput.Text(p), OPTS) for p in PROMPTS[:6]]
        assert len(cache) >= 4
        for entry in cache._entries.values():
            entry.state = entry.state[: len(entry.state) // 2]  # llama_state_seq_set_data -> 0
        again = [await backend.infer(handle, BackendInput.Text(p), OPTS) for p in PROMPTS[:4]]
        assert cache.stats.restore_failures >= 1 and cache.stats.hits == 0
        for p, c, a in zip(PROMPTS[:4], cold[:4], again, strict=True):
            assert_same_or_near_tie(c, a, p)


async def test_cache_ram_zero_turns_it_off(model_path):
    with loaded_model(model_path, context_size=1024, max_parallel=1, cache_ram_mib=0) as (
        backend,
        handle,
    ):
        lm = backend.loaded(handle)
        assert lm.engine.scheduler.host_cache is None
        for p in (PROMPTS[0], PROMPTS[1], PROMPTS[0]):
            out = await backend.infer(handle, BackendInput.Text(p), OPTS)
        assert out.usage.cached_tokens < 8
