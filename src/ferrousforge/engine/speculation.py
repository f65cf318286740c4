"""Speculative decoding by prompt lookup: when to draft, and how many tokens.

A drafted chunk (the pending token plus k guesses) is verified in the same decode as every
other sequence's token. It pays off only when the guesses are accepted: on a CPU each
extra token in the batch costs a good part of a whole step, and once many sequences share
the step the batch already keeps the cores busy. So drafting is adaptive:

- not at all while more than ``max_batch`` sequences are generating;
- per sequence, the draft length follows the acceptance: all accepted doubles it (up to
  ``draft_max``), a partial acceptance of a tokens sets it to a + 1;
- a draft of which nothing is accepted pauses that sequence's drafting for 1, 2, 4, ...
  steps (up to ``MAX_PAUSE``); an accepted one ends the pause streak.
"""

from __future__ import annotations

from dataclasses import dataclass

from ferrousforge.engine.ngram import NgramDrafter

MAX_PAUSE = 64  # steps without drafting after repeated misses
FIRST_DRAFT = 4  # draft length before any acceptance is known


@dataclass(frozen=True, slots=True)
class SpecConfig:
    """Server-wide speculative decoding settings (a request may lower ``draft_max``)."""

    draft_max: int = 0  # most tokens drafted per step and sequence; 0: off
    draft_min: int = 1  # a shorter draft is not worth verifying
    max_batch: int = 2  # draft only while at most this many sequences are generating
    ngram_min: int = 2  # lookup n-gram sizes
    ngram_max: int = 4

    def __post_init__(self) -> None:
        if self.draft_max < 0 or self.draft_min < 1 or self.max_batch < 0:
            raise ValueError("speculation: draft_max >= 0, draft_min >= 1, max_batch >= 0")

    @property
    def enabled(self) -> bool:
        return self.draft_max > 0 and self.max_batch > 0


class SeqSpeculation:
    """One sequence's drafter and its acceptance history."""

    __slots__ = ("drafter", "k", "misses", "pause")

    def __init__(self, config: SpecConfig) -> None:
        self.drafter = NgramDrafter(config.ngram_min, config.ngram_max)
        self.k = min(FIRST_DRAFT, config.draft_max)
        self.misses = 0  # drafts in a row of which nothing was accepted
        self.pause = 0  # steps left without drafting

    def draft(self, prompt: list[int], output: list[int], limit: int) -> list[int]:
        """Up to min(k, limit) guessed tokens to follow ``prompt + output`` (maybe none)."""
        if self.pause > 0:
            self.pause -= 1
            return []
        self.drafter.sync(prompt, output)
        return self.drafter.propose(min(self.k, limit))

    def update(self, drafted: int, accepted: int, draft_max: int) -> None:
        """Adapt to how much of a draft of ``drafted`` tokens was accepted."""
        if accepted == 0:
            self.misses += 1
            self.pause = min(1 << (self.misses - 1), MAX_PAUSE)
            self.k = max(1, min(self.k, FIRST_DRAFT) // 2)
            return
        self.misses = 0
        if accepted == drafted:
            self.k = min(max(self.k, drafted) * 2, draft_max)
        else:
            self.k = min(accepted + 1, draft_max)
