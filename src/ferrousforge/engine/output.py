"""The output stage: token ids -> UTF-8-safe text deltas, with stop strings held back.

A multi-byte character split across tokens is released only once complete,
and text that could be the start of a stop string is held until it is known
not to be one; a matched stop string is never sent.
"""

from __future__ import annotations

import codecs
from collections.abc import Callable


class Detokenizer:
    """Incremental detokenizer for one sequence."""

    __slots__ = ("_decoder", "_held", "_piece", "_stops", "stopped_on")

    def __init__(self, piece: Callable[[int], bytes], stop: list[str] | None = None) -> None:
        self._piece = piece
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._stops = [s for s in (stop or []) if s]
        self._held = ""
        self.stopped_on: str | None = None

    def feed(self, token: int) -> tuple[str, bool]:
        """Add one token; return (text safe to send now, whether a stop string matched)."""
        return self._push(self._decoder.decode(self._piece(token)))

    def feed_bytes(self, data: bytes) -> tuple[str, bool]:
        return self._push(self._decoder.decode(data))

    def _push(self, new: str) -> tuple[str, bool]:
        if self.stopped_on is not None:
            return "", True
        text = self._held + new
        if not self._stops:
            self._held = ""
            return text, False
        cut = -1
        for s in self._stops:
            i = text.find(s)
            if i != -1 and (cut == -1 or i < cut):
                cut, self.stopped_on = i, s
        if cut != -1:
            self._held = ""
            return text[:cut], True
        hold = self._partial_stop_len(text)
        self._held = text[len(text) - hold :] if hold else ""
        return text[: len(text) - hold], False

    def _partial_stop_len(self, text: str) -> int:
        """Length of the longest suffix of text that is a proper prefix of a stop string."""
        best = 0
        for s in self._stops:
            for k in range(min(len(s) - 1, len(text)), best, -1):
                if text.endswith(s[:k]):
                    best = k
                    break
        return best

    def flush(self) -> str:
        """At the end of generation: whatever is held (an incomplete character becomes U+FFFD)."""
        if self.stopped_on is not None:
            return ""
        text = self._held + self._decoder.decode(b"", final=True)
        self._held = ""
        return text
