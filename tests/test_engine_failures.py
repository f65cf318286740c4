"""One request's sampling failure, budget overrun or completed grammar ends that request
alone; every caller hears how its request ended, even when a step itself fails."""

import asyncio

import pytest
from scripted_runner import ScriptedRunner, ScriptedSampler, expected_output, piece

from ferrousforge.engine.engine import Engine
from ferrousforge.engine.sequence import SamplingLimits
from ferrousforge.errors import NativeCallError, SamplingBudgetError


@pytest.fixture
def make_engine():
    engines = []

    def make(runner=None, **kw):
        e = Engine(runner or ScriptedRunner(), piece, **kw)
        engines.append(e)
        return e

    yield make
    for e in engines:
        e.shutdown()


async def drain(stream):
    async def read():
        ids, last = [], None
        async for out in stream:
            ids.extend(out.token_ids)
            last = out
        return ids, last

    return await asyncio.wait_for(read(), timeout=10)  # a lost request fails, not hangs


async def test_sampling_error_fails_only_its_request(make_engine):
    engine = make_engine()
    bad = engine.add_request(
        [3, 4], SamplingLimits(max_tokens=8), ScriptedSampler(fail_at=2, error=NativeCallError("x"))
    )
    good = engine.add_request([7, 8], SamplingLimits(max_tokens=8), ScriptedSampler())
    results = await asyncio.gather(drain(bad), drain(good), return_exceptions=True)
    assert isinstance(results[0], NativeCallError)
    ids, last = results[1]
    assert ids == expected_output([7, 8], 8) and last.finish_reason == "length"
    assert engine.in_flight == 0
    assert engine.scheduler.busy_slots() == 0


async def test_token_over_the_sampling_budget_ends_its_request(make_engine):
    engine = make_engine(sample_budget_s=0.5)
    slow = engine.add_request([3, 4], SamplingLimits(max_tokens=8), ScriptedSampler(sample_s=0.9))
    fast = engine.add_request([7, 8], SamplingLimits(max_tokens=8), ScriptedSampler(sample_s=0.1))
    results = await asyncio.gather(drain(slow), drain(fast), return_exceptions=True)
    assert isinstance(results[0], SamplingBudgetError)
    assert "budget" in str(results[0])
    assert results[1][0] == expected_output([7, 8], 8)


async def test_one_slow_token_alone_does_not_end_its_request(make_engine):
    """A busy host can make one token slow; only a run of slow tokens is the grammar's."""
    engine = make_engine(sample_budget_s=0.5)
    spikes = ScriptedSampler(sample_s=0.1, sample_s_at={1: 0.9, 4: 0.9})
    ids, last = await drain(engine.add_request([3, 4], SamplingLimits(max_tokens=8), spikes))
    assert ids == expected_output([3, 4], 8) and last.finish_reason == "length"
    two = ScriptedSampler(sample_s=0.1, sample_s_at={2: 0.9, 3: 0.9})
    ids = []
    with pytest.raises(SamplingBudgetError, match="2 tokens in a row"):
        async for out in engine.add_request([5, 6], SamplingLimits(max_tokens=8), two):
            ids.extend(out.token_ids)
    assert len(ids) == 4  # ended with the second slow token (output index 3)


async def test_no_budget_means_slow_sampling_is_allowed(make_engine):
    engine = make_engine(sample_budget_s=None)
    ids, last = await drain(
        engine.add_request([3, 4], SamplingLimits(max_tokens=4), ScriptedSampler(sample_s=9.0))
    )
    assert len(ids) == 4 and last.finish_reason == "length"


@pytest.mark.parametrize("limits", [SamplingLimits(max_tokens=8, ignore_eos=True),
                                    SamplingLimits(max_tokens=8, min_tokens=6)])  # fmt: skip
async def test_completed_grammar_stops_even_when_eos_is_banned(make_engine, limits):
    engine = make_engine()
    ids, last = await drain(engine.add_request([3, 4], limits, ScriptedSampler(exhausted_at=3)))
    assert ids == expected_output([3, 4], 3)
    assert last.finish_reason == "stop"
    assert engine.scheduler.busy_slots() == 0


class FreeFails(ScriptedRunner):
    """A runner whose sampler cleanup raises: the step fails after a sequence finished."""

    def free_sampler(self, seq):
        super().free_sampler(seq)
        raise RuntimeError("cleanup failed")


async def test_every_caller_hears_the_end_when_a_step_fails(make_engine):
    engine = make_engine(FreeFails())
    streams = [
        engine.add_request([i, 1], SamplingLimits(max_tokens=3), ScriptedSampler()) for i in (3, 5)
    ]
    results = await asyncio.wait_for(
        asyncio.gather(*(drain(s) for s in streams), return_exceptions=True), timeout=10
    )
    assert len(results) == 2  # nobody hangs: each got tokens and an end, or an error
    assert engine.in_flight == 0
    assert engine.alive
