"""Lazy grammars: free text until a trigger, then the grammar from the trigger's start.

llama.cpp's own lazy grammar searches its whole trigger buffer with std::regex after every
token: quadratic in the output, and libstdc++'s recursive matcher can overflow the stack on
a long answer, which no ``try`` catches. So the trigger is found here, in Python, over a
bounded window of recent text; only then is llama.cpp's lazy grammar created, with a
pattern that matches at once on a replay of the few tokens that hold the trigger (its
start may be mid-token, which llama.cpp's replay handles and the public API cannot).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable

from ferrousforge.api.request import GrammarTrigger

log = logging.getLogger(__name__)

WINDOW_BYTES = 512  # recent text searched for a trigger; triggers are far shorter


class TriggerWatcher:
    """Watches generated tokens for a trigger outside skipped spans (reasoning blocks)."""

    def __init__(self, trigger: GrammarTrigger, piece: Callable[[int], bytes]) -> None:
        self._regex = re.compile("|".join(f"(?:{p})" for p in trigger.patterns).encode(), re.DOTALL)
        self._piece = piece
        self._skip = tuple(m.encode() for m in trigger.skip) if trigger.skip else None
        self._inside = bool(trigger.skip) and trigger.inside_skip
        self._tokens: list[tuple[int, int]] = []  # (token, start offset in _text)
        self._text = b""
        self._searched = 0  # offset in _text before which nothing can start a match

    def push(self, token: int) -> tuple[list[int], int] | None:
        """Add a sampled token. On a trigger: (the tokens from the one where the trigger
        starts to this one, the trigger's byte offset inside the first of them)."""
        self._tokens.append((token, len(self._text)))
        self._text += self._piece(token)
        while True:
            found = self._scan()
            if found is not None or not self._consume_skip():
                break
        self._trim()
        return found

    def _scan(self) -> tuple[list[int], int] | None:
        if self._inside:
            return None
        m = self._regex.search(self._text, self._searched)
        if m is None:
            return None
        if self._skip:
            opened = self._text.find(self._skip[0], self._searched, m.start())
            if opened != -1:
                return None  # a skipped span opens first; _consume_skip moves past it
        first = max(i for i, (_, start) in enumerate(self._tokens) if start <= m.start())
        tokens = [t for t, _ in self._tokens[first:]]
        return tokens, m.start() - self._tokens[first][1]

    def _consume_skip(self) -> bool:
        """Move past the next skip marker (open, or close while inside); False if none."""
        if not self._skip:
            return False
        marker = self._skip[1] if self._inside else self._skip[0]
        at = self._text.find(marker, self._searched)
        if at == -1:
            return False
        self._searched = at + len(marker)
        self._inside = not self._inside
        return True

    def _trim(self) -> None:
        """Keep only the last WINDOW_BYTES (whole tokens) of text."""
        excess = len(self._text) - WINDOW_BYTES
        if excess <= 0:
            return
        drop = 0
        while drop < len(self._tokens) - 1 and self._tokens[drop + 1][1] <= excess:
            drop += 1
        if drop == 0:
            return
        cut = self._tokens[drop][1]
        self._tokens = [(t, s - cut) for t, s in self._tokens[drop:]]
        self._text = self._text[cut:]
        # A marker's partial tail may still be in the window: search again from where it
        # could start, but never before what was consumed.
        self._searched = max(0, self._searched - cut)


def replay_pattern(offset: int) -> bytes:
    """A std::regex for llama.cpp's lazy grammar: wakes on the first replayed token, with
    the constrained text starting ``offset`` bytes into it."""
    return b"^[\\s\\S]{" + str(offset).encode() + b"}([\\s\\S]*)$"
