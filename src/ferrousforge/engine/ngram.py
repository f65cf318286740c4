"""Prompt-lookup drafting: guess a sequence's next tokens from its own earlier tokens.

Code edits, summaries that quote their input and repeated paragraphs copy long runs of
tokens from the prompt (or from earlier output). The last ``n`` tokens are looked up
among earlier occurrences (``n`` from ``n_max`` down to ``n_min``, longest first), and the
tokens that followed the most recent one are the draft (a loop, where that run reaches
the present, is continued with its period). The index is updated as tokens
arrive, so a lookup costs a few dictionary probes, never a scan of the sequence.
"""

from __future__ import annotations


class NgramDrafter:
    """The n-gram index of one sequence's tokens (prompt, then output), grown incrementally."""

    __slots__ = ("_index", "_tokens", "n_max", "n_min")

    def __init__(self, n_min: int = 2, n_max: int = 4) -> None:
        if not 1 <= n_min <= n_max:
            raise ValueError("n-gram sizes: need 1 <= n_min <= n_max")
        self.n_min = n_min
        self.n_max = n_max
        self._tokens: list[int] = []
        # n -> {n-gram: the index just past its latest occurrence that has a continuation}
        self._index: dict[int, dict[tuple[int, ...], int]] = {
            n: {} for n in range(n_min, n_max + 1)
        }

    def __len__(self) -> int:
        return len(self._tokens)

    def extend(self, tokens: list[int]) -> None:
        """Append tokens. An n-gram is indexed once a token follows it (its continuation)."""
        ids = self._tokens
        for t in tokens:
            end = len(ids)  # the n-grams ending here now get `t` as continuation
            for n, table in self._index.items():
                if end >= n:
                    table[tuple(ids[end - n : end])] = end
            ids.append(t)

    def sync(self, prompt: list[int], output: list[int]) -> None:
        """Catch up with a sequence whose tokens are ``prompt + output`` (only ever grows)."""
        have, n_prompt = len(self._tokens), len(prompt)
        if have < n_prompt:
            self.extend(prompt[have:])
            have = n_prompt
        if have - n_prompt < len(output):
            self.extend(output[have - n_prompt :])

    def propose(self, k: int) -> list[int]:
        """Up to ``k`` tokens that followed the latest earlier occurrence of the longest
        matching suffix; empty when no suffix of ``n_min`` tokens or more occurred before."""
        ids = self._tokens
        end = len(ids)
        if k <= 0:
            return []
        for n in range(min(self.n_max, end - 1), self.n_min - 1, -1):
            at = self._index[n].get(tuple(ids[end - n :]))
            if at is not None:
                draft = ids[at : at + k]
                # A match that runs into the present is a loop of period end - at: repeat it.
                period = end - at
                while len(draft) < k:
                    draft.append(draft[len(draft) - period])
                return draft
        return []
