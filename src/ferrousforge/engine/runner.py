"""The contract between the scheduler and whatever executes a step (llama.cpp or a script)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from ferrousforge.engine.sequence import Sequence


@dataclass(slots=True, frozen=True)
class KVOp:
    """A KV-cache edit run before the step's decode.

    ``rm``: drop positions [p0, p1) of ``seq`` (p1 = -1: to the end).
    ``cp``: give ``seq`` a copy of ``src``'s KV (p0 = p1 = -1: all of it).
    """

    kind: str  # "rm" or "cp"
    seq: int
    p0: int = -1
    p1: int = -1
    src: int = -1


@dataclass(slots=True)
class ScheduledChunk:
    """Tokens of one sequence at positions pos0.. in this step's batch.

    The last ``n_draft`` tokens are a guess (speculative decoding), not yet the sequence's:
    the runner samples after every token from the last known one on, and accepts the
    guesses for as long as each sample equals the next one.
    """

    seq: Sequence
    tokens: list[int]
    pos0: int
    sample: bool  # the chunk ends the known tokens: sample the next one
    all_logits: bool = False  # prompt log-probabilities wanted for this chunk
    n_draft: int = 0

    @property
    def draft(self) -> list[int]:
        return self.tokens[len(self.tokens) - self.n_draft :] if self.n_draft else []


@dataclass(slots=True)
class StepPlan:
    kv_ops: list[KVOp] = field(default_factory=list)
    chunks: list[ScheduledChunk] = field(default_factory=list)

    @property
    def n_tokens(self) -> int:
        return sum(len(c.tokens) for c in self.chunks)

    def __bool__(self) -> bool:
        return bool(self.chunks) or bool(self.kv_ops)


@dataclass(slots=True)
class LogprobEntry:
    token: int
    logprob: float
    top: list[tuple[int, float]] = field(default_factory=list)


@dataclass(slots=True)
class ChunkResult:
    """What execute returns for one chunk: the sampled tokens if it sampled.

    One token, or with a draft: the sampled tokens up to and including the first that
    differs from the draft (or all drafts plus one). ``logprobs``: one entry per token
    when asked for. ``exhausted``: nothing could be sampled because no token is allowed
    (a grammar that is complete); the sequence ends with "stop". ``error``: sampling failed
    for this sequence alone (it fails, the others go on). ``sample_s``: the CPU time of
    the slowest single token's sampling.
    """

    tokens: list[int] = field(default_factory=list)
    logprobs: list[LogprobEntry] | None = None
    prompt_logprobs: list[LogprobEntry] | None = None  # for chunk.tokens[1:] and the next
    exhausted: bool = False
    error: BaseException | None = None
    sample_s: float = 0.0


class KVCacheFull(Exception):
    """llama_decode found no room in the KV cache for the step (return code 1)."""


class Runner(Protocol):
    n_slots: int
    n_batch: int
    n_ctx: int
    eog_ids: frozenset[int]
    supports_prefix_cache: bool
    wants_contiguous_slots: bool  # the scheduler moves sequences to close gaps between slots
    n_swa: int  # sliding-window attention size (0: none); limits how a saved state is cut

    def execute(self, plan: StepPlan) -> list[ChunkResult]:
        """Apply plan.kv_ops, decode every chunk in one batch, sample where asked (after
        each token of a chunk's draft too, stopping at the first sample that differs).

        Raises KVCacheFull when the cache has no room (state unchanged but for kv_ops).
        """
        ...

    def release_slot(self, slot: int, keep: int) -> None:
        """Drop a slot's KV beyond ``keep`` tokens (0: all of it)."""
        ...

    def free_sampler(self, seq: Sequence) -> None: ...

    def save_state(self, slot: int, max_bytes: int) -> bytes | bytearray | None:
        """A copy of the slot's KV state for the host cache (None: larger than max_bytes,
        or it could not be read). The slot is unchanged."""
        ...

    def restore_state(self, slot: int, state: bytes | bytearray) -> bool:
        """Replace the slot's KV with a saved state (from any slot). False if it could
        not be loaded; the slot is then empty."""
        ...

    def save_slot_file(self, slot: int, path: str, tokens: list[int]) -> int:
        """Write the slot's KV and ``tokens`` to the file ``path`` (llama.cpp's sequence
        state file); the bytes written, 0 on failure. The slot is unchanged."""
        ...

    def load_slot_file(self, slot: int, path: str) -> tuple[int, list[int]]:
        """Replace the slot's KV with a file from ``save_slot_file``: (bytes read, its
        tokens); (0, []) if it could not be loaded, the slot then empty."""
        ...

    def reset(self) -> None:
        """Forget all KV state (after a failed step)."""
        ...
