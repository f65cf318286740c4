"""A small GBNF recognizer: a test oracle for what a grammar accepts, without a model.

It reads the GBNF that llama.cpp reads (literals with escapes, character classes with
ranges and negation, ``.``, groups, ``|``, ``? * +``, ``{m}``, ``{m,}``, ``{m,n}``, rule
references, ``#`` comments) and decides whether a whole string is a sentence of the
``root`` rule, by computing the set of end positions of every (node, start) pair with
memoisation. Left-recursive grammars are not supported (llama.cpp refuses them too).
"""

from __future__ import annotations

import re

# node shapes: ("lit", str) ("cls", negated, ((lo, hi), ...)) ("any",) ("ref", name)
#              ("seq", (node, ...)) ("alt", (node, ...)) ("rep", node, min, max-or-None)
Node = tuple

_ESC = {"t": "\t", "r": "\r", "n": "\n", "\\": "\\", '"': '"', "[": "[", "]": "]", "-": "-"}
_NAME = re.compile(r"[a-zA-Z0-9-]+")
_HEAD = re.compile(r"[a-zA-Z0-9-]+[ \t]*::=")


class Grammar:
    """Parsed rules; ``matches(text)`` says whether ``root`` derives exactly ``text``."""

    def __init__(self, src: str) -> None:
        self.src, self.pos = src, 0
        self.rules: dict[str, Node] = {}
        self.used: set[str] = set()
        self._skip()
        while self.pos < len(src):
            name = self._name()
            self._skip()
            assert src.startswith("::=", self.pos), f"expected ::= at {self.pos}"
            self.pos += 3
            self.rules[name] = self._alt()
        undefined = self.used - set(self.rules)
        assert not undefined, f"undefined rules: {undefined}"

    # -- parsing ---------------------------------------------------------------

    def _skip(self) -> None:
        while self.pos < len(self.src):
            c = self.src[self.pos]
            if c == "#":
                while self.pos < len(self.src) and self.src[self.pos] != "\n":
                    self.pos += 1
            elif c in " \t\r\n":
                self.pos += 1
            else:
                return

    def _name(self) -> str:
        m = _NAME.match(self.src, self.pos)
        assert m, f"expected a name at {self.pos}: {self.src[self.pos : self.pos + 20]!r}"
        self.pos = m.end()
        return m.group()

    def _char(self) -> str:
        c = self.src[self.pos]
        if c != "\\":
            self.pos += 1
            return c
        e = self.src[self.pos + 1]
        width = {"x": 2, "u": 4, "U": 8}.get(e)
        if width:
            self.pos += 2 + width
            return chr(int(self.src[self.pos - width : self.pos], 16))
        self.pos += 2
        return _ESC[e]

    def _alt(self) -> Node:
        alts = [self._seq()]
        while self.src.startswith("|", self.pos):
            self.pos += 1
            alts.append(self._seq())
        return ("alt", tuple(alts))

    def _seq(self) -> Node:
        items: list[Node] = []
        while True:
            self._skip()
            if self.pos >= len(self.src) or _HEAD.match(self.src, self.pos):
                break  # the next rule starts
            c = self.src[self.pos]
            if c == '"':
                self.pos += 1
                text = ""
                while self.src[self.pos] != '"':
                    text += self._char()
                self.pos += 1
                items.append(("lit", text))
            elif c == "[":
                self.pos += 1
                negated = self.src[self.pos] == "^"
                self.pos += negated
                ranges = []
                while self.src[self.pos] != "]":
                    lo = hi = self._char()
                    if self.src[self.pos] == "-" and self.src[self.pos + 1] != "]":
                        self.pos += 1
                        hi = self._char()
                    ranges.append((lo, hi))
                self.pos += 1
                items.append(("cls", negated, tuple(ranges)))
            elif c == ".":
                self.pos += 1
                items.append(("any",))
            elif c == "(":
                self.pos += 1
                items.append(self._alt())
                self._skip()
                assert self.src[self.pos] == ")", f"expected ) at {self.pos}"
                self.pos += 1
            elif c in "*+?":
                self.pos += 1
                lo, hi = {"*": (0, None), "+": (1, None), "?": (0, 1)}[c]
                items.append(("rep", items.pop(), lo, hi))
            elif c == "{":
                end = self.src.index("}", self.pos)
                lo_s, comma, hi_s = self.src[self.pos + 1 : end].replace(" ", "").partition(",")
                self.pos = end + 1
                hi = int(hi_s) if hi_s else (None if comma else int(lo_s))
                items.append(("rep", items.pop(), int(lo_s), hi))
            elif _NAME.match(self.src, self.pos):
                items.append(("ref", self._name()))
                self.used.add(items[-1][1])
            else:
                break  # ')' or '|': the caller's
        return ("seq", tuple(items))

    # -- matching --------------------------------------------------------------

    def matches(self, text: str, rule: str = "root") -> bool:
        memo: dict[tuple[int, int], frozenset[int]] = {}
        return len(text) in self._ends(("ref", rule), 0, text, memo)

    def _ends(self, node: Node, i: int, text: str, memo: dict) -> frozenset[int]:
        key = (id(node), i)
        if key not in memo:
            memo[key] = frozenset(self._compute(node, i, text, memo))
        return memo[key]

    def _compute(self, node: Node, i: int, text: str, memo: dict) -> set[int]:
        kind = node[0]
        if kind == "lit":
            return {i + len(node[1])} if text.startswith(node[1], i) else set()
        if kind in ("cls", "any"):
            if i >= len(text):
                return set()
            if kind == "any":
                return {i + 1}
            inside = any(lo <= text[i] <= hi for lo, hi in node[2])
            return {i + 1} if inside != node[1] else set()
        if kind == "ref":
            return set(self._ends(self.rules[node[1]], i, text, memo))
        if kind == "alt":
            return set().union(*(self._ends(a, i, text, memo) for a in node[1]))
        if kind == "seq":
            ends = {i}
            for item in node[1]:
                ends = set().union(*(self._ends(item, e, text, memo) for e in ends))
            return ends
        _, item, lo, hi = node  # rep
        done = {i} if lo == 0 else set()
        frontier, count = {i}, 0
        while frontier and (hi is None or count < hi):
            count += 1
            nxt = set().union(*(self._ends(item, e, text, memo) for e in frontier))
            # past the minimum, a position already reached leads nowhere new
            frontier = nxt - done if count >= lo and hi is None else nxt
            if count >= lo:
                done |= nxt
        return done
