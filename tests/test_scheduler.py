"""Scheduler unit tests with a scripted runner: no model needed."""

import pytest
from scripted_runner import EOG, ScriptedRunner, ScriptedSampler, expected_output

from ferrousforge.engine.runner import KVCacheFull
from ferrousforge.engine.scheduler import GAP_PATIENCE, Scheduler
from ferrousforge.engine.sequence import SamplingLimits, Sequence, SequenceStatus
from ferrousforge.errors import ContextOverflowError

_ids = iter(range(1, 10_000))


def make_seq(prompt_len: int, max_tokens: int = 4, first: int | None = None, **limits) -> Sequence:
    rid = next(_ids)
    first = rid if first is None else first
    prompt = [first] + [(first * 13 + i) % 900 + 1 for i in range(prompt_len - 1)]
    return Sequence(
        rid, prompt, SamplingLimits(max_tokens=max_tokens, **limits), sampler=ScriptedSampler()
    )


def run_until_done(sched: Scheduler, runner: ScriptedRunner, max_steps: int = 10_000) -> int:
    steps = 0
    while sched.has_work():
        plan = sched.schedule()
        assert plan.n_tokens <= runner.n_batch, "step exceeded the n_batch budget"
        results = runner.execute(plan)
        sched.postprocess(plan, results)
        steps += 1
        assert steps < max_steps, "scheduler made no progress"
    return steps


def test_budget_is_respected_and_long_prompt_is_chunked():
    runner = ScriptedRunner(n_slots=2, n_batch=8)
    sched = Scheduler(runner)
    long = make_seq(30, max_tokens=3)
    sched.add(long)
    plan = sched.schedule()
    assert plan.n_tokens == 8 and not plan.chunks[0].sample
    run_until_done(sched, runner)
    assert long.output_ids == expected_output(long.prompt_ids, 3)
    assert long.status == SequenceStatus.FINISHED_LENGTH


def test_generating_sequences_keep_a_token_every_step_during_a_long_prefill():
    runner = ScriptedRunner(n_slots=2, n_batch=8)
    sched = Scheduler(runner)
    short = make_seq(3, max_tokens=20)
    sched.add(short)
    for _ in range(2):  # prefill, then first decode
        plan = sched.schedule()
        sched.postprocess(plan, runner.execute(plan))
    sched.add(make_seq(40, max_tokens=2))
    for _ in range(5):
        plan = sched.schedule()
        by_seq = {c.seq.request_id: c for c in plan.chunks}
        assert len(by_seq[short.request_id].tokens) == 1  # the running stream still advances
        assert plan.n_tokens <= 8
        sched.postprocess(plan, runner.execute(plan))


def test_finish_reasons_eog_and_length():
    runner = ScriptedRunner()
    sched = Scheduler(runner)
    stops = make_seq(4, max_tokens=10)
    stops.sampler.forced = {2: EOG}
    long = make_seq(4, max_tokens=5)
    sched.add(stops)
    sched.add(long)
    run_until_done(sched, runner)
    assert stops.status == SequenceStatus.FINISHED_STOPPED
    assert len(stops.output_ids) == 2  # the EOG token is not part of the output
    assert long.status == SequenceStatus.FINISHED_LENGTH and len(long.output_ids) == 5
    assert stops.sampler.closed and long.sampler.closed


def test_min_tokens_and_ignore_eos_mask_end_of_generation():
    runner = ScriptedRunner()
    sched = Scheduler(runner)
    early = make_seq(4, max_tokens=10, min_tokens=3)
    early.sampler.forced = {0: EOG, 1: EOG, 3: EOG}
    ignoring = make_seq(4, max_tokens=6, ignore_eos=True)
    ignoring.sampler.forced = {1: EOG}
    sched.add(early)
    sched.add(ignoring)
    run_until_done(sched, runner)
    assert len(early.output_ids) == 3 and early.status == SequenceStatus.FINISHED_STOPPED
    assert len(ignoring.output_ids) == 6 and ignoring.status == SequenceStatus.FINISHED_LENGTH


def test_more_requests_than_slots_all_finish_with_their_own_tokens():
    runner = ScriptedRunner(n_slots=3, n_batch=16)
    sched = Scheduler(runner)
    seqs = [make_seq(5 + i, max_tokens=6) for i in range(10)]
    for s in seqs:
        sched.add(s)
    run_until_done(sched, runner)
    for s in seqs:
        assert s.output_ids == expected_output(s.prompt_ids, 6)
    assert all(slot.seq is None for slot in sched.slots)


def test_prefix_cache_reuses_a_finished_requests_prompt():
    runner = ScriptedRunner(n_slots=2, n_batch=64)
    sched = Scheduler(runner)
    first = make_seq(20, max_tokens=2, first=7)
    sched.add(first)
    run_until_done(sched, runner)
    follow = Sequence(
        999, first.prompt_ids + [5, 6, 7], SamplingLimits(max_tokens=2), sampler=ScriptedSampler()
    )
    sched.add(follow)
    plan = sched.schedule()
    assert follow.n_cached_prompt == 20
    assert plan.chunks[0].pos0 == 20 and plan.chunks[0].tokens == [5, 6, 7]
    sched.postprocess(plan, runner.execute(plan))
    run_until_done(sched, runner)
    assert follow.output_ids == expected_output(follow.prompt_ids, 2)


def test_prefix_is_copied_from_a_busy_slot():
    runner = ScriptedRunner(n_slots=2, n_batch=64)
    sched = Scheduler(runner)
    a = make_seq(50, max_tokens=50, first=3)
    sched.add(a)
    plan = sched.schedule()
    sched.postprocess(plan, runner.execute(plan))
    b = Sequence(
        500, a.prompt_ids[:40] + [42], SamplingLimits(max_tokens=1), sampler=ScriptedSampler()
    )
    sched.add(b)
    plan = sched.schedule()
    assert [(op.kind, op.p0) for op in plan.kv_ops] == [("cp", -1), ("rm", 40)]
    assert b.n_cached_prompt == 40
    slot = b.slot
    sched.postprocess(plan, runner.execute(plan))
    assert runner.kv[slot] == 41


def test_a_short_shared_prefix_is_recomputed_rather_than_copied():
    runner = ScriptedRunner(n_slots=2, n_batch=64)
    sched = Scheduler(runner)
    a = make_seq(20, max_tokens=50, first=3)
    sched.add(a)
    plan = sched.schedule()
    sched.postprocess(plan, runner.execute(plan))
    b = Sequence(
        501, a.prompt_ids[:8] + [42], SamplingLimits(max_tokens=1), sampler=ScriptedSampler()
    )
    sched.add(b)
    sched.schedule()
    assert b.n_cached_prompt == 0


def test_new_requests_fill_the_lowest_free_slot_unless_a_long_prefix_is_cached():
    # Busy slots stay contiguous: llama.cpp decodes separate KV streams with
    # non-consecutive ids in separate ubatches (one more pass over the weights).
    runner = ScriptedRunner(n_slots=4, n_batch=256)
    sched = Scheduler(runner)
    seqs = [make_seq(40, max_tokens=50, first=f) for f in (11, 12, 13)]
    for s in seqs:
        sched.add(s)
    plan = sched.schedule()
    sched.postprocess(plan, runner.execute(plan))
    assert [s.slot for s in seqs] == [0, 1, 2]
    sched.finish(seqs[1], SequenceStatus.FINISHED_ABORTED)
    other = make_seq(40, max_tokens=2, first=14)
    sched.add(other)
    sched.schedule()
    assert other.slot == 1  # not slot 3, which would split each step in two
    sched.finish(seqs[2], SequenceStatus.FINISHED_ABORTED)
    follow = Sequence(
        777, seqs[2].prompt_ids + [5], SamplingLimits(max_tokens=2), sampler=ScriptedSampler()
    )
    sched.add(follow)
    sched.schedule()
    assert follow.slot == 2 and follow.n_cached_prompt == 40  # a long cached prefix wins


def test_a_gap_between_busy_slots_is_closed_by_moving_the_highest_sequence():
    runner = ScriptedRunner(n_slots=4, n_batch=256)
    sched = Scheduler(runner)
    seqs = [make_seq(30, max_tokens=12, first=f) for f in (21, 22, 23)]
    for s in seqs:
        sched.add(s)
    for _ in range(3):
        plan = sched.schedule()
        sched.postprocess(plan, runner.execute(plan))
    sched.finish(seqs[0], SequenceStatus.FINISHED_ABORTED)  # slot 0 frees: a gap below 1, 2
    for _ in range(GAP_PATIENCE):  # a new request may still fill it
        plan = sched.schedule()
        assert not plan.kv_ops
        sched.postprocess(plan, runner.execute(plan))
    plan = sched.schedule()
    assert [(op.kind, op.seq, op.src) for op in plan.kv_ops] == [("cp", 0, 2), ("rm", 2, -1)]
    assert sorted(s.slot for s in seqs[1:]) == [0, 1] and sched.moves == 1
    sched.postprocess(plan, runner.execute(plan))  # the runner checks each chunk continues its KV
    run_until_done(sched, runner)
    for s in seqs[1:]:
        assert s.output_ids == expected_output(s.prompt_ids, 12)


def test_identical_prompt_always_recomputes_its_last_token():
    runner = ScriptedRunner(n_slots=1, n_batch=64)
    sched = Scheduler(runner)
    a = make_seq(6, max_tokens=1, first=9)
    sched.add(a)
    run_until_done(sched, runner)
    again = Sequence(
        77, list(a.prompt_ids), SamplingLimits(max_tokens=1), sampler=ScriptedSampler()
    )
    sched.add(again)
    plan = sched.schedule()
    assert again.n_cached_prompt == 5 and plan.chunks[0].tokens == a.prompt_ids[-1:]


def test_kv_full_preempts_the_newest_and_it_resumes_with_the_same_tokens():
    runner = ScriptedRunner(n_slots=3, n_batch=32, kv_capacity=40)
    sched = Scheduler(runner, prefix_cache=False)
    seqs = [make_seq(8, max_tokens=10) for _ in range(3)]
    for s in seqs:
        sched.add(s)
    steps = 0
    while sched.has_work():
        plan = sched.schedule()
        steps += 1
        assert steps < 500, "no progress under KV pressure"
        try:
            results = runner.execute(plan)
        except KVCacheFull:
            assert sched.handle_kv_full() is None
            continue
        sched.postprocess(plan, results)
    assert sched.preemptions >= 1
    for s in seqs:
        assert s.output_ids == expected_output(s.prompt_ids, 10)


def test_request_that_can_never_fit_is_rejected_up_front():
    sched = Scheduler(ScriptedRunner(n_ctx=64))
    with pytest.raises(ContextOverflowError, match="exceeds the context size of 64"):
        sched.add(make_seq(60, max_tokens=10))
    with pytest.raises(ValueError, match="prompt"):
        sched.check_fits(0, 1)


def test_n_siblings_wait_for_the_leader_prefill_then_share_it():
    runner = ScriptedRunner(n_slots=3, n_batch=8)
    sched = Scheduler(runner)
    leader = make_seq(20, max_tokens=2, first=4)
    siblings = [
        Sequence(
            900 + i,
            list(leader.prompt_ids),
            SamplingLimits(max_tokens=2),
            sampler=ScriptedSampler(),
            share_prefix_with=leader,
        )
        for i in range(2)
    ]
    for s in [leader, *siblings]:
        sched.add(s)
    run_until_done(sched, runner)
    assert all(s.n_cached_prompt == 19 for s in siblings)
    recomputed = sum(len(c.tokens) for p in runner.plans for c in p.chunks if c.seq in siblings)
    assert recomputed == 2 * (1 + 1)  # per sibling: the last prompt token, then 1 decode


def test_max_tokens_zero_finishes_after_prefill_without_sampling():
    runner = ScriptedRunner(n_slots=1, n_batch=8)
    sched = Scheduler(runner)
    seq = make_seq(12, max_tokens=0)
    sched.add(seq)
    run_until_done(sched, runner)
    assert seq.status == SequenceStatus.FINISHED_LENGTH and seq.output_ids == []
    assert not any(c.sample for p in runner.plans for c in p.chunks)
