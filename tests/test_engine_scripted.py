"""The engine thread with a scripted runner: streams, aborts, overload, a random stress test."""

import asyncio
import random

import pytest
from scripted_runner import EOG, ScriptedRunner, ScriptedSampler, expected_output, piece

from ferrousforge.engine.engine import Engine
from ferrousforge.engine.sequence import SamplingLimits
from ferrousforge.errors import EngineOverloadedError


def text_of(tokens: list[int]) -> str:
    return b"".join(piece(t) for t in tokens).decode()


async def drain(stream):
    text, ids, last = [], [], None
    async for out in stream:
        text.append(out.text)
        ids.extend(out.token_ids)
        last = out
    return "".join(text), ids, last


@pytest.fixture
def engine_factory():
    engines = []

    def make(**kw):
        runner_kw = {
            k: kw.pop(k) for k in list(kw) if k in ("n_slots", "n_batch", "n_ctx", "kv_capacity")
        }
        e = Engine(ScriptedRunner(**runner_kw), piece, **kw)
        engines.append(e)
        return e

    yield make
    for e in engines:
        e.shutdown()


async def test_stream_delivers_every_token_and_usage(engine_factory):
    engine = engine_factory()
    prompt = [5, 6, 7]
    text, ids, last = await drain(
        engine.add_request(prompt, SamplingLimits(max_tokens=6), ScriptedSampler())
    )
    assert ids == expected_output(prompt, 6)
    assert text == text_of(ids)
    assert last.finish_reason == "length"
    assert (last.prompt_tokens, last.completion_tokens) == (3, 6)


async def test_step_counters_cover_every_decoded_token(engine_factory):
    engine = engine_factory(n_batch=4)
    streams = [
        engine.add_request([9, i, 7, 7, 7], SamplingLimits(max_tokens=5), ScriptedSampler())
        for i in range(3)
    ]
    for s in streams:
        await drain(s)
    st = engine.stats
    assert st.step_tokens == engine.runner.decoded_tokens  # prompts (chunked) and outputs
    assert st.decode_steps == len(engine.runner.plans)
    assert st.step_seconds > 0


async def test_stop_string_across_tokens_ends_the_request(engine_factory):
    engine = engine_factory()
    prompt = [11, 2]
    full = text_of(expected_output(prompt, 8))
    stop = full[8:14]  # six characters that straddle two pieces
    text, _, last = await drain(
        engine.add_request(prompt, SamplingLimits(max_tokens=8, stop=[stop]), ScriptedSampler())
    )
    assert last.finish_reason == "stop"
    assert text == full[:8] and stop not in text


async def test_eog_finishes_with_stop_and_frees_the_slot(engine_factory):
    engine = engine_factory()
    _, ids, last = await drain(
        engine.add_request([3, 4], SamplingLimits(max_tokens=50), ScriptedSampler(forced={4: EOG}))
    )
    assert last.finish_reason == "stop" and len(ids) == 4
    assert engine.scheduler.busy_slots() == 0


async def test_abort_frees_the_slot_within_a_step(engine_factory):
    engine = engine_factory(n_slots=1)
    sampler = ScriptedSampler()
    stream = engine.add_request([1, 2], SamplingLimits(max_tokens=None), sampler)
    async for _ in stream:
        break
    stream.abort()
    for _ in range(200):
        if engine.scheduler.busy_slots() == 0 and sampler.closed:
            break
        await asyncio.sleep(0.005)
    assert engine.scheduler.busy_slots() == 0 and sampler.closed
    # The freed slot serves the next request.
    _, ids, _ = await drain(
        engine.add_request([9, 9], SamplingLimits(max_tokens=3), ScriptedSampler())
    )
    assert ids == expected_output([9, 9], 3)


async def test_overload_raises_at_once_when_the_queue_is_full(engine_factory):
    engine = engine_factory(n_slots=1, max_waiting=2)
    streams = [
        engine.add_request([i + 1], SamplingLimits(max_tokens=5), ScriptedSampler())
        for i in range(3)
    ]
    with pytest.raises(EngineOverloadedError) as err:
        engine.add_request([9], SamplingLimits(max_tokens=5), ScriptedSampler())
    assert err.value.retry_after > 0
    await asyncio.gather(*(drain(s) for s in streams))
    await drain(engine.add_request([9], SamplingLimits(max_tokens=1), ScriptedSampler()))


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_random_arrivals_cancellations_and_long_prompts(engine_factory, seed):
    """Never deadlocks, never leaks a slot, never mixes tokens between requests."""
    rng = random.Random(seed)
    engine = engine_factory(n_slots=4, n_batch=24, n_ctx=512, kv_capacity=200, max_waiting=100)

    async def one(i: int):
        if i < 4:  # a burst of long requests that together overflow the KV cache
            prompt, n = [1000 + i] + [rng.randrange(1, 900) for _ in range(90)], 20
        else:
            await asyncio.sleep(rng.random() * 0.05)
            prompt = [1000 + i] + [rng.randrange(1, 900) for _ in range(rng.choice([2, 10, 90]))]
            if rng.random() < 0.3:  # shares a prefix with an earlier request
                prompt = [1000 + i] + [7] * 40 + prompt[1:5]
            n = rng.randrange(1, 30)
        sampler = ScriptedSampler()
        stream = engine.add_request(prompt, SamplingLimits(max_tokens=n), sampler)
        if rng.random() < 0.3:
            got = []
            async for out in stream:
                got.extend(out.token_ids)
                if len(got) >= rng.randrange(1, n + 1):
                    break
            stream.abort()
            assert got == expected_output(prompt, n)[: len(got)]
            return sampler
        _, ids, last = await drain(stream)
        assert ids == expected_output(prompt, n), "tokens mixed between requests"
        assert last.finish_reason == "length"
        return sampler

    samplers = await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(40))), timeout=60)
    for _ in range(200):
        if engine.scheduler.busy_slots() == 0 and all(s.closed for s in samplers):
            break
        await asyncio.sleep(0.01)
    assert engine.scheduler.busy_slots() == 0, "a slot leaked"
    assert all(s.closed for s in samplers), "a sampler leaked"
    assert not engine.scheduler.waiting and not engine.scheduler.running
    assert engine.runner.kv_full_events > 0, "the stress test should exercise a full KV cache"


async def test_an_idle_engine_saves_finished_prompts_to_the_host_cache(engine_factory):
    # Saved while nothing else runs, so a returning prompt later pays only its restore.
    engine = engine_factory(n_slots=2, host_cache_bytes=1 << 20)
    prompt = [(7 * i) % 300 + 1 for i in range(48)]
    await drain(engine.add_request(prompt, SamplingLimits(max_tokens=3), ScriptedSampler()))
    cache = engine.scheduler.host_cache
    for _ in range(200):
        if len(cache):
            break
        await asyncio.sleep(0.01)
    assert len(cache) == 1 and cache.stats.saves == 1
    assert not engine.scheduler.has_unsaved_idle()
