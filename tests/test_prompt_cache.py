"""The host-RAM prompt cache: the store alone, and the scheduler with a scripted runner."""

from scripted_runner import ScriptedRunner, ScriptedSampler, expected_output

from ferrousforge.engine.prompt_cache import PromptCache, usable_prefix
from ferrousforge.engine.scheduler import Scheduler
from ferrousforge.engine.sequence import SamplingLimits, Sequence

_ids = iter(range(1, 10_000))


def prompt(key: int, n: int = 48) -> list[int]:
    return [key] + [(key * 13 + i) % 900 + 1 for i in range(n - 1)]


def make_seq(tokens: list[int], max_tokens: int = 4) -> Sequence:
    return Sequence(
        next(_ids), list(tokens), SamplingLimits(max_tokens=max_tokens), sampler=ScriptedSampler()
    )


def run(sched: Scheduler, runner: ScriptedRunner, *seqs: Sequence) -> None:
    for seq in seqs:
        sched.add(seq)
    steps = 0
    while sched.has_work():
        plan = sched.schedule()
        sched.postprocess(plan, runner.execute(plan))
        steps += 1
        assert steps < 10_000


def cached_scheduler(n_slots: int = 2, capacity: int = 1 << 20, **kw) -> tuple:
    runner = ScriptedRunner(n_slots=n_slots, n_batch=64, n_ctx=512, **kw)
    cache = PromptCache(capacity)
    return Scheduler(runner, host_cache=cache), runner, cache


# ---- the store ----------------------------------------------------------------------


def test_lookup_finds_the_entry_with_the_longest_common_prefix():
    cache = PromptCache(1 << 20, min_tokens=4)
    base = list(range(100, 160))
    cache.put(base[:40] + [1, 2, 3, 4], b"a" * 10)
    cache.put(base[:50] + [5, 6, 7, 8], b"b" * 10)
    cache.put(list(range(500, 560)), b"c" * 10)
    entry, n = cache.longest_prefix(base)
    assert entry is not None and entry.state == b"b" * 10 and n == 50
    assert cache.longest_prefix([7, 7, 7]) == (None, 0)


def test_entries_are_evicted_least_recently_used_first_within_the_byte_budget():
    cache = PromptCache(300, min_tokens=4)
    keys = [list(range(k * 100, k * 100 + 10)) for k in range(3)]
    for k in keys:
        assert cache.put(k, bytes(100))
    entry, _ = cache.longest_prefix(keys[0])
    cache.touch(entry, 9)  # the oldest is now the most recently used
    assert cache.put(list(range(900, 910)), bytes(100))
    assert cache.n_bytes == 300 and len(cache) == 3
    assert cache.longest_prefix(keys[1])[0] is None  # the least recently used went
    assert cache.longest_prefix(keys[0])[0] is entry
    assert cache.stats.evictions == 1 and cache.stats.hits == 1


def test_a_longer_state_replaces_its_prefixes_and_short_or_huge_states_are_not_kept():
    cache = PromptCache(1000, min_tokens=8)
    tokens = list(range(1, 41))
    assert cache.put(tokens[:20], bytes(50))
    assert not cache.put(tokens[:10], bytes(25))  # already held by the first entry
    assert cache.put(tokens, bytes(100))
    assert len(cache) == 1 and cache.n_bytes == 100
    assert not cache.put(list(range(7)), bytes(10))  # shorter than min_tokens
    assert not cache.put(list(range(200, 300)), bytes(1001))  # over the whole budget
    assert len(cache) == 1 and cache.n_bytes == 100


def test_sliding_window_states_are_kept_only_when_cut_at_their_end():
    assert usable_prefix(100, 60, 0) == 60
    assert usable_prefix(100, 60, 32) == 0  # the window before 60 was not saved
    assert usable_prefix(100, 99, 32) == 99
    assert usable_prefix(10, 5, 32) == 5  # nothing was outside the window


# ---- the scheduler ------------------------------------------------------------------


def test_a_prompt_that_lost_its_slot_is_restored_from_the_host_cache():
    sched, runner, cache = cached_scheduler(n_slots=2)
    first = [make_seq(prompt(k)) for k in (1, 2)]
    run(sched, runner, *first)
    run(sched, runner, *(make_seq(prompt(k)) for k in (3, 4)))  # both slots taken over
    assert len(cache) == 2 and [n for _, n in runner.saves] == [51, 51]
    again = make_seq(prompt(1))
    run(sched, runner, again)
    assert runner.restores == [(0, 51)]
    assert again.n_cached_prompt == 47  # all but the last prompt token
    assert again.output_ids == expected_output(again.prompt_ids, 4)
    assert cache.stats.hits == 1 and cache.stats.tokens_restored == 47


def test_a_state_saved_from_one_slot_is_restored_into_another():
    sched, runner, _ = cached_scheduler(n_slots=2)
    a, b = make_seq(prompt(1)), make_seq(prompt(2))
    run(sched, runner, a, b)  # a in slot 0, b in slot 1
    run(sched, runner, make_seq(prompt(3)), make_seq(prompt(4)))
    assert {slot for slot, _ in runner.saves} == {0, 1}
    again = make_seq(prompt(2))
    run(sched, runner, again)
    assert runner.restores == [(0, 51)]  # b's state, saved from slot 1, now in slot 0
    assert again.output_ids == expected_output(again.prompt_ids, 4)


def test_a_slot_holding_the_prefix_is_preferred_to_a_restore():
    sched, runner, _ = cached_scheduler(n_slots=2)
    run(sched, runner, make_seq(prompt(1)), make_seq(prompt(2)))
    again = make_seq(prompt(1))
    run(sched, runner, again)
    assert runner.restores == [] and again.n_cached_prompt == 47


def test_a_failed_restore_falls_back_to_a_full_prefill():
    sched, runner, cache = cached_scheduler(n_slots=1)
    run(sched, runner, make_seq(prompt(1)))
    run(sched, runner, make_seq(prompt(2)))
    runner.fail_restores = True
    again = make_seq(prompt(1))
    run(sched, runner, again)
    assert runner.restores == [] and cache.stats.restore_failures == 1
    assert again.n_cached_prompt == 0
    assert again.output_ids == expected_output(again.prompt_ids, 4)


def test_the_host_cache_never_holds_more_than_its_budget():
    state_bytes = 52 * 4  # the scripted runner packs 4 bytes per token
    sched, runner, cache = cached_scheduler(n_slots=1, capacity=3 * state_bytes)
    for k in range(1, 9):
        run(sched, runner, make_seq(prompt(k)))
        assert cache.n_bytes <= 3 * state_bytes
    assert len(cache) == 3 and cache.stats.evictions >= 4
    again = make_seq(prompt(7))  # among the three most recent
    run(sched, runner, again)
    assert runner.restores and again.n_cached_prompt == 47


def test_idle_caches_dropped_when_the_kv_cache_is_full_are_saved_first():
    sched, runner, cache = cached_scheduler(n_slots=2, kv_capacity=120)
    run(sched, runner, make_seq(prompt(1)), make_seq(prompt(2)))
    assert sum(runner.kv.values()) == 102 and len(cache) == 0
    assert sched.handle_kv_full() is None  # drops the idle caches
    assert sum(runner.kv.values()) == 0 and len(cache) == 2
    again = make_seq(prompt(2))
    run(sched, runner, again)
    assert runner.restores and again.n_cached_prompt == 47


def test_short_prompts_are_not_saved():
    sched, runner, cache = cached_scheduler(n_slots=1)
    run(sched, runner, make_seq(prompt(1, 12), max_tokens=2))
    run(sched, runner, make_seq(prompt(2, 12), max_tokens=2))
    assert runner.saves == [] and len(cache) == 0


def test_a_prompt_overwritten_by_a_slot_move_is_saved_first():
    # d, e, f take slots 0, 1, 2; e ends at once, and the gap it leaves is closed by
    # moving f into slot 1, over e's idle KV: e's prompt must come back from the host.
    sched, runner, _ = cached_scheduler(n_slots=3)
    d, e, f = make_seq(prompt(1), 40), make_seq(prompt(2), 1), make_seq(prompt(3), 40)
    run(sched, runner, d, e, f)
    assert sched.moves >= 1
    again = make_seq(prompt(2))
    run(sched, runner, again)
    assert again.n_cached_prompt == len(prompt(2)) - 1
    assert again.output_ids == expected_output(prompt(2), 4)


def test_idle_slots_are_saved_once_and_not_again_when_a_new_request_takes_them():
    sched, runner, cache = cached_scheduler(n_slots=2)
    run(sched, runner, make_seq(prompt(1)), make_seq(prompt(2)))
    assert sched.has_unsaved_idle() and runner.saves == []
    assert sched.save_idle() and sched.save_idle()
    assert not sched.save_idle() and not sched.has_unsaved_idle()
    assert len(cache) == 2 and len(runner.saves) == 2
    run(sched, runner, *(make_seq(prompt(k)) for k in (3, 4)))  # both slots taken over
    assert len(runner.saves) == 2  # nothing left to save before the new requests' prefill
    again = make_seq(prompt(1))
    run(sched, runner, again)
    assert runner.restores and again.n_cached_prompt == 47


def test_a_short_idle_slot_does_not_stay_unsaved():
    # The engine saves while has_unsaved_idle(): a slot too short to keep must not keep
    # that true, or the idle engine would spin.
    sched, runner, cache = cached_scheduler(n_slots=1)
    run(sched, runner, make_seq(prompt(1, 12), max_tokens=2))
    assert sched.has_unsaved_idle()
    sched.save_idle()
    assert not sched.has_unsaved_idle() and runner.saves == [] and len(cache) == 0
