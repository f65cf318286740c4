"""Checks on GBNF text that llama.cpp's grammar parser does not make itself."""

from __future__ import annotations

import re

_REPEAT = re.compile(r"\{\s*(\d+)\s*(?:(,)\s*(\d*)\s*)?\}")


def check_repetitions(grammar: str) -> None:
    """Reject a repetition ``{m,n}`` with m > n.

    llama.cpp computes n - m unsigned for it and expands the rule until memory runs
    out (the process is killed), so it must never reach the parser.
    """
    i, n = 0, len(grammar)
    while i < n:
        c = grammar[i]
        if c in '"[':  # a literal or a character class: braces inside are plain text
            close = '"' if c == '"' else "]"
            i += 1
            while i < n and grammar[i] != close:
                i += 2 if grammar[i] == "\\" else 1
        elif c == "#":
            while i < n and grammar[i] != "\n":
                i += 1
        elif c == "{" and (m := _REPEAT.match(grammar, i)):
            lo, comma, hi = m.group(1), m.group(2), m.group(3)
            if comma and hi and int(lo) > int(hi):
                raise ValueError(
                    f"grammar: repetition {m.group(0)} has a minimum above its maximum"
                )
            i = m.end() - 1
        i += 1
