"""Speculative decoding in the scheduler and engine, with the scripted runner (no model).

The scripted sampler is told to copy the prompt (forced tokens), which is what prompt
lookup guesses; outputs must be exactly those of one-token steps, whatever the drafts.
"""

import asyncio

import pytest
from scripted_runner import EOG, ScriptedRunner, ScriptedSampler, piece
from test_engine_scripted import drain, text_of

from ferrousforge.engine.engine import Engine
from ferrousforge.engine.runner import KVCacheFull
from ferrousforge.engine.scheduler import Scheduler
from ferrousforge.engine.sequence import SamplingLimits, Sequence, SequenceStatus
from ferrousforge.engine.speculation import MAX_PAUSE, SpecConfig

BODY = list(range(101, 141))  # 40 distinct tokens the output will copy
SPEC = SpecConfig(draft_max=8, draft_min=1, max_batch=2)
_ids = iter(range(1, 10_000))


def copying_seq(first: int = 7, max_tokens: int = 30, body=BODY, copy=None, **limits) -> Sequence:
    """A request whose output repeats ``copy`` (default: the prompt's body), then goes on
    naturally."""
    prompt = [first, *body]
    sampler = ScriptedSampler(forced=dict(enumerate(body if copy is None else copy)))
    return Sequence(next(_ids), prompt, SamplingLimits(max_tokens=max_tokens, **limits), sampler)


def run(sched: Scheduler, runner: ScriptedRunner, max_steps: int = 1000) -> int:
    steps = 0
    while sched.has_work():
        plan = sched.schedule()
        assert plan.n_tokens <= runner.n_batch
        try:
            results = runner.execute(plan)
        except KVCacheFull:
            assert sched.handle_kv_full() is None
            continue
        sched.postprocess(plan, results)
        for c in plan.chunks:  # rejected drafts never outlive their step
            if c.seq.slot is not None:
                assert runner.kv[c.seq.slot] == c.seq.n_computed
        steps += 1
        assert steps < max_steps
    return steps


def outputs(spec: SpecConfig | None, make, n_slots: int = 4, n_batch: int = 64, **kw):
    runner = ScriptedRunner(n_slots=n_slots, n_batch=n_batch, n_ctx=256, **kw)
    sched = Scheduler(runner, spec=spec)
    seqs = make()
    for s in seqs:
        sched.add(s)
    steps = run(sched, runner)
    return seqs, steps, sched, runner


def drafted_chunks(runner: ScriptedRunner) -> list:
    return [c for p in runner.plans for c in p.chunks if c.n_draft]


def test_copied_text_is_accepted_in_fewer_steps_with_the_same_output():
    plain, plain_steps, _, _ = outputs(None, lambda: [copying_seq()])
    fast, fast_steps, sched, _ = outputs(SPEC, lambda: [copying_seq()])
    assert fast[0].output_ids == plain[0].output_ids and len(fast[0].output_ids) == 30
    assert fast[0].status == plain[0].status == SequenceStatus.FINISHED_LENGTH
    assert sched.accepted > 0 and fast_steps < plain_steps / 2


def test_a_rejected_draft_is_trimmed_from_the_kv_and_the_correction_is_kept():
    # The output copies the body for 12 tokens, then takes its own way: the draft that
    # guessed "more of the body" is rejected at that point, and its KV removed (checked
    # after every step by run()); the rest comes out as without speculation.
    make = lambda: [copying_seq(copy=BODY[:12], max_tokens=25)]  # noqa: E731
    plain, _, _, _ = outputs(None, make)
    fast, _, sched, _ = outputs(SPEC, make)
    assert fast[0].output_ids == plain[0].output_ids
    assert 0 < sched.accepted < sched.drafted


@pytest.mark.parametrize("where", ["drafted", "correction"])
def test_end_of_generation_inside_a_verified_draft_ends_there(where):
    # Drafted: the prompt holds the EOG that the copy reaches; correction: the draft guessed
    # the body's next token and the sample is EOG.
    with_eog = [*BODY[:9], EOG, *BODY[10:]]
    body, copy = (with_eog, None) if where == "drafted" else (BODY, with_eog)
    make = lambda: [copying_seq(body=body, copy=copy, max_tokens=30)]  # noqa: E731
    plain, _, _, _ = outputs(None, make)
    fast, _, sched, runner = outputs(SPEC, make)
    assert fast[0].output_ids == plain[0].output_ids == BODY[:9]
    assert fast[0].status == SequenceStatus.FINISHED_STOPPED
    assert sched.accepted > 0
    assert runner.kv.get(0, 0) == fast[0].n_computed == fast[0].n_tokens  # nothing past EOG


@pytest.mark.parametrize("max_tokens", [1, 2, 5, 13])
def test_max_tokens_is_met_exactly_with_drafts(max_tokens):
    fast, _, _, runner = outputs(SPEC, lambda: [copying_seq(max_tokens=max_tokens)])
    assert fast[0].output_ids == BODY[:max_tokens]
    for c in drafted_chunks(runner):  # never a draft that could overshoot
        assert c.n_draft <= max_tokens - 1


def test_a_request_can_opt_out():
    _, _, sched, runner = outputs(SPEC, lambda: [copying_seq(draft_max=0)])
    assert sched.drafted == 0 and not drafted_chunks(runner)
    _, _, _, runner = outputs(SPEC, lambda: [copying_seq(draft_max=2)])
    assert drafted_chunks(runner) and all(c.n_draft <= 2 for c in drafted_chunks(runner))


def test_no_drafts_while_more_sequences_generate_than_max_batch():
    def make():
        return [copying_seq(first=f, max_tokens=20) for f in (1, 2, 3)]

    plain, _, _, _ = outputs(None, make, n_batch=256)
    full, _, sched, _ = outputs(SPEC, make, n_batch=256)  # max_batch 2 < 3 generating
    assert [s.output_ids for s in full] == [s.output_ids for s in plain]
    assert sched.drafted == 0
    _, _, sched, _ = outputs(SpecConfig(draft_max=8, max_batch=3), make, n_batch=256)
    assert sched.accepted > 0


def test_drafting_backs_off_when_nothing_is_accepted():
    # The output is "X 3 4" with a new X each time: every "3 4" offers a draft (what
    # followed it last time), and every such draft is wrong. After each miss the sequence
    # waits twice as long before it drafts again.
    out = [t for i in range(40) for t in (200 + i, 3, 4)]
    make = lambda: [copying_seq(body=[3, 4, 9] * 10, copy=out, max_tokens=120)]  # noqa: E731
    plain, _, _, _ = outputs(None, make)
    fast, _, sched, runner = outputs(SPEC, make)
    assert fast[0].output_ids == plain[0].output_ids == out
    tries = len(drafted_chunks(runner))
    assert sched.accepted == 0 and 3 <= tries <= 7  # of 40 chances: pauses of 1, 2, 4, ...
    assert MAX_PAUSE < 120


def test_kv_pressure_with_drafts_keeps_every_output():
    def make():
        return [copying_seq(first=f, max_tokens=30) for f in (1, 2)]

    plain, _, _, _ = outputs(None, make, n_slots=2)
    tight, _, _, runner = outputs(SPEC, make, n_slots=2, kv_capacity=110)
    assert [s.output_ids for s in tight] == [s.output_ids for s in plain]
    assert runner.kv_full_events > 0


# ---- through the engine: text, stop strings, usage -----------------------------------


@pytest.fixture
def engine():
    e = Engine(ScriptedRunner(n_slots=2, n_batch=64, n_ctx=256), piece, spec=SPEC)
    yield e
    e.shutdown()


async def test_stop_string_inside_accepted_drafts_ends_the_text_and_usage_there(engine):
    full = text_of(BODY[:20])
    stop = " t110 t111"  # tokens 10 and 11 of the copy: inside one accepted draft
    cut = full.index(stop)
    sampler = ScriptedSampler(forced=dict(enumerate(BODY)))
    text, ids, last = await drain(
        engine.add_request([7, *BODY], SamplingLimits(max_tokens=30, stop=[stop]), sampler)
    )
    assert text == full[:cut] and last.finish_reason == "stop"
    assert ids == BODY[:11]  # up to the token that completed the stop string, no further
    assert last.completion_tokens == 11
    assert engine.stats.draft_accepted_tokens > 0
    for _ in range(100):
        if engine.scheduler.busy_slots() == 0:
            break
        await asyncio.sleep(0.01)
    cached = engine.scheduler.slots[0].cached  # what the prefix cache believes is in the KV
    assert cached == [7, *BODY, *BODY[:11]][: len(cached)]
    assert engine.runner.kv[0] == len(cached) >= len(BODY) + 11


async def test_engine_stream_with_drafts_matches_one_token_steps(engine):
    plain = Engine(ScriptedRunner(n_slots=2, n_batch=64, n_ctx=256), piece)
    try:
        copy = dict(enumerate(BODY[:16]))
        got = await drain(
            engine.add_request([7, *BODY], SamplingLimits(max_tokens=25), ScriptedSampler(copy))
        )
        want = await drain(
            plain.add_request([7, *BODY], SamplingLimits(max_tokens=25), ScriptedSampler(copy))
        )
        assert got[:2] == want[:2]  # text and token ids
        assert got[2].completion_tokens == want[2].completion_tokens == 25
        assert engine.stats.draft_accepted_tokens > 0
    finally:
        plain.shutdown()
