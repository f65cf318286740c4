"""PromptCache: the KV state of prompts that left their slot, kept in host memory.

The slots are the first prefix cache, but there are only n_parallel of them: a prompt
that comes back after other requests took its slot would be prefilled again. Before a
slot's KV is lost (a new request takes the slot, the KV cache is full) the scheduler
copies that sequence's state here; a new request whose prompt shares a long prefix with
an entry gets it restored into its slot and prefills only the rest (llama-server's
``--cache-ram``). Entries are keyed by their token ids, evicted least recently used first,
and bounded in bytes. Used only from the engine thread.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np

MIB = 1024 * 1024


@dataclass(slots=True, eq=False)
class CachedPrompt:
    """One saved sequence: the tokens its KV holds (positions 0..n-1) and the opaque state."""

    tokens: np.ndarray  # int32
    state: bytes | bytearray

    @property
    def n_tokens(self) -> int:
        return len(self.tokens)

    @property
    def n_bytes(self) -> int:
        return len(self.state)


@dataclass(slots=True)
class PromptCacheStats:
    hits: int = 0  # requests that got an entry restored
    tokens_restored: int = 0  # prompt tokens those requests did not prefill
    saves: int = 0
    evictions: int = 0
    restore_failures: int = 0


@dataclass(slots=True)
class PromptCache:
    """A byte-bounded LRU of sequence states; ``min_tokens`` shorter sequences are not kept."""

    capacity_bytes: int
    min_tokens: int = 32
    stats: PromptCacheStats = field(default_factory=PromptCacheStats)
    _entries: OrderedDict[int, CachedPrompt] = field(default_factory=OrderedDict)
    _next_id: int = 0
    n_bytes: int = 0

    def __len__(self) -> int:
        return len(self._entries)

    def longest_prefix(self, tokens: list[int]) -> tuple[CachedPrompt | None, int]:
        """The entry sharing the longest common prefix with ``tokens``, and that length."""
        if not self._entries:
            return None, 0
        query = np.asarray(tokens, dtype=np.int32)
        best, best_n = None, 0
        for entry in self._entries.values():
            n = _common_prefix(entry.tokens, query)
            if n > best_n:
                best, best_n = entry, n
        return best, best_n

    def covers(self, tokens: list[int]) -> bool:
        """Whether some entry already holds ``tokens`` (as the whole of it or a prefix)."""
        query = np.asarray(tokens, dtype=np.int32)
        return any(
            e.n_tokens >= len(query) and _common_prefix(e.tokens, query) == len(query)
            for e in self._entries.values()
        )

    def put(self, tokens: list[int], state: bytes | bytearray) -> bool:
        """Keep ``state`` (the KV of ``tokens``); entries that are a prefix of it go.

        False if it is too short, larger than the whole budget, or already covered.
        """
        if len(tokens) < self.min_tokens or len(state) > self.capacity_bytes:
            return False
        if self.covers(tokens):
            return False
        query = np.asarray(tokens, dtype=np.int32)
        for key, e in list(self._entries.items()):
            if e.n_tokens <= len(query) and _common_prefix(e.tokens, query) == e.n_tokens:
                self._drop(key)  # the new entry holds everything this one did
        while self._entries and self.n_bytes + len(state) > self.capacity_bytes:
            self._drop(next(iter(self._entries)))
            self.stats.evictions += 1
        self._entries[self._next_id] = CachedPrompt(query, state)
        self._next_id += 1
        self.n_bytes += len(state)
        self.stats.saves += 1
        return True

    def touch(self, entry: CachedPrompt, n_restored: int) -> None:
        """Count a restore of ``entry`` and make it the most recently used."""
        for key, e in self._entries.items():
            if e is entry:
                self._entries.move_to_end(key)
                break
        self.stats.hits += 1
        self.stats.tokens_restored += n_restored

    def discard(self, entry: CachedPrompt) -> None:
        for key, e in list(self._entries.items()):
            if e is entry:
                self._drop(key)

    def clear(self) -> None:
        self._entries.clear()
        self.n_bytes = 0

    def _drop(self, key: int) -> None:
        self.n_bytes -= self._entries.pop(key).n_bytes


def _common_prefix(a: np.ndarray, b: np.ndarray) -> int:
    n = min(len(a), len(b))
    diff = np.flatnonzero(a[:n] != b[:n])
    return int(diff[0]) if len(diff) else n


def usable_prefix(n_saved: int, n: int, n_swa: int) -> int:
    """How much of a restored state of ``n_saved`` tokens may be kept when cut to ``n``.

    With sliding-window attention llama.cpp saves only the window's cells of the SWA
    layers, so a cut short of the saved end would leave the next token without the
    window it attends to: only a cut at the end (or a state shorter than half a window,
    nothing masked under any SWA type) is whole.
    """
    if n_swa <= 0 or n >= n_saved - 1 or n_saved <= n_swa // 2:
        return n
    return 0
