"""The prompt-lookup drafter: n-gram matches against a sequence's own earlier tokens."""

import pytest

from ferrousforge.engine.ngram import NgramDrafter


def drafter(tokens: list[int], n_min: int = 2, n_max: int = 4) -> NgramDrafter:
    d = NgramDrafter(n_min, n_max)
    d.extend(tokens)
    return d


def test_the_tokens_after_an_earlier_occurrence_of_the_suffix_are_proposed():
    d = drafter([1, 2, 3, 4, 5, 6, 9, 2, 3])
    assert d.propose(3) == [4, 5, 6]
    assert d.propose(1) == [4]


def test_the_longest_suffix_wins_over_a_more_recent_shorter_match():
    # (3, 4) last occurred before 8, but (2, 3, 4) only before 5.
    d = drafter([2, 3, 4, 5, 7, 3, 4, 8, 2, 3, 4])
    assert d.propose(2) == [5, 7]


def test_the_most_recent_occurrence_of_equal_length_wins():
    d = drafter([1, 2, 5, 1, 2, 6, 1, 2])
    assert d.propose(1) == [6]


def test_no_match_no_draft_and_shorter_than_n_min_never_matches():
    assert drafter([1, 2, 3, 4]).propose(4) == []
    assert drafter([1, 2, 3, 1], n_min=2).propose(4) == []  # only a 1-gram repeats
    assert drafter([1, 2, 3, 1], n_min=1).propose(2) == [2, 3]
    assert drafter([1, 2, 1, 2]).propose(0) == []


def test_a_match_that_runs_into_the_present_continues_as_a_loop():
    assert drafter([7, 8, 9, 7, 8, 9, 7, 8]).propose(7) == [9, 7, 8, 9, 7, 8, 9]
    assert drafter([5, 5, 5]).propose(3) == [5, 5, 5]


def test_sync_follows_prompt_and_output_incrementally():
    d = NgramDrafter(2, 3)
    prompt = [10, 11, 12, 13, 14]
    d.sync(prompt, [])
    assert len(d) == 5 and d.propose(2) == []
    output = [11]
    d.sync(prompt, output)
    assert d.propose(2) == []  # (14, 11) never occurred
    output.append(12)
    d.sync(prompt, output)
    assert len(d) == 7 and d.propose(2) == [13, 14]


def test_bad_sizes_are_refused():
    with pytest.raises(ValueError):
        NgramDrafter(0, 3)
    with pytest.raises(ValueError):
        NgramDrafter(4, 3)
