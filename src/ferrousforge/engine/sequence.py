"""Sequence: one generation's token ids, state and limits."""

from __future__ import annotations

import enum
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ferrousforge.engine.speculation import SeqSpeculation


class SequenceStatus(enum.IntEnum):
    WAITING = enum.auto()
    RUNNING = enum.auto()
    PREEMPTED = enum.auto()
    # Anything after PREEMPTED is finished.
    FINISHED_STOPPED = enum.auto()
    FINISHED_LENGTH = enum.auto()
    FINISHED_ABORTED = enum.auto()

    @property
    def is_finished(self) -> bool:
        return self > SequenceStatus.PREEMPTED


FINISH_REASONS = {
    SequenceStatus.FINISHED_STOPPED: "stop",
    SequenceStatus.FINISHED_LENGTH: "length",
    SequenceStatus.FINISHED_ABORTED: "abort",
}


@dataclass(slots=True)
class SamplingLimits:
    """What the engine itself needs of the options: the rest lives in the sampler."""

    max_tokens: int | None = None
    min_tokens: int = 0
    ignore_eos: bool = False
    logprobs: int | None = None
    echo_logprobs: bool = False
    stop: list[str] = field(default_factory=list)
    # How this request's tokens become text (None: the engine's piece function); set when
    # some special tokens must be rendered (InferenceOptions.preserved_tokens).
    piece: Callable[[int], bytes] | None = None
    # Most tokens drafted per step by speculative decoding (None: the engine's setting,
    # 0: off for this request; it can lower the engine's, never raise it).
    draft_max: int | None = None
    cache_prompt: bool = True  # False: reuse no cached prefix for this request
    slot: int | None = None  # run in this slot only (waits for it); never moved out of it


@dataclass(slots=True, eq=False)
class Sequence:
    request_id: int
    prompt_ids: list[int]
    limits: SamplingLimits
    sampler: Any = None  # runner-specific; sampled through the runner
    sink: Callable[[Any], None] | None = None
    share_prefix_with: Sequence | None = None  # n > 1: wait for this sibling's prefill
    output_ids: list[int] = field(default_factory=list)
    status: SequenceStatus = SequenceStatus.WAITING
    slot: int | None = None
    n_computed: int = 0  # leading tokens of all_ids whose KV is in the slot
    n_cached_prompt: int = 0  # prompt tokens reused from the prefix cache
    arrival: float = field(default_factory=time.perf_counter)
    admitted_at: float = 0.0
    first_token_at: float = 0.0
    last_token_at: float = 0.0
    prev_token_at: float = 0.0
    output: Any = None  # the output stage's per-sequence state
    spec: SeqSpeculation | None = None  # speculative decoding state, once it drafts
    stop_reason: str | None = None
    slow_samples: int = 0  # consecutive tokens whose sampling ran over the budget

    @property
    def all_ids(self) -> list[int]:
        return self.prompt_ids + self.output_ids if self.output_ids else self.prompt_ids

    @property
    def n_tokens(self) -> int:
        return len(self.prompt_ids) + len(self.output_ids)

    @property
    def n_pending(self) -> int:
        """Tokens known but not yet in the KV cache."""
        return self.n_tokens - self.n_computed

    @property
    def prefill_done(self) -> bool:
        return self.n_computed >= len(self.prompt_ids) - 1 and self.status != SequenceStatus.WAITING

    @property
    def bans_eog(self) -> bool:
        """End-of-generation is masked while min_tokens is unmet, or always with ignore_eos."""
        return self.limits.ignore_eos or len(self.output_ids) < self.limits.min_tokens

    @property
    def is_finished(self) -> bool:
        return self.status.is_finished
