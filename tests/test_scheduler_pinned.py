"""Per-request scheduling choices from llama-server's /completion: ``id_slot`` (run in that
slot, wait for it, never moved) and ``cache_prompt: false`` (reuse no cached prefix)."""

from __future__ import annotations

from scripted_runner import ScriptedRunner, ScriptedSampler, expected_output
from test_scheduler import make_seq, run_until_done

from ferrousforge.engine.scheduler import GAP_PATIENCE, Scheduler
from ferrousforge.engine.sequence import SamplingLimits, Sequence, SequenceStatus


def step(sched: Scheduler, runner: ScriptedRunner):
    plan = sched.schedule()
    sched.postprocess(plan, runner.execute(plan))
    return plan


def test_a_pinned_request_runs_in_its_slot_and_waits_for_it():
    runner = ScriptedRunner(n_slots=3, n_batch=256)
    sched = Scheduler(runner)
    first = make_seq(10, max_tokens=6, slot=2)
    sched.add(first)
    step(sched, runner)
    assert first.slot == 2  # not the lowest free slot
    second = make_seq(10, max_tokens=3, slot=2)
    other = make_seq(10, max_tokens=3)
    sched.add(second)
    sched.add(other)
    step(sched, runner)
    assert second.slot is None and other.slot == 0  # slot 2 is busy: it waits, others go
    run_until_done(sched, runner)
    assert second.output_ids == expected_output(second.prompt_ids, 3)


def test_a_pinned_request_is_never_moved_to_close_a_gap():
    runner = ScriptedRunner(n_slots=3, n_batch=256)
    sched = Scheduler(runner)
    pinned = make_seq(10, max_tokens=12 + GAP_PATIENCE, slot=2)
    sched.add(pinned)
    for _ in range(GAP_PATIENCE + 2):  # slots 0 and 1 free below it: a gap
        plan = step(sched, runner)
        assert not [op for op in plan.kv_ops if op.kind == "cp"]
    assert pinned.slot == 2
    run_until_done(sched, runner)
    assert pinned.output_ids == expected_output(pinned.prompt_ids, 12 + GAP_PATIENCE)


def test_cache_prompt_false_reuses_no_prefix():
    runner = ScriptedRunner(n_slots=1, n_batch=64)
    sched = Scheduler(runner)
    first = make_seq(20, max_tokens=2, first=7)
    sched.add(first)
    run_until_done(sched, runner)
    again = Sequence(
        999,
        list(first.prompt_ids),
        SamplingLimits(max_tokens=2, cache_prompt=False),
        sampler=ScriptedSampler(),
    )
    sched.add(again)
    plan = step(sched, runner)
    assert again.n_cached_prompt == 0 and plan.chunks[0].pos0 == 0
    run_until_done(sched, runner)
    assert again.status == SequenceStatus.FINISHED_LENGTH
    assert again.output_ids == expected_output(again.prompt_ids, 2)
