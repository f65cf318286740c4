"""The context limit and the preemption victim, model-free (scripted runner).

Boundary cases the other scheduler tests step around: a request that fits the
context exactly, a sequence that fills it, and which sequence a full KV cache evicts.
"""

from __future__ import annotations

import pytest
from scripted_runner import ScriptedRunner, ScriptedSampler, expected_output, piece

from ferrousforge.engine.engine import Engine
from ferrousforge.engine.runner import KVCacheFull
from ferrousforge.engine.scheduler import Scheduler
from ferrousforge.engine.sequence import SamplingLimits, Sequence, SequenceStatus
from ferrousforge.errors import ContextOverflowError

N_CTX = 64


def seq(request_id: int, prompt_len: int, max_tokens: int | None) -> Sequence:
    prompt = [request_id] + [(request_id * 7 + i) % 900 + 1 for i in range(prompt_len - 1)]
    return Sequence(
        request_id, prompt, SamplingLimits(max_tokens=max_tokens), sampler=ScriptedSampler()
    )


def run(sched: Scheduler, runner: ScriptedRunner) -> None:
    for _ in range(1000):
        if not sched.has_work():
            return
        plan = sched.schedule()
        sched.postprocess(plan, runner.execute(plan))
    raise AssertionError("no progress")


@pytest.mark.parametrize("prompt_len", [1, 30, N_CTX - 1])
def test_prompt_plus_max_tokens_equal_to_the_context_is_accepted_and_runs(prompt_len):
    runner = ScriptedRunner(n_slots=1, n_batch=16, n_ctx=N_CTX)
    sched = Scheduler(runner)
    n = N_CTX - prompt_len
    s = seq(1, prompt_len, n)
    sched.add(s)  # exactly the context: must not raise
    run(sched, runner)
    assert s.output_ids == expected_output(s.prompt_ids, n)
    assert s.status == SequenceStatus.FINISHED_LENGTH


def test_one_token_over_the_context_is_rejected():
    sched = Scheduler(ScriptedRunner(n_ctx=N_CTX))
    with pytest.raises(ContextOverflowError, match=f"exceeds the context size of {N_CTX}"):
        sched.check_fits(N_CTX - 4, 5)
    with pytest.raises(ContextOverflowError):
        sched.check_fits(N_CTX + 1, 0)


def test_unbounded_request_needs_room_for_one_generated_token():
    sched = Scheduler(ScriptedRunner(n_ctx=N_CTX))
    sched.check_fits(N_CTX - 1, None)  # one token of room: fine
    with pytest.raises(ContextOverflowError):
        sched.check_fits(N_CTX, None)


def test_a_sequence_that_fills_its_context_finishes_with_length():
    runner = ScriptedRunner(n_slots=2, n_batch=16, n_ctx=N_CTX)
    sched = Scheduler(runner)
    s = seq(2, N_CTX - 5, None)  # no max_tokens: it runs until the context is full
    sched.add(s)
    run(sched, runner)
    assert len(s.output_ids) == 5 and s.n_tokens == N_CTX
    assert s.status == SequenceStatus.FINISHED_LENGTH


async def test_engine_reports_length_when_the_context_is_full():
    engine = Engine(ScriptedRunner(n_slots=1, n_batch=16, n_ctx=N_CTX), piece)
    try:
        prompt = list(range(1, N_CTX - 2))  # three tokens of room
        last, ids = None, []
        async for out in engine.add_request(prompt, SamplingLimits(), ScriptedSampler()):
            ids.extend(out.token_ids)
            last = out
        assert ids == expected_output(prompt, 3)
        assert last.finish_reason == "length" and last.completion_tokens == 3
    finally:
        engine.shutdown()


def test_kv_full_preempts_the_most_recently_admitted_sequence():
    runner = ScriptedRunner(n_slots=3, n_batch=64, n_ctx=N_CTX)
    sched = Scheduler(runner, prefix_cache=False)
    old, mid, new = seq(11, 8, 20), seq(12, 8, 20), seq(13, 8, 20)
    for s in (old, mid, new):
        sched.add(s)
        plan = sched.schedule()  # admitted one step apart: old, then mid, then new
        sched.postprocess(plan, runner.execute(plan))
    computed = {s.request_id: s.n_computed for s in (old, mid)}
    assert sched.handle_kv_full() is None
    assert new.status == SequenceStatus.PREEMPTED and new.slot is None
    assert new.n_computed == 0 and sched.waiting[0] is new
    for s in (old, mid):  # the older sequences keep their slot and their KV
        assert s.status == SequenceStatus.RUNNING and s.slot is not None
        assert s.n_computed == computed[s.request_id]
    # The next one to go is again the newest still running, never the oldest.
    assert sched.handle_kv_full() is None
    assert mid.status == SequenceStatus.PREEMPTED and old.status == SequenceStatus.RUNNING


def test_under_kv_pressure_the_oldest_request_never_loses_its_work():
    runner = ScriptedRunner(n_slots=3, n_batch=32, n_ctx=N_CTX, kv_capacity=48)
    sched = Scheduler(runner, prefix_cache=False)
    seqs = [seq(21 + i, 8, 12) for i in range(3)]
    sched.add(seqs[0])
    plan = sched.schedule()
    sched.postprocess(plan, runner.execute(plan))
    for s in seqs[1:]:
        sched.add(s)
    while sched.has_work():
        plan = sched.schedule()
        try:
            results = runner.execute(plan)
        except KVCacheFull:
            assert sched.handle_kv_full() is None
            continue
        sched.postprocess(plan, results)
    assert sched.preemptions >= 1
    for s in seqs:
        assert s.output_ids == expected_output(s.prompt_ids, 12)
    # The first request was admitted alone and ran to the end without recomputation:
    # each of its tokens went through the model exactly once.
    first = sum(len(c.tokens) for p in runner.plans for c in p.chunks if c.seq is seqs[0])
    assert first == 8 + 12 - 1
